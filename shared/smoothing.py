"""Per-track smoothing, and the emotion events it labels: one implementation for every consumer.

The classifier service runs it on live faces (its track states kept in Redis, since consecutive faces
of one track land on different replicas); `emotion analyze` runs the same functions over the faces
of a file, with the states in a dict. A state is the track's time-aware exponential moving average
of the 7 probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.emotions import EMOTIONS
from shared.schemas import EmotionEvent, FaceMessage, StageTimes


@dataclass
class TrackState:
    probabilities: np.ndarray
    at_ms: int


def track_key(face: FaceMessage) -> str:
    """The key of a face's track state: track ids are per camera."""
    return f"{face.camera_id}:{face.track_id}"


def smooth(previous: TrackState | None, probabilities: np.ndarray, at_ms: int, tau_ms: float) -> TrackState:
    """Time-aware EMA: the older the previous state, the less it weighs (time constant tau_ms)."""
    if previous is None:
        return TrackState(probabilities.astype(np.float64), at_ms)
    dt = at_ms - previous.at_ms
    if dt < 0:  # an older face processed late by another replica: blend lightly, keep the newer time
        weight, at_ms = 0.2, previous.at_ms
    else:
        weight = 1.0 - math.exp(-max(dt, 1) / tau_ms)
    blended = weight * probabilities + (1.0 - weight) * previous.probabilities
    return TrackState(blended / blended.sum(), at_ms)


def build_events(faces: list[FaceMessage], probabilities: np.ndarray, model_version: str,
                 states: dict[str, TrackState | None], tau_ms: float, now_ms: int
                 ) -> tuple[list[EmotionEvent], dict[str, TrackState]]:
    """The pure part: one event per face, with smoothing per track. `states` is keyed by `track_key`.

    Events are built with `model_construct`: every value comes from this function (checked finite
    and normalised here), so re-validating each field per face would only cost time on the hot path.
    """
    probs = np.clip(probabilities.astype(np.float64), 0.0, 1.0)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)[:, :2]
    events: list[EmotionEvent] = []
    updated: dict[str, TrackState] = {}
    for face, row, (first, second) in zip(faces, probs, order):
        key = track_key(face)
        state = smooth(updated.get(key) or states.get(key), row, face.captured_ms, tau_ms)
        updated[key] = state
        events.append(EmotionEvent.model_construct(
            schema_version=1, event_id=face.event_id, camera_id=face.camera_id, session_id=face.session_id,
            frame_id=face.frame_id, face_index=face.face_index, track_id=face.track_id, bbox=face.bbox,
            detection_confidence=face.detection_confidence, label=EMOTIONS[first], confidence=float(row[first]),
            probabilities=row.tolist(),
            top2=(EMOTIONS[first], EMOTIONS[second]), smoothed=state.probabilities.tolist(),
            smoothed_label=EMOTIONS[int(np.argmax(state.probabilities))], model_version=model_version,
            times=StageTimes.model_construct(captured_ms=face.captured_ms, detected_ms=face.detected_ms,
                                             classified_ms=now_ms)))
    return events, updated
