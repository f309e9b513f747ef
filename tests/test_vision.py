"""Pure vision parts: each detector backend on real faces, aligned and framed crops, IoU tracking."""

import logging
import math
import sys

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from services.capture.demo import AstronautDemo
from shared.faces import HaarDetector, IoUTracker, YuNetDetector, make_detector, suppress_overlaps
from shared.framing import Framing, Square, offsets, square_for
from shared.model_runtime import Preprocess, crop_face
from shared.schemas import BBox
from shared.settings import DetectorSettings

try:
    import yuface  # noqa: F401

    HAVE_YUNET = True
except ImportError:
    HAVE_YUNET = False
needs_yunet = pytest.mark.skipif(not HAVE_YUNET, reason="the yuface wheel is not installed on this platform")
BACKENDS = [pytest.param("yunet", marks=needs_yunet), "haar"]


def _astronaut_gray() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)


# --- cropping ------------------------------------------------------------------------------------

def test_crop_has_model_size_and_keeps_geometry_at_borders():
    frame = np.arange(200 * 300, dtype=np.uint32).reshape(200, 300).astype(np.uint8)
    pre = Preprocess(input_size=48, margin=0.2)
    inside = crop_face(frame, BBox(x=100, y=50, w=60, h=60), pre)
    corner = crop_face(frame, BBox(x=0, y=0, w=60, h=60), pre)  # the square with its margin leaves the frame
    assert inside.shape == corner.shape == (48, 48) and inside.dtype == np.uint8


