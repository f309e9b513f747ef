"""Entry point of the detector service: settings -> Redis -> StreamWorker(DetectorProcessor)."""

from __future__ import annotations

from shared.bootstrap import redis_from, registry_from
from shared.faces import make_detector
from shared.model_follower import ModelFollower
from shared.model_runtime import read_metadata
from shared.settings import Settings
from shared.streams import DETECTOR_GROUP, Keys
from shared.worker import StreamWorker
from services.detector.service import DetectorProcessor, FaceFinder


def build_worker(settings: Settings, client, consumer: str | None = None) -> StreamWorker:
    keys = Keys(settings.prefix)
    registry = registry_from(settings, client, settings.classifier.model_role)  # crop for what classifiers serve
    model_dir = registry.current_dir()
    finder = FaceFinder(make_detector(settings.detector), settings.detector, read_metadata(model_dir).preprocess)
    follower = ModelFollower(registry, lambda directory: read_metadata(directory).preprocess, serving=model_dir,
                             every_s=settings.model_check_s, service="detector")
    processor = DetectorProcessor(finder, keys, follower)
    return StreamWorker(client, processor, service="detector", stream=keys.frames, group=DETECTOR_GROUP,
                        keys=keys, settings=settings.worker, consumer=consumer)


def check(settings: Settings) -> dict:
    return {"backend": settings.detector.backend, "detect_width": settings.detector.detect_width}


def run(settings: Settings) -> int:
    worker = build_worker(settings, redis_from(settings))
    worker.install_signal_handlers()
    return worker.run()
