"""Following the current model: the detector (for its crop preprocessing) and the classifier (for the
network) both notice a promotion or a rollback within `model_check_s`, between batches.

The current version is polled from the registry (a Redis key, mirrored to a file). A model that
fails to load keeps the old one serving: the failure is logged once, kept in `error` for the
heartbeat, and tried again at each check, so fixing the registry is enough to recover.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Generic, TypeVar

from shared.model_runtime import ModelError
from shared.registry import ModelRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelFollower(Generic[T]):
    """`poll()` returns `load(directory)` when the current model moved away from the one served, at
    most once every `every_s`; otherwise None. `load` may raise ModelError to refuse a model."""

    def __init__(self, registry: ModelRegistry, load: Callable[[Path], T], *, serving: Path, every_s: float,
                 service: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry, self.load, self.every_s, self.service, self.clock = registry, load, every_s, service, clock
        self.serving = Path(serving)
        self.error: str | None = None
        self.swaps = 0
        self._checked = clock()

    def poll(self) -> T | None:
        if self.clock() - self._checked < self.every_s:
            return None
        self._checked = self.clock()
        try:
            directory = self.registry.current_dir()
            if directory == self.serving:
                return None
            loaded = self.load(directory)
        except ModelError as exc:
            if self.error != str(exc):
                log.error("event=model_refused service=%s error=%s serving=%s", self.service, exc, self.serving)
            self.error = str(exc)
            return None
        log.info("event=model_followed service=%s old=%s new=%s", self.service, self.serving, directory)
        self.serving, self.error = directory, None
        self.swaps += 1
        return loaded

    def heartbeat_info(self) -> dict:
        return {"model_dir": str(self.serving), "model_error": self.error, "model_swaps": self.swaps}
