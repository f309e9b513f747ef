"""The worker's overlapped mode: batch N+1's `prepare` runs while batch N is finished and committed.

The guarantees of the plain loop must hold unchanged: every entry is output exactly once and
acknowledged, in order; poison is dead-lettered alone; a Redis failure or a transient error with a
batch in flight loses nothing; a warm stop finishes the batch in hand.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from shared.schemas import FaceMessage, decode, encode
from shared.settings import WorkerSettings
from shared.worker import Outbound, Processor, StreamWorker, TransientError
from tests.messages import good_face

GROUP = "g"


class Doubler(Processor):
    """prepare: the heavy, thread-safe part (here: read frame ids); finish: outputs in batch order."""

    input_model = FaceMessage

    def __init__(self, out: str) -> None:
        self.out = out
        self.prepare_threads: set[str] = set()

    def prepare(self, batch: list[FaceMessage]) -> list[int]:
        self.prepare_threads.add(threading.current_thread().name)
        return [face.frame_id * 2 for face in batch]

    def finish(self, batch: list[FaceMessage], prepared: list[int]) -> list[Outbound]:
        return [Outbound(self.out, {b"frame": str(f.frame_id).encode(), b"double": str(d).encode()})
                for f, d in zip(batch, prepared)]


def _fill(client, stream: str, count: int) -> None:
    pipe = client.pipeline()
    for i in range(count):
        pipe.xadd(stream, encode(good_face(i)))
    pipe.execute()


def _worker(client, processor, keys, *, batch: int = 4, overlap: bool = True, **extra) -> StreamWorker:
    options = {"block_ms": 20, "claim_idle_ms": 60_000, "claim_interval_s": 60, "backoff_initial_s": 0.01,
               "backoff_max_s": 0.05, **extra}
    settings = WorkerSettings(batch_size=batch, overlap_batches=overlap, **options)
    return StreamWorker(client, processor, service="overlap", stream=keys.faces, group=GROUP, keys=keys,
                        settings=settings)


def _outputs(client, stream: str) -> list[int]:
    return [int(fields[b"frame"]) for _, fields in client.xrange(stream)]


def _assert_all_done(client, keys, out: str, count: int) -> None:
    assert _outputs(client, out) == list(range(count))  # each exactly once, in order
    for _, fields in client.xrange(out):
        assert int(fields[b"double"]) == 2 * int(fields[b"frame"])
    assert client.xpending(keys.faces, GROUP)["pending"] == 0


def test_next_batch_is_prepared_while_the_previous_one_is_finished(redis_client, keys):
    """Deterministic, not timed: each finish waits (bounded) for the next batch's prepare to start.

    In the plain loop that prepare only starts after finish returns, so every wait would time out.
    """
    out = keys.prefix + ":out"
    started = [threading.Event() for _ in range(6)]
    overlapped: list[bool] = []

    class Waiting(Doubler):
        def prepare(self, batch):
            started[batch[0].frame_id // 4].set()
            return super().prepare(batch)

        def finish(self, batch, prepared):
            following = batch[0].frame_id // 4 + 1
            if following < len(started):
                overlapped.append(started[following].wait(timeout=2.0))
            return super().finish(batch, prepared)

    _fill(redis_client, keys.faces, 24)
    processor = Waiting(out)
    _worker(redis_client, processor, keys).run(burst=True)
    _assert_all_done(redis_client, keys, out, 24)
    assert overlapped == [True] * 5
    assert all(name.startswith("overlap-prepare") for name in processor.prepare_threads)


def test_plain_loop_when_overlap_is_off(redis_client, keys):
    out = keys.prefix + ":out"
    _fill(redis_client, keys.faces, 10)
    processor = Doubler(out)
    _worker(redis_client, processor, keys, overlap=False).run(burst=True)
    _assert_all_done(redis_client, keys, out, 10)
    assert processor.prepare_threads == {threading.main_thread().name}


def test_poison_in_an_overlapped_batch_is_dead_lettered_alone(redis_client, keys):
    out = keys.prefix + ":out"

    class Poisoned(Doubler):
        def prepare(self, batch):
            if any(face.frame_id == 6 for face in batch):
                raise ValueError("frame 6 is poison")
            return super().prepare(batch)

    _fill(redis_client, keys.faces, 12)
    _worker(redis_client, Poisoned(out), keys).run(burst=True)
    assert _outputs(redis_client, out) == [i for i in range(12) if i != 6]
    dead = redis_client.xrange(keys.dead(keys.faces))
    assert len(dead) == 1 and b"frame 6 is poison" in dead[0][1][b"reason"]
    assert decode(FaceMessage, {k[5:]: v for k, v in dead[0][1].items() if k.startswith(b"orig:")}).frame_id == 6
    assert redis_client.xpending(keys.faces, GROUP)["pending"] == 0


class FailsInFinish(Doubler):
    """finish of the batch starting at `at_frame` raises `error` its first `times` calls."""

    def __init__(self, out: str, error: Exception, times: int, at_frame: int) -> None:
        super().__init__(out)
        self.error, self.left, self.at_frame = error, times, at_frame

    def finish(self, batch, prepared):
        if batch[0].frame_id == self.at_frame and self.left:
            self.left -= 1
            raise self.error
        return super().finish(batch, prepared)


@pytest.mark.parametrize("error,times,stat", [
    (redis.ConnectionError("Redis went away (simulated in finish)"), 1, "redis_errors"),
    (TransientError("database down (simulated)"), 2, "transient_errors"),
])
def test_failure_while_a_batch_is_in_flight_loses_and_duplicates_nothing(redis_client, keys, error, times, stat):
    """Batch N fails to finish while N+1 is prepared: N is retried (transient) or re-read (Redis), N+1
    is dropped from memory and re-read as pending; every entry is output exactly once."""
    out = keys.prefix + ":out"
    _fill(redis_client, keys.faces, 20)
    worker = _worker(redis_client, FailsInFinish(out, error, times, at_frame=8), keys)
    worker.run(burst=True)
    assert getattr(worker.stats, stat) == times
    _assert_all_done(redis_client, keys, out, 20)
    assert redis_client.xlen(keys.dead(keys.faces)) == 0


def test_redis_failure_on_the_read_after_a_batch_went_in_flight_loses_and_duplicates_nothing(redis_client, keys):
    """Redis fails on the next XREADGROUP while a prepared batch waits to be committed: the batch is
    still pending to this consumer, so it must be dropped from memory and re-read, not committed too."""
    out = keys.prefix + ":out"
    _fill(redis_client, keys.faces, 20)
    worker = _worker(redis_client, Doubler(out), keys)
    real_read = redis_client.xreadgroup
    reads = {"n": 0}

    def flaky_read(*args, **kwargs):
        reads["n"] += 1
        if reads["n"] == 4 and worker._in_flight is not None:
            raise redis.ConnectionError("Redis went away (simulated on read)")
        return real_read(*args, **kwargs)

    worker.client.xreadgroup = flaky_read
    worker.run(burst=True)
    assert worker.stats.redis_errors == 1
    _assert_all_done(redis_client, keys, out, 20)


def test_warm_stop_finishes_the_batch_in_flight(redis_client, keys):
    out = keys.prefix + ":out"
    worker_box: list[StreamWorker] = []

    class StopsAfterFirst(Doubler):
        def finish(self, batch, prepared):
            worker_box[0].stop_event.set()  # SIGTERM arrives while batch 2 is in flight
            return super().finish(batch, prepared)

    _fill(redis_client, keys.faces, 40)
    worker = _worker(redis_client, StopsAfterFirst(out), keys)
    worker_box.append(worker)
    worker.run()
    assert _outputs(redis_client, out) == list(range(8))  # the first batch, and the one in flight
    assert redis_client.xpending(keys.faces, GROUP)["pending"] == 0
    assert redis_client.xlen(keys.faces) == 40


def test_max_entries_counts_the_batch_in_flight(redis_client, keys):
    """The bench stops on max_entries: it must not wait on one more (blocking) read for the last batch."""
    out = keys.prefix + ":out"
    _fill(redis_client, keys.faces, 16)
    worker = _worker(redis_client, Doubler(out), keys, block_ms=5_000)
    started = time.monotonic()
    worker.run(max_entries=16)
    _assert_all_done(redis_client, keys, out, 16)
    assert time.monotonic() - started < 4.0, "a 5 s blocking read ran after the last entry"


@pytest.mark.parametrize("overlap", [True, False])
def test_stats_count_every_entry_once(redis_client, keys, overlap):
    out = keys.prefix + ":out"
    _fill(redis_client, keys.faces, 18)
    worker = _worker(redis_client, Doubler(out), keys, overlap=overlap)
    worker.run(burst=True)
    assert worker.stats.entries == 18 and worker.stats.outputs == 18 and worker.stats.batches == 5
    assert int(redis_client.hget(keys.stats("overlap"), "entries_in")) == 18
