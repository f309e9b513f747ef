"""Entry point of the detector service: settings -> Redis -> a replica serving the shards it leases.

Trackers live in the process, so a camera's frames must all reach one detector: each shard's
frames are served by the replica holding its lease (shared/sharded.py), with one StreamWorker
(DetectorProcessor) per leased shard; spare replicas wait on standby.
"""

from __future__ import annotations

from shared.bootstrap import registry_from
from shared.faces import make_detector
from shared.model_follower import ModelFollower
from shared.model_runtime import read_metadata
from shared.settings import Settings
from shared.sharded import ShardedReplica, run_replica
from shared.streams import DETECTOR_GROUP, Keys
from shared.worker import StreamWorker
from services.detector.service import DetectorProcessor, FaceFinder, RedisTrackIds


def build_worker(settings: Settings, client, consumer: str | None = None, shard: int = 0) -> StreamWorker:
    """The loop over one shard's frames (what tests drive directly, in burst mode)."""
    keys = Keys.of(settings).of_shard(shard)
    registry = registry_from(settings, client, settings.classifier.model_role)  # crop for what classifiers serve
    model_dir = registry.current_dir()
    finder = FaceFinder(make_detector(settings.detector), settings.detector, read_metadata(model_dir).preprocess,
                        track_ids=RedisTrackIds(client, keys))
    follower = ModelFollower(registry, lambda directory: read_metadata(directory).preprocess, serving=model_dir,
                             every_s=settings.model_check_s, service="detector")
    processor = DetectorProcessor(finder, keys, follower)
    return StreamWorker(client, processor, service="detector", stream=keys.frames, group=DETECTOR_GROUP,
                        keys=keys, settings=settings.worker, consumer=consumer)


def build_replica(settings: Settings, client, consumer: str | None = None) -> ShardedReplica:
    return ShardedReplica(client, Keys.of(settings), service="detector", settings=settings.worker, consumer=consumer,
                          make_worker=lambda shard, name: build_worker(settings, client, name, shard),
                          leases_ttl_ms=settings.detector.lease_ttl_ms, stream="frames", group=DETECTOR_GROUP)


def check(settings: Settings) -> dict:
    return {"backend": settings.detector.backend, "detect_width": settings.detector.detect_width,
            "shards": settings.shards}


def run(settings: Settings) -> int:
    return run_replica(settings, "detector", build_replica)
