"""Calibrate a model's crop framing from data, and the composed frames it is fitted and checked on.

FER-2013 faces are 48x48 crops with their own margin and scale. To crop live faces the same way,
Training faces are placed into larger frames with background (where each face's square is known),
the detector is run on those frames, and the mapping from its output (box, or eyes and mouth) to
the known square is fitted (`shared.framing.fit`: medians). The result goes into the model's
`metadata.json` (`preprocess.framing.<backend>`), where the detector service, the Analyze page and
the benchmarks read it. No TensorFlow here: this runs wherever the detector runs.

`emotion calibrate-framing MODEL_DIR` applies it to any model directory.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from shared.faces import Detection, FaceDetector
from shared.framing import Framing, Square, fit, offsets
from shared.model_runtime import METADATA_FILE, read_metadata

log = logging.getLogger(__name__)

FRAME_WIDTH, FRAME_HEIGHT = 640, 480
FACE_SIDES = (140, 180)  # side of a pasted face, pixels (a person about a metre from a webcam)
FEATHER = 0.15  # the face's edge fades into the background over this fraction of its side
IOU_FOUND = 0.3


@dataclass(frozen=True)
class Composed:
    """One frame (grey) and the squares where its FER faces were pasted (same order as the images)."""

    frame: np.ndarray
    truths: list[Square]


def background(rng: np.random.Generator) -> np.ndarray:
    """The demo scene's backdrop (a lit wall: a ramp with sensor noise), grey; it holds no face."""
    ramp = np.linspace(60, 150, FRAME_WIDTH, dtype=np.float32)[None, :].repeat(FRAME_HEIGHT, 0)
    ramp += np.linspace(0, 40, FRAME_HEIGHT, dtype=np.float32)[:, None]
    ramp += rng.normal(0, 3, (FRAME_HEIGHT, FRAME_WIDTH)).astype(np.float32)
    return np.clip(ramp, 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, face: np.ndarray, cx: float, cy: float, side: int, angle_deg: float) -> None:
    """Paste a 48x48 face scaled to `side` and turned by `angle_deg` (counter-clockwise on screen),
    centred on (cx, cy), its edge feathered into the canvas."""
    border = max(2, int(side * FEATHER))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, border, border, border, border, cv2.BORDER_REPLICATE).astype(np.float32)
    full = side + 2 * border
    ramp = np.minimum(np.arange(full), np.arange(full)[::-1]).astype(np.float32)
    edge = np.clip(ramp / border, 0, 1)
    alpha = np.minimum(edge[:, None], edge[None, :])
    half = (full - 1) / 2
    matrix = cv2.getRotationMatrix2D((half, half), angle_deg, 1.0)
    matrix[:, 2] += (cx - half, cy - half)
    size = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(big, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
    weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR, borderValue=0)
    mixed = weight * warped + (1 - weight) * canvas.astype(np.float32)
    canvas[:] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def compose(images: np.ndarray, *, seed: int = 0, angle_deg: float = 0.0) -> Iterator[Composed]:
    """Frames of two FER faces each (left and right half), sizes in FACE_SIDES, random positions.

    `angle_deg` turns every face (0 for calibration; ±15 to check alignment). Deterministic per seed.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, len(images), 2):
        canvas = background(rng)
        truths = []
        for slot, face in enumerate(images[start:start + 2]):
            side = int(rng.integers(FACE_SIDES[0], FACE_SIDES[1] + 1))
            reach = side * (abs(math.cos(math.radians(angle_deg))) + abs(math.sin(math.radians(angle_deg)))) / 2
            half_width = FRAME_WIDTH / 2
            cx = slot * half_width + rng.uniform(reach + 8, half_width - reach - 8)
            cy = rng.uniform(reach + 8, FRAME_HEIGHT - reach - 8)
            _paste(canvas, face, cx, cy, side, angle_deg)
            truths.append(Square(cx, cy, float(side), -math.radians(angle_deg)))
        yield Composed(canvas, truths)


def match(truth: Square, found: list[Detection]) -> Detection | None:
    """The detection of this face: the best IoU (>= IOU_FOUND) with the face's upright bounding square."""
    reach = truth.side * (abs(math.cos(truth.angle)) + abs(math.sin(truth.angle)))
    tx, ty = truth.cx - reach / 2, truth.cy - reach / 2
    best, best_iou = None, IOU_FOUND
    for detection in found:
        b = detection.box
        ix = max(0.0, min(tx + reach, b.x + b.w) - max(tx, b.x))
        iy = max(0.0, min(ty + reach, b.y + b.h) - max(ty, b.y))
        union = reach * reach + b.w * b.h - ix * iy
        overlap = ix * iy / union if union else 0.0
        if overlap >= best_iou:
            best, best_iou = detection, overlap
    return best


def calibrate(images: np.ndarray, detector: FaceDetector, *, seed: int = 0) -> tuple[Framing, dict]:
    """Fit `detector`'s framing on FER faces composed into frames; returns it and a report."""
    samples: list[tuple[float, float, float]] = []
    found = 0
    reference = None
    for composed in compose(images, seed=seed):
        detections = detector.detect(composed.frame)
        for truth in composed.truths:
            detection = match(truth, detections)
            if detection is None:
                continue
            found += 1
            if reference is None:
                reference = "landmarks" if detection.landmarks is not None else "box"
            sample = offsets(reference, truth, detection.box, detection.landmarks)
            if sample is not None:
                samples.append(sample)
    if reference is None:
        raise ValueError(f"the {detector.name} detector found none of {len(images)} faces: nothing to fit")
    framing = fit(reference, samples)  # type: ignore[arg-type]
    spread = np.asarray(samples)
    quartiles = np.percentile(spread, [25, 75], axis=0)
    report = {"backend": detector.name, "faces": int(len(images)), "found": found, "fitted_on": len(samples),
              "reference": reference,
              "interquartile": {name: [round(float(q), 4) for q in quartiles[:, i]]
                                for i, name in enumerate(("side", "dx", "dy"))}}
    return framing, report


def apply_to_model(model_dir: Path, framings: dict[str, Framing], reports: list[dict], data: str) -> dict:
    """Write the framings into the model's metadata (other backends' entries are kept) and record how
    they were made under `framing_calibration`; returns the new preprocess as a dict."""
    model_dir = Path(model_dir)
    metadata = read_metadata(model_dir)  # validates first: a broken directory is an error, not overwritten
    path = model_dir / METADATA_FILE
    raw = json.loads(path.read_text())
    preprocess = metadata.preprocess.model_copy(update={"framing": {**metadata.preprocess.framing, **framings}})
    raw["preprocess"] = json.loads(preprocess.model_dump_json())
    calibration = dict(raw.get("framing_calibration") or {})
    for report in reports:
        calibration[report["backend"]] = {**report, "data": data,
                                          "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    raw["framing_calibration"] = calibration
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(path)  # atomic: a detector reading the metadata never sees half a file
    return raw["preprocess"]
