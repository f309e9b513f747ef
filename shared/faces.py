"""Face detection (pluggable) and per-camera IoU tracking.

Used by the detector service, the dashboard's image analysis and the trainer's `--require-face`
cleaning, so it lives here rather than in one service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h in original-frame pixels


class FaceDetector(Protocol):
    """Anything that finds face boxes in a grey frame. Add a better model by implementing this."""

    def detect(self, gray: np.ndarray) -> list[Box]: ...


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade, run on a downscaled copy with boxes mapped back."""

    def __init__(self, detect_width: int = 320, min_face: int = 40, scale_factor: float = 1.15,
                 min_neighbors: int = 5, cascade: str = "haarcascade_frontalface_default.xml") -> None:
        path = Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"cannot load Haar cascade {path} (opencv-python-headless>=4.10,<5 ships it)")
        self.detect_width = detect_width
        self.min_face = min_face
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect(self, gray: np.ndarray) -> list[Box]:
        height, width = gray.shape[:2]
        scale = min(1.0, self.detect_width / width)
        small = cv2.resize(gray, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else gray
        min_side = max(8, int(self.min_face * scale))
        found = self._cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(min_side, min_side))
        boxes = [tuple(int(round(v / scale)) for v in box) for box in (found if len(found) else [])]
        # Largest first, so face_index 0 is the most prominent face.
        return sorted(boxes, key=lambda b: -b[2] * b[3])  # type: ignore[return-value]


def make_detector(backend: str = "haar", **options) -> FaceDetector:
    if backend == "haar":
        return HaarFaceDetector(**options)
    raise ValueError(f"unknown face detector backend {backend!r} (available: haar)")


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


@dataclass
class _Track:
    track_id: int
    box: Box
    last_ms: int


@dataclass
class IoUTracker:
    """Greedy IoU matching of boxes to the previous frame's tracks, one tracker per camera.

    Enough for a fixed camera at 5+ fps; a track unseen for `max_age_ms` is closed and a face that
    reappears later gets a new id.
    """

    iou_threshold: float = 0.3
    max_age_ms: int = 1500
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def update(self, boxes: list[Box], now_ms: int) -> list[int]:
        self._tracks = [t for t in self._tracks if now_ms - t.last_ms <= self.max_age_ms]
        pairs = sorted(((iou(box, t.box), bi, ti) for bi, box in enumerate(boxes) for ti, t in enumerate(self._tracks)),
                       reverse=True)
        assigned: dict[int, int] = {}
        used_tracks: set[int] = set()
        for overlap, bi, ti in pairs:
            if overlap < self.iou_threshold:
                break
            if bi in assigned or ti in used_tracks:
                continue
            assigned[bi] = ti
            used_tracks.add(ti)
        ids: list[int] = []
        for bi, box in enumerate(boxes):
            if bi in assigned:
                track = self._tracks[assigned[bi]]
                track.box, track.last_ms = box, now_ms
            else:
                track = _Track(self._next_id, box, now_ms)
                self._next_id += 1
                self._tracks.append(track)
            ids.append(track.track_id)
        return ids
