"""Helpers for the dashboard and analyze tests: a tiny random-weight model, sample messages, a face photo.

The model is built with TensorFlow in a subprocess (so the test process never imports it) and cached
in pytest's cache directory. Its weights are random: tests use it to check plumbing, never accuracy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.emotions import EMOTIONS
from shared.model_runtime import METADATA_FILE, MODEL_FILE, file_sha256
from shared.schemas import BBox, EmotionEvent, FrameMessage, StageTimes

TINY_MODEL_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
tf.keras.utils.set_random_seed(7)
inputs = tf.keras.Input((48, 48, 1))
x = tf.keras.layers.Rescaling(1 / 255.0)(inputs)
x = tf.keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
x = tf.keras.layers.GlobalAveragePooling2D()(x)
outputs = tf.keras.layers.Dense(7, activation="softmax")(x)
model = tf.keras.Model(inputs, outputs)
converter = tf.lite.TFLiteConverter.from_keras_model(model)
open(sys.argv[1], "wb").write(converter.convert())
"""


def build_tiny_model(directory: Path, version: str = "tiny-random") -> Path:
    """Export a random-weight 48x48 grey model with valid metadata into `directory` (reused if present)."""
    directory.mkdir(parents=True, exist_ok=True)
    model_path = directory / MODEL_FILE
    if not model_path.exists():
        subprocess.run([sys.executable, "-c", TINY_MODEL_SCRIPT, str(model_path)], check=True, timeout=600,
                       capture_output=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                                                 "PATH": "/usr/bin:/bin"})
    metadata = {"version": version, "architecture": "tiny-random-test", "classes": list(EMOTIONS),
                "preprocess": {"input_size": 48, "grayscale": True, "equalize_hist": False, "margin": 0.0,
                               "input_range": "0-255"},
                "metrics": {"PublicTest": {"top1": 0.0}}, "sha256": file_sha256(model_path),
                "note": "random weights for tests; not a trained model"}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(request) -> Path:
    return build_tiny_model(Path(request.config.cache.mkdir("tiny-emotion-model")))


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
