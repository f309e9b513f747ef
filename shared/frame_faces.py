"""One frame in, its faces out, as the detector service publishes them: found, tracked, cropped.

Two steps, so that finding (the costly part, stateless) can run in other processes while tracking
(cheap, but it must see the frames in order) stays in one place:

    find_faces(gray, ...)      detection, the max_faces limit, crops framed as the model was trained
    track_faces(found, ...)    track ids, and one FaceMessage per face
    frame_faces(gray, ...)     both: what the detector service's FaceFinder calls per frame

The detector service and `emotion analyze` both go through these, so a file analysed offline gets
exactly the detection, tracking and model framing of the live pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.faces import FaceDetector, IoUTracker
from shared.model_runtime import Preprocess, crop_face
from shared.schemas import BBox, FaceMessage
from shared.settings import DetectorSettings


@dataclass(frozen=True)
class FoundFaces:
    """One frame's faces before tracking, largest first (small and picklable: no frame pixels)."""

    boxes: list[BBox]
    confidences: list[float | None]
    crops: list[np.ndarray]  # uint8, side x side, the model's input
    over_limit: int  # found beyond `max_faces` (live frames only): counted, not kept


@dataclass(frozen=True)
class FrameFaces:
    faces: list[FaceMessage]
    over_limit: int


def find_faces(gray: np.ndarray, detector: FaceDetector, settings: DetectorSettings, preprocess: Preprocess, *,
               photo: bool = False) -> FoundFaces:
    """A live frame (`photo=False`) is searched at `detect_width` and keeps its `max_faces` largest faces;
    a photo is searched at its own resolution (`detect_photo`, as the Analyze page does) and keeps all.
    Each crop is framed as the model was trained (its calibrated framing for this detector backend)."""
    found = detector.detect_photo(gray) if photo else detector.detect(gray)
    over = 0 if photo else max(0, len(found) - settings.max_faces)
    if not photo:
        found = found[:settings.max_faces]
    crops = [crop_face(gray, face.box, preprocess, landmarks=face.landmarks, backend=detector.name) for face in found]
    return FoundFaces([face.box for face in found], [face.confidence for face in found], crops, over)


def track_faces(found: FoundFaces, tracker: IoUTracker, preprocess: Preprocess, *, camera_id: str, session_id: str,
                frame_id: int, captured_ms: int, detected_ms: int | None = None) -> list[FaceMessage]:
    """Track ids for one frame's faces (frames of a camera must come in order) and their messages."""
    track_ids = tracker.update(found.boxes, captured_ms)
    detected_ms = detected_ms or int(time.time() * 1000)
    count = len(found.boxes)
    return [FaceMessage(camera_id=camera_id, session_id=session_id, frame_id=frame_id, face_index=index,
                        faces_in_frame=count, track_id=track_id, bbox=box, detection_confidence=confidence,
                        side=preprocess.input_size, preprocess=preprocess.id, captured_ms=captured_ms,
                        detected_ms=detected_ms, crop=crop.tobytes())
            for index, (box, confidence, crop, track_id) in enumerate(zip(found.boxes, found.confidences, found.crops,
                                                                          track_ids))]


def frame_faces(gray: np.ndarray, detector: FaceDetector, settings: DetectorSettings, preprocess: Preprocess,
                tracker: IoUTracker, *, camera_id: str, session_id: str, frame_id: int, captured_ms: int,
                detected_ms: int | None = None, photo: bool = False) -> FrameFaces:
    """`find_faces` then `track_faces`: one grey frame's face messages, largest first."""
    found = find_faces(gray, detector, settings, preprocess, photo=photo)
    faces = track_faces(found, tracker, preprocess, camera_id=camera_id, session_id=session_id, frame_id=frame_id,
                        captured_ms=captured_ms, detected_ms=detected_ms)
    return FrameFaces(faces, found.over_limit)
