"""Pure vision parts: cropping with the model's preprocessing, IoU tracking, detection of real faces."""

import cv2
import numpy as np
import pytest

from services.capture.demo import AstronautDemo
from shared.faces import HaarFaceDetector, IoUTracker, make_detector
from shared.model_runtime import Preprocess, crop_face


def test_crop_has_model_size_and_keeps_geometry_at_borders():
    frame = np.arange(200 * 300, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    pre = Preprocess(input_size=48, margin=0.2)
    inside = crop_face(frame, (100, 50, 60, 60), pre)
    corner = crop_face(frame, (-10, -10, 60, 60), pre)  # box partly outside the frame
    assert inside.shape == corner.shape == (48, 48) and inside.dtype == np.uint8


def test_crop_equalises_only_when_the_model_says_so():
    frame = np.full((100, 100), 100, np.uint8)
    frame[40:60, 40:60] = 110
    raw = crop_face(frame, (20, 20, 60, 60), Preprocess(equalize_hist=False))
    eq = crop_face(frame, (20, 20, 60, 60), Preprocess(equalize_hist=True))
    assert raw.max() - raw.min() <= 10 < eq.max() - eq.min()
    assert Preprocess(equalize_hist=True).id != Preprocess().id


def test_tracker_keeps_ids_for_moving_faces_and_expires_old_tracks():
    tracker = IoUTracker(iou_threshold=0.3, max_age_ms=500)
    first = tracker.update([(10, 10, 50, 50), (200, 10, 50, 50)], now_ms=0)
    moved = tracker.update([(205, 12, 50, 50), (14, 12, 50, 50)], now_ms=100)
    assert moved == [first[1], first[0]]
    assert tracker.update([(14, 12, 50, 50)], now_ms=2000) != [first[0]]  # expired: a new track


def test_tracker_never_gives_one_track_to_two_boxes():
    tracker = IoUTracker()
    tracker.update([(10, 10, 50, 50)], 0)
    ids = tracker.update([(12, 10, 50, 50), (14, 10, 50, 50)], 50)
    assert len(set(ids)) == 2


def test_haar_finds_the_real_faces_of_the_demo_scene_at_reduced_scale():
    demo = AstronautDemo(fps=15)
    detector = HaarFaceDetector(detect_width=320)
    counts = [len(detector.detect(cv2.cvtColor(demo.frame(), cv2.COLOR_BGR2GRAY))) for _ in range(20)]
    assert min(counts) >= 1 and max(counts) == 2
    blank = np.full((480, 640), 128, np.uint8)
    assert detector.detect(blank) == []


def test_unknown_detector_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown face detector backend"):
        make_detector("yolo")
