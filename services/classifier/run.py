"""Entry point of a classifier replica: settings -> Redis -> model -> StreamWorker(ClassifierProcessor)."""

from __future__ import annotations

from shared.bootstrap import redis_from, registry_from
from shared.model_follower import ModelFollower
from shared.model_runtime import EmotionModel
from shared.settings import Settings
from shared.streams import CLASSIFIER_GROUP, Keys
from shared.worker import StreamWorker
from services.classifier.service import ClassifierProcessor, RedisTrackStore


def build_worker(settings: Settings, client, consumer: str | None = None) -> StreamWorker:
    keys = Keys(settings.prefix)
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


def check(settings: Settings) -> dict:
    return {"threads": settings.classifier.threads, "batch_size": settings.classifier.batch_size,
            "flip_tta": settings.classifier.flip_tta}


def run(settings: Settings) -> int:
    worker = build_worker(settings, redis_from(settings))
    worker.install_signal_handlers()
    return worker.run()