def test_crop_without_framing_is_the_box_square_as_before():
    """Old model directories (no framing) crop exactly the box's pixels, resized: today's behaviour."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320), dtype=np.uint8)
    crop = crop_face(frame, BBox(x=40, y=30, w=96, h=96), Preprocess())
    expected = cv2.resize(frame[30:126, 40:136], (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - expected).max() <= 1


def test_crop_equalises_only_when_the_model_says_so():
    frame = np.full((100, 100), 100, np.uint8)
    frame[40:60, 40:60] = 110
    raw = crop_face(frame, (20, 20, 60, 60), Preprocess(equalize_hist=False))
    eq = crop_face(frame, (20, 20, 60, 60), Preprocess(equalize_hist=True))
    assert raw.max() - raw.min() <= 10 < eq.max() - eq.min()
    assert Preprocess(equalize_hist=True).id != Preprocess().id


@pytest.mark.parametrize("change", [{"input_size": 64}, {"grayscale": False}, {"equalize_hist": True},
                                    {"margin": 0.1}, {"input_range": "0-1"}, {"network_size": 44},
                                    {"framing": {"yunet": Framing(reference="landmarks", side=2.7)}}])
def test_every_preprocess_field_changes_the_id(change):
    """The classifier counts faces cropped for another model by this id: any field that changes the
    crop or what the graph is fed must change it."""
    assert Preprocess(**change).id != Preprocess().id
    assert Preprocess(**change).id == Preprocess(**change).id


def test_framing_offsets_and_square_are_inverse():
    """A fit sample taken from a truth square maps the same detection back onto that square."""
    box = BBox(x=100, y=80, w=90, h=110)
    marks = ((120.0, 120.0), (170.0, 112.0), (146.0, 140.0), (126.0, 165.0), (166.0, 160.0))
    truth = Square(147.0, 150.0, 160.0)
    for reference in ("landmarks", "box"):
        side, dx, dy = offsets(reference, truth, box, marks)
        square = square_for(Framing(reference=reference, side=side, dx=dx, dy=dy), box, marks)
        assert square.cx == pytest.approx(truth.cx) and square.cy == pytest.approx(truth.cy)
        assert square.side == pytest.approx(truth.side)
    assert square_for(Framing(reference="landmarks", side=2.7), box, None) is None  # needs landmarks


@needs_yunet
def test_alignment_levels_the_eyes_of_a_rotated_face():
    """The astronaut turned by 20°, with her landmarks turned alike: the aligned crop matches the
    upright face's crop far better than the plain box crop does.

    The landmarks are carried through the known rotation rather than re-detected: yuface's
    landmarks barely follow a face's roll (20° of turn reads as about 1°, docs/detection.md), so
    this checks the alignment itself, which a backend with roll-aware landmarks gets in full."""
    gray = cv2.copyMakeBorder(_astronaut_gray(), 64, 64, 64, 64, cv2.BORDER_REPLICATE)
    detector = make_detector(DetectorSettings(detect_width=640))
    pre = Preprocess(framing={"yunet": Framing(reference="landmarks", side=2.75, dx=0.0, dy=0.32)})
    upright = detector.detect(gray)[0]
    reference = crop_face(gray, upright.box, pre, landmarks=upright.landmarks, backend="yunet")
    h, w = gray.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0)
    turned = cv2.warpAffine(gray, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    marks = [tuple(matrix @ (x, y, 1.0)) for x, y in upright.landmarks]
    (lx, ly), (rx, ry) = marks[:2]
    assert math.degrees(math.atan2(ry - ly, rx - lx)) == pytest.approx(-20 + math.degrees(
        math.atan2(upright.landmarks[1][1] - upright.landmarks[0][1], upright.landmarks[1][0] - upright.landmarks[0][0])))
    face = detector.detect(turned)[0]
    aligned = crop_face(turned, face.box, pre, landmarks=marks, backend="yunet")
    boxed = crop_face(turned, face.box, Preprocess(margin=0.1))

    def similarity(a, b):
        return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])

    assert similarity(aligned, reference) > 0.9
    assert similarity(aligned, reference) > similarity(boxed, reference) + 0.1


@needs_yunet
def test_roll_search_finds_a_tilted_face_with_landmarks_that_follow_its_tilt():
    """The astronaut turned by 20° and 30°: the upright pass reads her eye line as a few degrees
    (YuNet's landmarks barely follow roll), so her crop is not levelled; the roll search's turned
    pass sees her upright, and its landmarks, turned back, carry the tilt. Her aligned crop then
    matches the upright face's crop."""
    gray = cv2.copyMakeBorder(_astronaut_gray(), 64, 64, 64, 64, cv2.BORDER_REPLICATE)
    pre = Preprocess(framing={"yunet": Framing(reference="landmarks", side=2.75, dx=0.0, dy=0.32)})
    plain = make_detector(DetectorSettings(detect_width=640, roll_search="off"))
    rolling = make_detector(DetectorSettings(detect_width=640, roll_search="always", roll_search_deg=20))
    upright = rolling.detect(gray)
    assert len(upright) == 1 and upright == plain.detect(gray)  # an upright face keeps the upright pass
    reference = crop_face(gray, upright[0].box, pre, landmarks=upright[0].landmarks, backend="yunet")
    h, w = gray.shape

    def eye_line_deg(face) -> float:
        (lx, ly), (rx, ry) = face.landmarks[:2]
        return math.degrees(math.atan2(ry - ly, rx - lx))

    def similarity(a, b):
        return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])

    for angle in (20, 30):
        turned = cv2.warpAffine(gray, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h),
                                borderMode=cv2.BORDER_REPLICATE)
        before, after = plain.detect(turned), rolling.detect(turned)
        assert len(before) == len(after) == 1
        assert abs(eye_line_deg(before[0])) < 6  # counter-clockwise on screen is a negative eye line
        assert eye_line_deg(after[0]) == pytest.approx(-angle, abs=12)
        assert after[0].confidence > before[0].confidence
        cx, cy = after[0].box.x + after[0].box.w / 2, after[0].box.y + after[0].box.h / 2
        bx, by = before[0].box.x + before[0].box.w / 2, before[0].box.y + before[0].box.h / 2
        assert math.hypot(cx - bx, cy - by) < 0.25 * before[0].box.w  # the same face, in frame pixels
        aligned = crop_face(turned, after[0].box, pre, landmarks=after[0].landmarks, backend="yunet")
        unaligned = crop_face(turned, before[0].box, pre, landmarks=before[0].landmarks, backend="yunet")
        # 20°: the turned pass sees her exactly upright; 30°: 10° of tilt are left, still far better.
        assert similarity(aligned, reference) > similarity(unaligned, reference) + 0.3
        assert angle != 20 or similarity(aligned, reference) > 0.9


