"""Entry point of the detector service: settings -> Redis -> StreamWorker(DetectorProcessor)."""

from __future__ import annotations

from shared.bootstrap import redis_from, registry_from
from shared.faces import make_detector
from shared.model_runtime import Preprocess, read_metadata
from shared.settings import Settings
from shared.streams import DETECTOR_GROUP, Keys
from shared.worker import StreamWorker
from services.detector.service import DetectorProcessor, FaceFinder


def build_worker(settings: Settings, client, consumer: str | None = None) -> StreamWorker:
    keys = Keys(settings.prefix)
    registry = registry_from(settings, client)

    def current_preprocess() -> Preprocess:
        return read_metadata(registry.current_dir()).preprocess

    detector = make_detector(settings.detector)
    finder = FaceFinder(detector, settings.detector, current_preprocess())
    processor = DetectorProcessor(finder, keys, current_preprocess, settings.classifier.model_check_s)
    return StreamWorker(client, processor, service="detector", stream=keys.frames, group=DETECTOR_GROUP,
                        keys=keys, settings=settings.worker, consumer=consumer)


def run(settings: Settings) -> int:
    worker = build_worker(settings, redis_from(settings))
    worker.install_signal_handlers()
    return worker.run()
