"""shared.analyze: safe decoding of uploads (size, type, header dimensions, corruption) and face analysis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.model_runtime import read_metadata

from shared.analyze import (AnalyzeResult, CorruptImage, DecompressionBomb, ImageTooLarge, UnsupportedImage,
                            analyze_image, annotate, decode_image, image_size)
from shared.emotions import EMOTIONS
from tests.images import group_photo_jpeg, png_bomb
from tests.test_dashboard_support import face_png, served_model_dir  # noqa: F401

LIMITS = {"max_bytes": 8 * 1024 * 1024, "max_pixels": 40_000_000}


class FixedDetector:
    """Returns the same boxes for any image (the decoding and box mapping are what is under test)."""

    name = "fixed"

    def __init__(self, boxes):
        from shared.faces import Detection
        from shared.schemas import BBox
        from shared.settings import DetectorSettings

        self.found = [Detection(BBox(x=x, y=y, w=w, h=h), 0.9) for x, y, w, h in boxes]
        self.settings = DetectorSettings()
        self.seen_shape = None

    def detect_photo(self, gray, min_face=None):
        self.seen_shape = gray.shape
        return self.found


class UniformModel:
    version = "uniform-test"

    def __init__(self):
        from shared.model_runtime import Preprocess

        self.preprocess = Preprocess()

    def predict(self, crops):
        out = np.full((len(crops), len(EMOTIONS)), 0.1)
        out[:, EMOTIONS.index("happy")] = 0.4
        return out


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_header_dimensions_for_every_supported_format(ext):
    """Dimensions come from the header alone, for each format OpenCV decodes."""
    image = np.zeros((37, 53, 3), np.uint8)
    ok, encoded = cv2.imencode(ext, image)
    assert ok
    fmt, width, height = image_size(encoded.tobytes())
    assert (width, height) == (53, 37)
    assert fmt == {".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".webp": "webp"}[ext]


def test_progressive_jpeg_header_is_read():
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and image_size(encoded.tobytes())[1:] == (80, 64)


def test_decompression_bomb_refused_before_decoding(monkeypatch):
    """A header claiming 10^10 pixels is refused (422) without the decoder ever running."""
    def no_decode(*_args, **_kwargs):
        raise AssertionError("imdecode must not run on a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(DecompressionBomb) as info:
        decode_image(png_bomb(), **LIMITS)
    assert info.value.status == 422


def test_too_large_refused_before_anything_else():
    with pytest.raises(ImageTooLarge) as info:
        decode_image(b"\xff\xd8\xff" + bytes(1025), max_bytes=1024, max_pixels=10**6)
    assert info.value.status == 413


@pytest.mark.parametrize("data", [b"hello world", b"GIF89a" + bytes(20), b"%PDF-1.4 ...", b"<svg></svg>"])
def test_non_images_are_unsupported(data):
    with pytest.raises(UnsupportedImage) as info:
        decode_image(data, **LIMITS)
    assert info.value.status == 415


def test_empty_and_corrupt_uploads_are_400(face_png):  # noqa: F811
    with pytest.raises(CorruptImage):
        decode_image(b"", **LIMITS)
    with pytest.raises(CorruptImage):
        decode_image(face_png.read_bytes()[:400], **LIMITS)  # header intact, pixel data cut
    with pytest.raises(CorruptImage):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(8), **LIMITS)  # no IHDR


def test_large_jpeg_is_decoded_reduced_and_boxes_map_back():
    """A 12 MP photo is decoded at half size; boxes are reported in the upload's own pixels."""
    image = np.full((3000, 4000, 3), 128, np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    detector = FixedDetector([(100, 50, 200, 200)])
    result = analyze_image(encoded.tobytes(), detector, UniformModel(), **LIMITS)
    assert detector.seen_shape == (1500, 2000)
    assert (result.width, result.height) == (4000, 3000)
    face = result.faces[0]
    assert (face.box.x, face.box.y, face.box.w, face.box.h) == (200, 100, 400, 400)
    assert face.label == "happy" and list(face.probabilities) == list(EMOTIONS)
    assert face.detection_confidence == 0.9


def test_real_face_with_the_served_model(face_png, served_model_dir):  # noqa: F811
    """Plumbing check on a real photo: one face found, seven probabilities summing to 1 (random weights)."""
    from shared.faces import make_detector
    from shared.model_runtime import EmotionModel
    from shared.settings import DetectorSettings

    data = face_png.read_bytes()
    result = analyze_image(data, make_detector(DetectorSettings()), EmotionModel(served_model_dir), **LIMITS)
    assert isinstance(result, AnalyzeResult) and result.model_version == read_metadata(served_model_dir).version
    assert len(result.faces) == 1
    face = result.faces[0]
    assert abs(sum(face.probabilities.values()) - 1) < 1e-3
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert 150 < face.box.x < 200 and 40 < face.box.y < 100  # the astronaut's face, upper middle
    decoded = decode_image(data, **LIMITS)
    drawn = annotate(decoded, result)
    assert drawn.shape == decoded.image.shape and not np.array_equal(drawn, decoded.image)


@pytest.mark.parametrize("tiles", [2, 5])
def test_group_photo_is_analysed_at_photo_resolution(tiles, served_model_dir):  # noqa: F811
    """A 2x2 tile of a two-person photo has 8 faces and a 5x5 tile 50; all are found (the live
    stream's 320-px width would leave the 5x5 tile's faces at 13 px)."""
    from shared.faces import make_detector
    from shared.model_runtime import EmotionModel
    from shared.settings import DetectorSettings

    result = analyze_image(group_photo_jpeg(tiles), make_detector(DetectorSettings()), EmotionModel(served_model_dir),
                           **LIMITS)
    assert len(result.faces) == 2 * tiles * tiles
    sides = sorted(face.box.w for face in result.faces)
    assert sides[-1] < 1.5 * sides[0]  # every box is a face, none a fragment or a merger