def test_a_detection_in_a_turned_copy_maps_back_to_the_frame():
    """Box: the upright bounding box of the turned box; landmarks: exactly turned back."""
    from shared.faces import Detection

    turn = cv2.getRotationMatrix2D((99.5, 79.5), 30, 1.0)
    inverse = cv2.invertAffineTransform(turn)
    marks = ((90.0, 70.0), (110.0, 70.0), (100.0, 80.0), (92.0, 92.0), (108.0, 92.0))
    found = Detection(BBox(x=80, y=60, w=40, h=40), 0.9, marks)
    back = found.turned_back(inverse, width=200, height=160)
    corners = np.array([[80, 60, 1], [120, 60, 1], [80, 100, 1], [120, 100, 1]], float) @ inverse.T
    assert (back.box.x, back.box.y) == (round(corners[:, 0].min()), round(corners[:, 1].min()))
    assert back.box.w == pytest.approx(40 * (math.cos(math.pi / 6) + math.sin(math.pi / 6)), abs=1.5)
    for (x, y), (bx, by) in zip(marks, back.landmarks):
        assert turn @ (bx, by, 1.0) == pytest.approx((x, y))
    assert back.confidence == 0.9
    away = np.array([[1.0, 0.0, -500.0], [0.0, 1.0, 0.0]])  # maps the box wholly left of the frame
    assert found.turned_back(away, width=200, height=160) is None


@needs_yunet
def test_roll_search_raises_recall_on_turned_fer_faces(fer_publictest):
    """100 real PublicTest faces turned 15° in composed frames at the live 320 px: the roll search
    finds clearly more of them (0.82 -> 0.94 on 600 faces, docs/detection.md), and only photos get
    it by default."""
    from trainer.framing import compose, match

    images = np.load(fer_publictest)["images"][:100]

    def recall(settings: DetectorSettings) -> float:
        detector = make_detector(settings)
        found = sum(match(truth, detector.detect(c.frame)) is not None
                    for c in compose(images, seed=1, angle_deg=15) for truth in c.truths)
        return found / len(images)

    assert DetectorSettings().roll_search == "photos"
    assert recall(DetectorSettings(roll_search="always")) >= recall(DetectorSettings()) + 0.05


def test_haar_has_no_roll_search_it_could_not_crop():
    """Haar reports no landmarks: a face found in a turned copy could not be cropped upright, so the
    setting leaves Haar as it is."""
    gray = _astronaut_gray()
    plain = make_detector(DetectorSettings(backend="haar", roll_search="off")).detect(gray)
    assert make_detector(DetectorSettings(backend="haar", roll_search="always")).detect(gray) == plain


# --- detectors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_finds_the_real_faces_of_the_demo_scene(backend):
    demo = AstronautDemo(fps=15)
    detector = make_detector(DetectorSettings(backend=backend))
    assert detector.name == backend
    frames = [cv2.cvtColor(demo.frame(), cv2.COLOR_BGR2GRAY) for _ in range(20)]
    found = [detector.detect(frame) for frame in frames]
    assert min(map(len, found)) >= 1 and max(map(len, found)) == 2
    first = found[0][0]
    assert 120 < first.box.x + first.box.w / 2 < 260  # the moving face starts on the left
    if backend == "yunet":
        assert all(0.5 <= f.confidence <= 1 and len(f.landmarks) == 5 for faces in found for f in faces)
        (lx, _), (rx, _) = first.landmarks[:2]
        assert first.box.x < lx < rx < first.box.x + first.box.w  # eyes inside the box, image-left first
    else:
        assert all(f.confidence is None and f.landmarks is None for faces in found for f in faces)
    assert detector.detect(np.full((480, 640), 128, np.uint8)) == []


@needs_yunet
def test_min_confidence_and_min_face_are_applied():
    gray = _astronaut_gray()
    assert make_detector(DetectorSettings(min_confidence=0.99)).detect(gray) == []
    assert make_detector(DetectorSettings(min_face=300)).detect(gray) == []
    assert len(make_detector(DetectorSettings()).detect(gray)) == 1


