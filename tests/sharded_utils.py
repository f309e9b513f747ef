"""Sharded replicas in the tests (shared/sharded.py, shared/leases.py): a small processor that echoes
each face's event id, the worker factory and settings of an echo replica, a replica run on its own
thread, and who holds each shard's lease."""

from __future__ import annotations

import threading

from shared.leases import ShardLeases
from shared.processor import Outbound, Processor
from shared.schemas import FaceMessage
from shared.settings import WorkerSettings
from shared.sharded import ShardedReplica
from shared.streams import Keys
from shared.worker import StreamWorker

SETTINGS = WorkerSettings(batch_size=4, block_ms=20, claim_interval_s=0.2, heartbeat_ttl_s=5)


class Echo(Processor[FaceMessage]):
    input_model = FaceMessage

    def __init__(self, out: str) -> None:
        self.out = out

    def handle(self, batch):
        return [Outbound(self.out, {b"id": face.event_id.encode()}) for face in batch]


def echo_worker(client, keys: Keys):
    def make(shard: int, consumer: str) -> StreamWorker:
        shard_keys = keys.of_shard(shard)
        return StreamWorker(client, Echo(shard_keys.events), service="echo", stream=shard_keys.faces, group="echo",
                            keys=shard_keys, settings=SETTINGS, consumer=consumer)
    return make


def start(replica: ShardedReplica) -> threading.Thread:
    thread = threading.Thread(target=lambda: setattr(replica, "code", replica.run()), daemon=True)
    thread.start()
    return thread


def holders(client, keys: Keys) -> dict[int, str | None]:
    return ShardLeases(client, keys, "echo", "reader", 1000).holders()
