"""One frame in, its faces out, as the detector service publishes them: found, tracked, cropped.

The detector service (`FaceFinder`) and `emotion analyze` both call `frame_faces`, so a file analysed
offline goes through exactly the detection, tracking and model framing of the live pipeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shared.faces import FaceDetector, IoUTracker
from shared.model_runtime import Preprocess, crop_face
from shared.schemas import FaceMessage
from shared.settings import DetectorSettings


@dataclass(frozen=True)
class FrameFaces:
    faces: list[FaceMessage]
    over_limit: int  # found beyond `max_faces` (live frames only): counted, not returned


def frame_faces(gray: np.ndarray, detector: FaceDetector, settings: DetectorSettings, preprocess: Preprocess,
                tracker: IoUTracker, *, camera_id: str, session_id: str, frame_id: int, captured_ms: int,
                detected_ms: int | None = None, photo: bool = False) -> FrameFaces:
    """The faces of one grey frame, largest first, each with its track id and its crop framed as the
    model was trained (the model's calibrated framing for this detector backend).

    A live frame (`photo=False`) is searched at `detect_width` and keeps its `max_faces` largest faces;
    a photo is searched at its own resolution (`detect_photo`, as the Analyze page does) and keeps all.
    """
    found = detector.detect_photo(gray) if photo else detector.detect(gray)
    over = 0 if photo else max(0, len(found) - settings.max_faces)
    if not photo:
        found = found[:settings.max_faces]
    track_ids = tracker.update([d.box for d in found], captured_ms)
    detected_ms = detected_ms or int(time.time() * 1000)
    faces = []
    for index, (face, track_id) in enumerate(zip(found, track_ids)):
        crop = crop_face(gray, face.box, preprocess, landmarks=face.landmarks, backend=detector.name)
        faces.append(FaceMessage(
            camera_id=camera_id, session_id=session_id, frame_id=frame_id, face_index=index,
            faces_in_frame=len(found), track_id=track_id, bbox=face.box, detection_confidence=face.confidence,
            side=preprocess.input_size, preprocess=preprocess.id, captured_ms=captured_ms, detected_ms=detected_ms,
            crop=crop.tobytes()))
    return FrameFaces(faces, over)
