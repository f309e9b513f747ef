"""Framing: where a model's training crop lies relative to what a face detector returns.

A face box is not a FER-2013 crop: each detector draws its box with its own margin and offset,
and FER's 48x48 crops have theirs. A `Framing`, fitted from data (`trainer/framing.py`,
`emotion calibrate-framing`) and stored per detector backend in the model's preprocessing metadata,
maps one detection to the square the model was trained on:

- reference "landmarks": the square is turned so the eyes are level; the face scale D is the mean of
  the eye distance and the eyes-to-mouth distance (the two vary least together: docs/detection.md);
  the square's centre lies (dx, dy)·D from the eyes' midpoint, measured in the upright face, and its
  side is side·D;
- reference "box": no turn; D is the box's mean side and the centre lies (dx, dy)·D from the box centre.

Coordinates are OpenCV's: pixel i has its centre at i, so a square of side s centred on c covers
[c - s/2, c + s/2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Point = tuple[float, float]
# Crops are resampled from an intermediate square no larger than this many times the output side,
# so the final INTER_AREA shrink averages the pixels instead of skipping them (no aliasing).
_MAX_INTERMEDIATE = 4


class Framing(BaseModel):
    """The fitted mapping from one detector backend's output to a model's training crop."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: Literal["landmarks", "box"]
    side: float = Field(gt=0, le=20, description="crop side in units of the face scale D")
    dx: float = Field(0.0, ge=-5, le=5, description="crop centre minus the reference point, x, in units of D")
    dy: float = Field(0.0, ge=-5, le=5, description="the same along y (down), in the upright face")


@dataclass(frozen=True)
class Square:
    """A square in frame pixels, turned by `angle` radians (the eye line's angle; 0: axis-aligned)."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0


@dataclass(frozen=True)
class _Reference:
    x: float
    y: float
    scale: float
    angle: float


def _reference(reference: str, box, landmarks: Sequence[Point] | None) -> _Reference | None:
    if reference == "box":
        return _Reference(box.x + (box.w - 1) / 2, box.y + (box.h - 1) / 2, (box.w + box.h) / 2, 0.0)
    if landmarks is None or len(landmarks) < 5:
        return None
    (lx, ly), (rx, ry), _nose, (mlx, mly), (mrx, mry) = landmarks[:5]
    ex, ey = (lx + rx) / 2, (ly + ry) / 2
    mx, my = (mlx + mrx) / 2, (mly + mry) / 2
    eyes = math.hypot(rx - lx, ry - ly)
    eyes_mouth = math.hypot(mx - ex, my - ey)
    scale = (eyes + eyes_mouth) / 2
    if scale < 1:
        return None
    return _Reference(ex, ey, scale, math.atan2(ry - ly, rx - lx))


def square_for(framing: Framing, box, landmarks: Sequence[Point] | None = None) -> Square | None:
    """The training-crop square for one detection; None when the framing needs landmarks it lacks."""
    ref = _reference(framing.reference, box, landmarks)
    if ref is None:
        return None
    cos, sin = math.cos(ref.angle), math.sin(ref.angle)
    ox, oy = framing.dx * ref.scale, framing.dy * ref.scale
    return Square(ref.x + cos * ox - sin * oy, ref.y + sin * ox + cos * oy, framing.side * ref.scale, ref.angle)


def offsets(reference: str, truth: Square, box, landmarks: Sequence[Point] | None) -> tuple[float, float, float] | None:
    """(side, dx, dy) that would map this detection exactly onto `truth`: one sample of a fit."""
    ref = _reference(reference, box, landmarks)
    if ref is None:
        return None
    tx, ty = truth.cx - ref.x, truth.cy - ref.y
    cos, sin = math.cos(ref.angle), math.sin(ref.angle)
    return truth.side / ref.scale, (cos * tx + sin * ty) / ref.scale, (-sin * tx + cos * ty) / ref.scale


def fit(reference: Literal["landmarks", "box"], samples: Sequence[tuple[float, float, float]]) -> Framing:
    """The median of each parameter over samples from `offsets` (robust to the odd bad detection)."""
    if not samples:
        raise ValueError("no detections to fit a framing on")
    side, dx, dy = np.median(np.asarray(samples, dtype=np.float64), axis=0)
    return Framing(reference=reference, side=round(float(side), 4), dx=round(float(dx), 4), dy=round(float(dy), 4))


def warp_square(gray: np.ndarray, square: Square, size: int) -> np.ndarray:
    """The content of `square` as a size x size image, turned upright; outside the frame the edge
    pixels are repeated (a face at the border keeps its geometry)."""
    inter = int(min(max(size, round(square.side)), _MAX_INTERMEDIATE * size))
    step = square.side / inter  # frame pixels per intermediate pixel
    cos, sin = math.cos(square.angle) * step, math.sin(square.angle) * step
    half = (inter - 1) / 2
    # Intermediate pixel (u, v) samples the frame at centre + R(angle)·step·((u, v) - half).
    matrix = np.array([[cos, -sin, square.cx - cos * half + sin * half],
                       [sin, cos, square.cy - sin * half - cos * half]], dtype=np.float64)
    crop = cv2.warpAffine(gray, matrix, (inter, inter), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    if inter != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop
