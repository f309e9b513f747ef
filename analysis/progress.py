"""The progress line of `emotion analyze` on a terminal: frames done, frames/s, faces, ETA.

Drawn on stderr only when stderr is a terminal (piped output stays clean), at most ten times a second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    def __init__(self, total_frames: int, stream: TextIO | None = None, enabled: bool | None = None,
                 min_interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = max(0, total_frames)
        self.min_interval_s = min_interval_s
        self._started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def line(self, done: int, faces: int, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self._started)
        rate = done / elapsed
        if self.total:
            fraction = min(1.0, done / self.total)
            filled = int(BAR_WIDTH * fraction)
            eta = _clock((self.total - done) / rate) if rate > 0 and done < self.total else "0:00"
            return (f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done:,}/{self.total:,} frames  "
                    f"{rate:,.1f} frames/s  {faces:,} faces  ETA {eta}")
        return f"{done:,} frames  {rate:,.1f} frames/s  {faces:,} faces  {_clock(elapsed)}"

    def update(self, done: int, faces: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._drawn < self.min_interval_s:
            return
        self._drawn = now
        text = self.line(done, faces, now)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def finish(self, done: int, faces: int) -> None:
        if self.enabled:
            self._drawn = 0.0
            self.update(done, faces)
            self.stream.write("\n")
            self.stream.flush()
