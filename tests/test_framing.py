"""Framing calibration (trainer/framing.py, `emotion calibrate-framing`): fitted on real FER-2013
faces in composed frames, stored in a model's metadata, and used by the detector service's crops."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from services.detector.service import FaceFinder
from shared.faces import make_detector
from shared.framing import warp_square
from shared.model_runtime import crop_face, read_metadata
from shared.schemas import FrameMessage
from shared.settings import REPO_ROOT, DetectorSettings
from trainer.framing import compose


def test_composed_frames_put_each_face_where_its_truth_says():
    """The truth square of a pasted face holds that face: cutting it back out gives the original."""
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 255, (2, 48, 48), dtype=np.uint8)
    faces = np.stack([cv2.GaussianBlur(f, (0, 0), 2) for f in faces])
    composed = next(compose(faces, seed=3))
    assert composed.frame.shape == (480, 640) and len(composed.truths) == 2
    for face, truth in zip(faces, composed.truths):
        back = warp_square(composed.frame, truth, 48)
        assert np.abs(back.astype(int) - face).mean() < 6


def test_the_shipped_model_carries_a_framing_for_each_backend():
    preprocess = read_metadata(REPO_ROOT / "models" / "default").preprocess
    assert preprocess.framing["yunet"].reference == "landmarks"
    assert 2.0 < preprocess.framing["yunet"].side < 3.5  # FER crops are about 2.7 face scales wide
    assert preprocess.framing["haar"].reference == "box"
    assert 0.8 < preprocess.framing["haar"].side < 1.3


@pytest.mark.slow
def test_calibration_is_stored_in_the_model_and_used_by_the_detector(fer_publictest, tmp_path):
    """`emotion calibrate-framing` on a copy of the model: metadata gains the fitted framing (and a
    record of how it was made), the preprocess id changes, and FaceFinder's crops follow it."""
    model = tmp_path / "model"
    shutil.copytree(REPO_ROOT / "models" / "default", model)
    raw = json.loads((model / "metadata.json").read_text())
    raw["preprocess"].pop("framing", None)
    raw.pop("framing_calibration", None)
    (model / "metadata.json").write_text(json.dumps(raw))
    before = read_metadata(model).preprocess
    training = fer_publictest.parent / "fer2013_training.npz"
    proc = subprocess.run([sys.executable, "-m", "emotion", "calibrate-framing", str(model), "--data", str(training),
                           "--faces", "60", "--backends", "haar", "--json"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    after = read_metadata(model).preprocess
    assert after.framing["haar"].model_dump() == report["preprocess"]["framing"]["haar"]
    assert after.id != before.id
    calibration = json.loads((model / "metadata.json").read_text())["framing_calibration"]["haar"]
    assert calibration["faces"] == 60 and calibration["found"] >= 30

    images = np.load(fer_publictest)["images"][:2]
    composed = next(compose(images, seed=1))
    ok, jpeg = cv2.imencode(".jpg", composed.frame)
    frame = FrameMessage(camera_id="c", session_id="s", frame_id=0, captured_ms=1, width=640, height=480,
                         jpeg=jpeg.tobytes())
    settings = DetectorSettings(backend="haar")
    detector = make_detector(settings)
    faces = FaceFinder(detector, settings, after).process([frame]).faces
    assert faces and all(f.preprocess == after.id for f in faces)
    gray = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    detection = detector.detect(gray)[0]
    framed = crop_face(gray, detection.box, after, backend="haar")
    boxed = crop_face(gray, detection.box, before, backend="haar")
    published = faces[0].crop_array()
    assert np.array_equal(published, framed) and not np.array_equal(published, boxed)