def test_yunet_falls_back_to_haar_with_a_clear_log_line(monkeypatch, caplog):
    """Where the wheel is missing (an aarch64 image, say) the service still starts, on Haar, and says so."""
    monkeypatch.setitem(sys.modules, "yuface", None)  # what `import yuface` meets on such a platform
    monkeypatch.setitem(sys.modules, "yuface.yuface", None)
    with caplog.at_level(logging.WARNING, logger="shared.faces"):
        detector = make_detector(DetectorSettings(backend="yunet"))
    assert isinstance(detector, HaarDetector) and detector.name == "haar"
    assert any("event=detector_fallback wanted=yunet using=haar" in r.getMessage() for r in caplog.records)


def test_unknown_detector_backend_is_a_clear_error():
    with pytest.raises(ValidationError, match="backend"):
        DetectorSettings(backend="yolo")


def test_overlapping_detections_are_suppressed():
    from shared.faces import Detection

    big = Detection(BBox(x=100, y=100, w=100, h=100), 0.9)
    part = Detection(BBox(x=100, y=100, w=60, h=100), 0.95)  # the same face cut by a tile edge
    other = Detection(BBox(x=300, y=100, w=100, h=100), 0.8)
    kept = suppress_overlaps([big, part, other])
    assert len(kept) == 2 and other in kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_photo_pass_finds_small_faces_that_the_live_width_misses(backend):
    """A 5x4 grid of the astronaut (20 faces of ~50 px in a 2560x2048 photo): the live path at 320 px
    sees 6-px faces, the photo pass finds them all."""
    head = cv2.resize(_astronaut_gray(), (256, 256), interpolation=cv2.INTER_AREA)
    photo = np.tile(cv2.copyMakeBorder(head, 128, 128, 128, 128, cv2.BORDER_REPLICATE), (4, 5))
    detector = make_detector(DetectorSettings(backend=backend))
    assert len(detector.detect(photo)) < 5
    found = detector.detect_photo(photo, min_face=24)
    centres = [(f.box.x + f.box.w / 2, f.box.y + f.box.h / 2) for f in found]
    for row in range(4):
        for column in range(5):
            cx, cy = 512 * column + 239, 512 * row + 187  # the face's centre in each cell
            assert any(abs(x - cx) < 30 and abs(y - cy) < 30 for x, y in centres), (row, column)
    assert len(found) <= 20 + (backend == "haar")  # the cascade may add one false positive, the CNN none


# --- tracking --------------------------------------------------------------------------------------

def _box(x, y, side=50):
    return BBox(x=x, y=y, w=side, h=side)


def test_tracker_keeps_ids_for_moving_faces_and_expires_old_tracks():
    tracker = IoUTracker(iou_threshold=0.3, max_age_ms=500)
    first = tracker.update([_box(10, 10), _box(200, 10)], now_ms=0)
    moved = tracker.update([_box(205, 12), _box(14, 12)], now_ms=100)
    assert moved == [first[1], first[0]]
    assert tracker.update([_box(14, 12)], now_ms=2000) != [first[0]]  # expired: a new track


def test_tracker_never_gives_one_track_to_two_boxes():
    tracker = IoUTracker()
    tracker.update([_box(10, 10)], 0)
    ids = tracker.update([_box(12, 10), _box(14, 10)], 50)
    assert len(set(ids)) == 2


def test_tracker_keeps_both_ids_when_faces_cross_and_one_is_hidden():
    """A walks right, B walks left at the same height; B is hidden behind A for five frames around
    the crossing. B must come out with its own id (it coasts on its velocity), and A keep A's."""
    tracker = IoUTracker(max_age_ms=1500)
    ids_a, ids_b = set(), set()
    for frame in range(30):
        t = frame * 66
        a, b = _box(40 + 12 * frame, 100), _box(400 - 12 * frame, 104)
        hidden = 13 <= frame <= 17
        ids = tracker.update([a] if hidden else [a, b], t)
        ids_a.add(ids[0])
        if not hidden:
            ids_b.add(ids[1])
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_detector_class_names_match_the_backend_setting():
    assert YuNetDetector.name == "yunet" and HaarDetector.name == "haar"
