"""`--annotate OUT`: the input with every face's box, track id and smoothed label drawn on it.

OUT ending in a video suffix (.mp4, .avi, .mkv, .mov) is the annotated copy of the one video being
analysed: every frame of it, at its frame rate, so it plays like the original (with `--every N` a
skipped frame shows the boxes of the last analysed one). Any other OUT is a folder: each video becomes
`<name>.annotated.mp4` in it and each image `<name>.annotated<suffix>`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from analysis.inputs import Input
from analysis.pipeline import FrameResult
from shared.drawing import label_box, line_style
from shared.emotions import color_bgr
from shared.schemas import EmotionEvent

VIDEO_OUTPUTS = {".mp4": "mp4v", ".mkv": "mp4v", ".mov": "mp4v", ".avi": "XVID"}  # suffix -> fourcc


def is_video_output(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_OUTPUTS


def draw(image: np.ndarray, events: list[EmotionEvent]) -> np.ndarray:
    """A copy of `image` with each face's box in its smoothed emotion's colour and `#track label p%`."""
    out = image.copy()
    thickness, font_scale = line_style(out)
    for event in events:
        box, label = event.bbox, event.smoothed_label
        probability = max(event.smoothed)
        label_box(out, box.x, box.y, box.w, box.h, f"#{event.track_id} {label} {probability:.0%}", color_bgr(label),
                  thickness, font_scale)
    return out


class Annotator:
    """The `--annotate` sink. `paths` lists every file it wrote, in order."""

    def __init__(self, target: Path, inputs: list[Input]) -> None:
        self.target = Path(target)
        self.single = is_video_output(self.target)
        if self.single and (len(inputs) != 1 or inputs[0].kind != "video"):
            raise ValueError(f"--annotate {target}: a video file holds the annotated copy of one video; "
                             f"give a folder to annotate {len(inputs)} inputs or images")
        if not self.single:
            self.target.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self._taken: set[str] = set()
        self._writer: cv2.VideoWriter | None = None
        self._writing: Input | None = None
        self._last: list[EmotionEvent] = []

    @property
    def report_prefix(self) -> str:
        """Where the report goes: beside the annotated video (`clip.mp4` -> `clip.report.html`, ...), or
        inside the folder (`report.html`, ...). Report file names are this prefix + their own name."""
        return str(self.target.parent / f"{self.target.stem}.") if self.single else str(self.target / "_")[:-1]

    def _unique(self, name: str) -> Path:
        stem, suffix, n = Path(name).stem, Path(name).suffix, 1
        candidate = name
        while candidate in self._taken:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self._taken.add(candidate)
        return self.target / candidate

    def _open_video(self, item: Input, image: np.ndarray) -> None:
        self._close_video()
        path = self.target if self.single else self._unique(f"{Path(item.path).stem}.annotated.mp4")
        fourcc = VIDEO_OUTPUTS[path.suffix.lower()]
        height, width = image.shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), item.fps, (width, height))
        if not writer.isOpened():
            raise OSError(f"--annotate: cannot write a {path.suffix} video at {path}")
        self._writer, self._writing, self._last = writer, item, []
        self.paths.append(path)

    def add(self, result: FrameResult) -> None:
        image = result.frame.image
        if image is None:
            return
        if result.input.kind == "images":
            path = self._unique(f"{Path(result.frame.path).stem}.annotated{Path(result.frame.path).suffix.lower()}")
            if not cv2.imwrite(str(path), draw(image, result.events)):
                raise OSError(f"--annotate: cannot write {path}")
            self.paths.append(path)
            return
        if self._writing is not result.input:
            self._open_video(result.input, image)
        if result.frame.analyse:
            self._last = result.events
        self._writer.write(draw(image, self._last))

    def _close_video(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def close(self) -> None:
        self._close_video()
