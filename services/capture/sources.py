"""Frame sources: webcam index, video file, network stream, image folder or glob, and the demo scenes.

`open_source(spec)` checks the source before anything starts, so a bad webcam index, a missing file
or an unreachable URL is one clear SourceError instead of a stream of empty frames.
"""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


class SourceError(RuntimeError):
    """A source that cannot be opened or read (message says which and why)."""


@dataclass
class Source:
    """An iterator of BGR frames plus what the capture loop needs to know about its nature."""

    name: str
    frames: Iterator[np.ndarray]
    live: bool  # live sources run at their own pace (frames are dropped to meet fps); others are paced
    finite: bool


def _video_frames(open_capture: Callable[[], cv2.VideoCapture], name: str, reconnect: bool,
                  reconnect_max_s: float) -> Iterator[np.ndarray]:
    capture = open_capture()
    backoff = 0.5
    while True:
        ok, frame = capture.read()
        if ok and frame is not None:
            backoff = 0.5
            yield frame
            continue
        capture.release()
        if not reconnect:
            return
        log.warning("event=source_lost source=%s retry_in_s=%.1f", name, backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, reconnect_max_s)
        capture = open_capture()


def _open_video(target: str | int, name: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        raise SourceError(f"cannot open {name}")
    return capture


def _image_frames(paths: list[Path], loop: bool) -> Iterator[np.ndarray]:
    while True:
        for path in paths:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                log.warning("event=unreadable_image path=%s", path)
                continue
            yield frame
        if not loop:
            return


def _looping(factory: Callable[[], Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
    while True:
        produced = False
        for frame in factory():
            produced = True
            yield frame
        if not produced:
            return


def open_source(spec: str, *, fps: float = 15.0, loop: bool = False, reconnect_max_s: float = 30.0) -> Source:
    spec = spec.strip()
    if spec == "demo":
        from services.capture.demo import AstronautDemo

        return Source("demo", iter(AstronautDemo(fps=fps)), live=False, finite=False)
    if spec.startswith("demo:"):
        from services.capture.demo import FerDemo

        archive = Path(spec[5:]).expanduser()
        if not archive.is_file():
            raise SourceError(f"demo dataset {archive} does not exist (expected a FER-2013 .npz archive)")
        return Source(spec, iter(FerDemo(archive, fps=fps)), live=False, finite=False)
    if spec.isdigit():
        index = int(spec)
        name = f"webcam {index}"
        first = _open_video(index, f"{name} (no camera at /dev/video{index}?)")
        captures = iter([first])
        opener = lambda: next(captures, None) or _open_video(index, name)  # noqa: E731
        return Source(name, _video_frames(opener, name, True, reconnect_max_s), live=True, finite=False)
    if spec.startswith(NETWORK_SCHEMES):
        first = _open_video(spec, f"stream {spec} (unreachable or not a video stream)")
        captures = iter([first])
        opener = lambda: next(captures, None) or cv2.VideoCapture(spec)  # noqa: E731
        return Source(spec, _video_frames(opener, spec, True, reconnect_max_s), live=True, finite=False)
    path = Path(spec).expanduser()
    if path.is_dir() or any(ch in spec for ch in "*?["):
        files = sorted(p for p in (path.iterdir() if path.is_dir() else map(Path, glob.glob(spec)))
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images found at {spec}")
        return Source(spec, _image_frames(files, loop), live=False, finite=not loop)
    if path.is_file():
        _open_video(str(path), f"video file {path} (unsupported format?)").release()
        factory = lambda: _video_frames(lambda: _open_video(str(path), str(path)), str(path), False, 0)  # noqa: E731
        frames = _looping(factory) if loop else factory()
        return Source(str(path), frames, live=False, finite=not loop)
    raise SourceError(f"source {spec!r} is not a webcam index, an existing file or folder, a URL, or 'demo'")
