"""The plain consumer-group loop (shared/worker.py) with small processors: what rides in the commit,
what the heartbeat says, and the retention step on the streams a worker reads and publishes.

Its overlapped mode is tests/test_worker_overlap.py; its failure drills with real processes are
tests/test_reliability.py.
"""

from __future__ import annotations

import json

from shared.processor import Outbound, Processor
from shared.schemas import FaceMessage, encode
from shared.settings import WorkerSettings
from shared.streams import RECORDER_GROUP, Retention, StreamTable
from shared.worker import StreamWorker
from tests.conftest import fill_faces, make_faces
from tests.messages import make_event


class Relay(Processor[FaceMessage]):
    """One event per face; counts faces; stages a per-batch write with the commit."""

    input_model = FaceMessage

    def __init__(self, events: str, seen_key: str) -> None:
        self.events, self.seen_key = events, seen_key
        self._staged = 0

    def handle(self, batch):
        self.counters.add("faces", len(batch))
        self._staged += len(batch)
        return [Outbound(self.events, encode(make_event(event_id=face.event_id))) for face in batch]

    def stage_writes(self, pipe):
        if self._staged:
            pipe.incrby(self.seen_key, self._staged)
            self._staged = 0

    def heartbeat_info(self):
        return {"relay": "yes"}


def worker(client, keys, processor, **table) -> StreamWorker:
    return StreamWorker(client, processor, service="relay", stream=keys.faces, group="g", keys=keys,
                        settings=WorkerSettings(batch_size=4, block_ms=10, claim_interval_s=0.01),
                        streams=StreamTable(keys, **table))


def test_counters_and_staged_writes_commit_with_the_batch(redis_client, keys):
    fill_faces(redis_client, keys.faces, make_faces(10))
    worker(redis_client, keys, Relay(keys.events, f"{keys.prefix}:seen")).run(burst=True)
    stats = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.stats("relay")).items()}
    assert stats["faces"] == stats["entries_in"] == stats["entries_out"] == 10
    assert int(redis_client.get(f"{keys.prefix}:seen")) == 10 == redis_client.xlen(keys.events)


def test_the_heartbeat_has_the_loop_stats_and_the_processor_fields(redis_client, keys):
    beats = []

    class Watching(Relay):
        def handle(self, batch):  # the loop beats before it reads: the beat is there by now
            beats.append(json.loads(redis_client.get(keys.heartbeat("relay", relay.consumer))))
            return super().handle(batch)

    fill_faces(redis_client, keys.faces, make_faces(3))
    relay = worker(redis_client, keys, Watching(keys.events, f"{keys.prefix}:seen"))
    relay.run(burst=True)
    assert beats[0]["relay"] == "yes" and beats[0]["service"] == "relay" and "entries" in beats[0]
    assert redis_client.get(keys.heartbeat("relay", relay.consumer)) is None  # removed at a clean stop


def test_a_producer_holds_what_it_published_to_the_rule_of_that_stream(redis_client, keys):
    """The classifier trims events too (it published them): only what the recorder has let go of."""
    eager = Retention(cap=100_000, after_ack=True, keep_ms=0)
    fill_faces(redis_client, keys.faces, make_faces(12))
    relay = worker(redis_client, keys, Relay(keys.events, f"{keys.prefix}:seen"), events=eager)
    relay.run(burst=True)
    relay.apply_retention()
    assert redis_client.xlen(keys.events) == 12  # no recorder group yet: it needs everything
    redis_client.xgroup_create(keys.events, RECORDER_GROUP, id="$")  # a recorder that starts from now on
    relay.apply_retention()
    assert redis_client.xlen(keys.events) == 0
