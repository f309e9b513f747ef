"""The PATH arguments of `emotion analyze`, expanded into inputs that yield numbered frames.

A PATH is a video file, an image, a folder (its videos and images, not recursive) or a glob. Each
video is one input (its own camera in the store, its own tracks); the images named by one PATH form
one input, analysed one by one as photos. Everything is checked before any frame is read, so a typo
is one line, not a half-written output.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import cv2
import numpy as np

from services.capture.sources import IMAGE_SUFFIXES


VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp"}
DEFAULT_FPS = 25.0  # for a video whose container gives no frame rate
_CAMERA_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


class InputError(ValueError):
    """A PATH that cannot be analysed (the message names it and says why)."""


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in its video, or image number in its set
    time_ms: int | None  # position in the video; None for an image
    path: str  # the file it came from
    image: np.ndarray | None  # BGR, when it was decoded (see `frames`); None for an image that does not decode
    ordinal: int | None  # its place among the frames of its input to analyse; None: skipped by --every

    @property
    def analyse(self) -> bool:
        return self.ordinal is not None


Select = Callable[[int], bool]  # ordinal -> decode this frame


@dataclass
class VideoInput:
    path: Path
    camera_id: str
    fps: float
    frame_count: int  # as the container announces it (progress and ETA only; the frames read are counted)
    width: int
    height: int
    kind: Literal["video"] = "video"

    @classmethod
    def open(cls, path: Path, camera_id: str) -> "VideoInput":
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise InputError(f"{path}: cannot open it as a video (unsupported format or corrupt file)")
            fps = capture.get(cv2.CAP_PROP_FPS)
            fps = fps if fps and 1.0 <= fps <= 1000.0 else DEFAULT_FPS
            return cls(path, camera_id, float(fps), max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
                       int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        finally:
            capture.release()

    @property
    def expected_frames(self) -> int:
        return self.frame_count

    def frames(self, every: int = 1, select: Select | None = None, decode_skipped: bool = False) -> Iterator[Frame]:
        """Every frame in order, each `every`-th one to be analysed. Pixels are decoded for the frames to
        analyse that `select` picks (all when None), and for the skipped ones only with `decode_skipped`
        (an annotated copy needs every frame); the others are stepped over (grab without retrieve)."""
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise InputError(f"{self.path}: cannot open it as a video any more")
        try:
            index = 0
            while True:
                ordinal = index // every if index % every == 0 else None
                if decode_skipped if ordinal is None else (select is None or select(ordinal)):
                    ok, image = capture.read()
                else:
                    ok, image = capture.grab(), None
                if not ok:
                    return
                yield Frame(index, round(index * 1000 / self.fps), str(self.path), image, ordinal)
                index += 1
        finally:
            capture.release()


@dataclass
class ImageSetInput:
    name: str  # the PATH argument the images came from
    paths: list[Path]
    camera_id: str
    kind: Literal["images"] = "images"

    @property
    def expected_frames(self) -> int:
        return len(self.paths)

    def frames(self, every: int = 1, select: Select | None = None, decode_skipped: bool = False) -> Iterator[Frame]:
        """Each image once, in order (`every` thins video frames only: photos are not a sequence); those
        that `select` picks (all when None) are read. An image that does not decode comes with no pixels."""
        for index, path in enumerate(self.paths):
            image = None
            if select is None or select(index):
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is not None and image.size == 0:
                    image = None
            yield Frame(index, None, str(path), image, index)


Input = VideoInput | ImageSetInput


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _camera_id(name: str, taken: set[str]) -> str:
    """A readable camera id from a file or argument name, unique within the run (at most 64 characters)."""
    base = _CAMERA_UNSAFE.sub("_", name).strip("_.")[:56] or "input"
    camera, n = base, 1
    while camera in taken:
        n += 1
        camera = f"{base}-{n}"
    taken.add(camera)
    return camera


def _media_in(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and (_is_image(p) or _is_video(p)))
        if not files:
            raise InputError(f"{spec}: the folder holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}) or video "
                             f"({', '.join(sorted(VIDEO_SUFFIXES))})")
        return files
    if path.is_file():
        return [path]
    if any(ch in spec for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file() and (_is_image(p) or _is_video(p))]
        if not files:
            raise InputError(f"{spec}: the pattern matches no image or video file")
        return files
    raise InputError(f"{spec}: no such file or folder")


def _set_name(spec: str) -> str:
    """What to call the images of one PATH: the folder's name (for a glob, the folder it searches)."""
    path = Path(spec).expanduser()
    if not path.is_dir():
        path = next((p for p in path.parents if not any(ch in p.name for ch in "*?[")), path.parent)
    return path.resolve().name or "images"


def expand(specs: list[str]) -> list[Input]:
    """The inputs named by PATH arguments, in order; raises InputError for the first bad one."""
    inputs: list[Input] = []
    taken: set[str] = set()
    for spec in specs:
        images: list[Path] = []
        for path in _media_in(spec):
            if _is_image(path):
                images.append(path)
            else:  # a video, or a file named explicitly whatever its suffix: the decoder decides
                inputs.append(VideoInput.open(path, _camera_id(path.name, taken)))
        if images:
            name = images[0].name if len(images) == 1 else _set_name(spec)
            inputs.append(ImageSetInput(spec, images, _camera_id(name, taken)))
    return inputs
