"""Entry point of a classifier replica: settings -> Redis -> model -> one StreamWorker(ClassifierProcessor)
per shard of the faces stream (shared/sharded.py): replicas share every shard through its consumer group."""

from __future__ import annotations

from shared.bootstrap import registry_from
from shared.model_follower import ModelFollower
from shared.model_runtime import EmotionModel
from shared.settings import Settings
from shared.sharded import ShardedReplica, run_replica
from shared.streams import CLASSIFIER_GROUP, Keys
from shared.worker import StreamWorker
from services.classifier.service import ClassifierProcessor, RedisTrackStore


def build_worker(settings: Settings, client, consumer: str | None = None, shard: int = 0) -> StreamWorker:
    """The loop over one shard's faces, with its own model instance (a LiteRT interpreter serves one
    thread at a time, and each shard's worker runs on its own)."""
    keys = Keys.of(settings).of_shard(shard)
    registry = registry_from(settings, client, settings.classifier.model_role)
    model_dir = registry.current_dir()
    threads = settings.classifier.threads
    follower = ModelFollower(registry, lambda directory: EmotionModel(directory, threads), serving=model_dir,
                             every_s=settings.model_check_s, service="classifier")
    processor = ClassifierProcessor(EmotionModel(model_dir, threads), keys, RedisTrackStore(client, keys),
                                    tau_ms=settings.classifier.smoothing_tau_ms, follower=follower,
                                    flip_tta=settings.classifier.flip_tta)
    return StreamWorker(client, processor, service="classifier", stream=keys.faces, group=CLASSIFIER_GROUP,
                        keys=keys, consumer=consumer,
                        settings=settings.worker.model_copy(update={"batch_size": settings.classifier.batch_size,
                                                                    "batch_wait_ms": settings.classifier.batch_wait_ms}))


def build_replica(settings: Settings, client, consumer: str | None = None) -> ShardedReplica:
    return ShardedReplica(client, Keys.of(settings), service="classifier", settings=settings.worker, consumer=consumer,
                          make_worker=lambda shard, name: build_worker(settings, client, name, shard),
                          stream="faces", group=CLASSIFIER_GROUP)


def check(settings: Settings) -> dict:
    return {"threads": settings.classifier.threads, "batch_size": settings.classifier.batch_size,
            "flip_tta": settings.classifier.flip_tta, "shards": settings.shards}


def run(settings: Settings) -> int:
    return run_replica(settings, "classifier", build_replica)
