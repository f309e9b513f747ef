"""Entry point of a classifier replica: settings -> Redis -> model -> StreamWorker(ClassifierProcessor)."""

from __future__ import annotations

from typing import Callable

from shared.bootstrap import redis_from, registry_from
from shared.model_runtime import EmotionModel
from shared.registry import ModelRegistry
from shared.settings import Settings
from shared.streams import CLASSIFIER_GROUP, Keys
from shared.worker import StreamWorker
from services.classifier.service import ClassifierProcessor, RedisTrackStore

# Classified faces are trimmed from the faces stream after a minute (kept briefly for debugging).
FACES_KEEP_MS = 60_000


def model_follower(registry: ModelRegistry, threads: int, serving: str) -> Callable[[], EmotionModel | None]:
    """A loader that returns a freshly loaded model when the current version moved, else None.

    A model that fails to load raises ModelError every time it is tried; the processor keeps the
    old one and reports the error.
    """
    seen = {"dir": serving}

    def load() -> EmotionModel | None:
        directory = str(registry.current_dir())
        if directory == seen["dir"]:
            return None
        model = EmotionModel(registry.current_dir(), threads)
        seen["dir"] = directory
        return model

    return load


def build_worker(settings: Settings, client, consumer: str | None = None) -> StreamWorker:
    keys = Keys(settings.prefix)
    registry = registry_from(settings, client, settings.classifier.model_role)
    model_dir = registry.current_dir()
    model = EmotionModel(model_dir, settings.classifier.threads)
    processor = ClassifierProcessor(model, keys, RedisTrackStore(client, keys), tau_ms=settings.classifier.smoothing_tau_ms,
                                    model_loader=model_follower(registry, settings.classifier.threads, str(model_dir)),
                                    check_every_s=settings.classifier.model_check_s,
                                    flip_tta=settings.classifier.flip_tta)
    return StreamWorker(client, processor, service="classifier", stream=keys.faces, group=CLASSIFIER_GROUP,
                        keys=keys, consumer=consumer, trim_keep_ms=FACES_KEEP_MS,
                        settings=settings.worker.model_copy(update={"batch_size": settings.classifier.batch_size,
                                                                    "batch_wait_ms": settings.classifier.batch_wait_ms}))


def run(settings: Settings) -> int:
    worker = build_worker(settings, redis_from(settings))
    worker.install_signal_handlers()
    return worker.run()
