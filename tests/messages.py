"""Message builders several test modules share: a valid FaceMessage or EmotionEvent with any field
overridden (the schema tests' own), and the numbered good faces the bad-input tests interleave with
malformed entries."""

from __future__ import annotations

import time

from shared.schemas import BBox, EmotionEvent, FaceMessage, StageTimes


def make_face(**overrides) -> FaceMessage:
    values = dict(camera_id="cam0", session_id="s1", frame_id=3, face_index=0, faces_in_frame=1, track_id=7,
                  bbox=BBox(x=1, y=2, w=30, h=30), side=48, preprocess="g48-raw-m0.00", captured_ms=1000,
                  detected_ms=1010, crop=bytes(48 * 48))
    values.update(overrides)
    return FaceMessage(**values)


def make_event(**overrides) -> EmotionEvent:
    probs = [0.1, 0.05, 0.05, 0.5, 0.1, 0.1, 0.1]
    values = dict(event_id="cam0:s1:3:0", camera_id="cam0", session_id="s1", frame_id=3, face_index=0, track_id=7,
                  bbox=BBox(x=1, y=2, w=30, h=30), label="happy", confidence=0.5, probabilities=probs,
                  top2=("happy", "angry"), smoothed=probs, smoothed_label="happy", model_version="v1",
                  times=StageTimes(captured_ms=1000, detected_ms=1010, classified_ms=1020))
    values.update(overrides)
    return EmotionEvent(**values)


def good_face(i: int, side: int = 48) -> FaceMessage:
    now = int(time.time() * 1000)
    return FaceMessage(camera_id="good", session_id="s", frame_id=i, face_index=0, faces_in_frame=1, track_id=1,
                       bbox={"x": 0, "y": 0, "w": 10, "h": 10}, side=side, preprocess="g48-raw-m0.00",
                       captured_ms=now, detected_ms=now + 1, crop=bytes((i + k) % 256 for k in range(side * side)))
