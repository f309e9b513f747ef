"""Helpers for the dashboard and analyze tests: the served model, sample messages, a face photo."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.emotions import EMOTIONS
from shared.schemas import BBox, EmotionEvent, FrameMessage, StageTimes


@pytest.fixture(scope="session")
def served_model_dir(model_dir) -> Path:
    """The model a fresh install serves (models/default): the dashboard tests use the real thing."""
    return model_dir


@pytest.fixture(scope="session")
def face_png(tmp_path_factory) -> Path:
    """skimage's astronaut (a real photographed face), as a PNG file."""
    from skimage import data

    path = tmp_path_factory.mktemp("faces") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def frame_message(camera_id: str, frame_id: int, session_id: str = "s-test", captured_ms: int | None = None,
                  image: np.ndarray | None = None) -> FrameMessage:
    if image is None:
        from skimage import data

        image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
        image = cv2.resize(image, (320, 320))
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return FrameMessage(camera_id=camera_id, session_id=session_id, frame_id=frame_id,
                        captured_ms=captured_ms or int(time.time() * 1000), width=image.shape[1],
                        height=image.shape[0], jpeg=jpeg.tobytes())


def emotion_event(camera_id: str, frame_id: int, label: str = "happy", track_id: int = 1,
                  session_id: str = "s-test", captured_ms: int | None = None, face_index: int = 0) -> EmotionEvent:
    captured = captured_ms or int(time.time() * 1000)
    probs = [0.02] * len(EMOTIONS)
    probs[EMOTIONS.index(label)] = 1 - 0.02 * (len(EMOTIONS) - 1)
    second = EMOTIONS[(EMOTIONS.index(label) + 1) % len(EMOTIONS)]
    return EmotionEvent(event_id=f"{camera_id}:{session_id}:{frame_id}:{face_index}", camera_id=camera_id,
                        session_id=session_id, frame_id=frame_id, face_index=face_index, track_id=track_id,
                        bbox=BBox(x=90, y=40, w=110, h=110), label=label, confidence=max(probs), probabilities=probs,
                        top2=(label, second), smoothed=probs, smoothed_label=label, model_version="tiny-random",
                        times=StageTimes(captured_ms=captured, detected_ms=captured + 15, classified_ms=captured + 40))
