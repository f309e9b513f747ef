"""`--require-face`: drop training images in which the face detector finds no face.

The detector is the configured backend (`EMOTION_DETECTOR__BACKEND`, as for the detector service and
the Analyze page). Neither backend finds anything on a bare 48x48 crop (the face fills the frame and
is below their smallest window once borders are counted), so each image is upscaled and given a
replicated border first, which puts the face at a size and position the detectors were trained on.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from shared.emotions import EMOTIONS
from shared.faces import FaceDetector, make_detector
from shared.settings import DetectorSettings, Settings
from trainer.data import Split

log = logging.getLogger(__name__)

UPSCALE_TO = 144
BORDER = 36


def prepare_for_detection(image: np.ndarray, size: int = UPSCALE_TO, border: int = BORDER) -> np.ndarray:
    """A 48x48 crop upscaled to `size` px with a replicated border around it."""
    large = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(large, border, border, border, border, cv2.BORDER_REPLICATE)


def default_detector(settings: DetectorSettings | None = None) -> FaceDetector:
    """The configured backend with no downscaling (the canvas is small) and a lenient minimum size
    (faces fill most of it)."""
    settings = settings or Settings().detector
    return make_detector(settings.model_copy(update={"detect_width": UPSCALE_TO + 2 * BORDER, "min_face": 48,
                                                     "scale_factor": 1.1, "min_neighbors": 3}))


def has_face(images: np.ndarray, detector: FaceDetector | None = None) -> np.ndarray:
    """Boolean mask: True where the detector finds at least one face."""
    detector = detector or default_detector()
    return np.array([bool(detector.detect(prepare_for_detection(image))) for image in images], dtype=bool)


def drop_faceless(split: Split, detector: FaceDetector | None = None) -> Split:
    """`split` without the images where no face is found; counts per class go to `skipped` and the log."""
    keep = has_face(split.images, detector)
    dropped_labels = split.labels[~keep]
    dropped = {f"no_face:{name}": int(count)
               for name, count in zip(EMOTIONS, np.bincount(dropped_labels, minlength=len(EMOTIONS))) if count}
    skipped = dict(split.skipped)
    for key, count in dropped.items():
        skipped[key] = skipped.get(key, 0) + count
    log.info("require-face: dropped %d of %d %s images without a detected face %s",
             int((~keep).sum()), len(split), split.name, dropped)
    if not keep.any():
        raise ValueError(f"{split.name}: the face detector found no face in any of {len(split)} images")
    return Split(split.name, split.images[keep], split.labels[keep],
                 None if split.ids is None else split.ids[keep],
                 None if split.soft is None else split.soft[keep], skipped)
