"""Analyse one uploaded image: decode it safely, find faces, classify each one.

Used by the dashboard's Analyze page and its `POST /api/analyze` route. Uploaded bytes are hostile
until proven otherwise, so the checks run from cheapest to dearest:

1. size: more than `max_bytes` is refused before anything looks at the content (413);
2. type: the magic bytes must be JPEG, PNG, BMP or WebP, the formats OpenCV decodes (415);
3. dimensions: read from the header alone (a few hundred bytes parsed, no pixel allocated); more than
   `max_pixels` is a decompression bomb and is refused before decoding (422);
4. decode: large images are decoded reduced (JPEG scales in the DCT, so memory stays small), and a
   decoder failure is a corrupt file (400).

Nothing here fetches a URL: the caller hands over bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.drawing import label_box, line_style
from shared.emotions import EMOTIONS
from shared.faces import FaceDetector
from shared.model_runtime import crop_face
from shared.schemas import BBox

# Images are analysed at no more than this many pixels; bigger ones are decoded at 1/2, 1/4 or 1/8 scale.
WORK_PIXELS = 4_000_000
_REDUCED = ((1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
            (8, cv2.IMREAD_REDUCED_COLOR_8))
# JPEG start-of-frame markers (SOF0..SOF15 except DHT, JPG and DAC) carry the frame's dimensions.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class AnalyzeError(ValueError):
    """An upload that cannot be analysed; `status` is the HTTP status that describes why."""

    status = 400


class ImageTooLarge(AnalyzeError):
    status = 413


class UnsupportedImage(AnalyzeError):
    status = 415


class CorruptImage(AnalyzeError):
    status = 400


class DecompressionBomb(AnalyzeError):
    status = 422


class FaceResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    box: BBox = Field(description="in pixels of the uploaded image")
    detection_confidence: float | None = Field(None, ge=0, le=1, description="the face detector's score")
    label: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float] = Field(description="emotion -> probability, in FER order")


class AnalyzeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faces: list[FaceResult]
    model_version: str = Field(description="the model that answered")
    model_role: str | None = Field(None, description="its role (accurate, fast) when it was chosen by role")
    tta: str = Field("none", description="test-time augmentation used: none, flip or ten-crop")
    width: int = Field(gt=0, description="width of the uploaded image")
    height: int = Field(gt=0)
    format: str


@dataclass(frozen=True)
class DecodedImage:
    """A decoded BGR image and the factor it was reduced by (1, 2, 4 or 8) from the upload's size."""

    image: np.ndarray
    scale: int
    width: int
    height: int
    format: str


# --- header parsing: dimensions without decoding -----------------------------------------------

def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise CorruptImage("PNG has no IHDR header")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise CorruptImage("JPEG marker structure is broken")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise CorruptImage("JPEG segment with an invalid length")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise CorruptImage("JPEG has no frame header (SOF)")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise CorruptImage("BMP header is truncated")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise CorruptImage("WebP header is truncated or unknown")


_SIZE_READERS = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "webp": _webp_size}


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header only; raises UnsupportedImage or CorruptImage."""
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage("not a supported image: upload a JPEG, PNG, BMP or WebP file")
    width, height = _SIZE_READERS[fmt](data)
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{fmt.upper()} header gives an empty image ({width}x{height})")
    return fmt, width, height


# --- decoding and analysis ---------------------------------------------------------------------

def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Validate and decode uploaded bytes (see the module docstring for the order of the checks)."""
    if not data:
        raise CorruptImage("the upload is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    fmt, width, height = image_size(data)
    if width * height > max_pixels:
        raise DecompressionBomb(f"image of {width}x{height} = {width * height} pixels exceeds the limit of "
                                f"{max_pixels} pixels")
    scale, flag = next(((s, f) for s, f in _REDUCED if width * height / (s * s) <= WORK_PIXELS), _REDUCED[-1])
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None or image.size == 0:
        raise CorruptImage(f"the {fmt.upper()} file could not be decoded (truncated or corrupt)")
    # The decoder honours EXIF orientation, which may swap the sides: report the decoded geometry.
    if (image.shape[1] > image.shape[0]) != (width > height) and width != height:
        width, height = height, width
    return DecodedImage(image=image, scale=scale, width=width, height=height, format=fmt)


def analyze_decoded(decoded: DecodedImage, detector: FaceDetector, model) -> AnalyzeResult:
    """Faces and their emotion probabilities in an already decoded image.

    A photo is searched at its own resolution (`detect_photo`: tiles and a pyramid), not at the live
    stream's detect width, so the small faces of a group photo are found; `min_face` stays in the
    upload's pixels.
    """
    gray = cv2.cvtColor(decoded.image, cv2.COLOR_BGR2GRAY)
    found = detector.detect_photo(gray, max(8, detector.settings.min_face // decoded.scale))
    faces: list[FaceResult] = []
    if found:
        crops = np.stack([crop_face(gray, face.box, model.preprocess, landmarks=face.landmarks,
                                    backend=detector.name) for face in found])
        probabilities = np.asarray(model.predict(crops), dtype=np.float64)
        s = decoded.scale
        for face, row in zip(found, probabilities):
            box = BBox(x=face.box.x * s, y=face.box.y * s, w=face.box.w * s, h=face.box.h * s)
            best = int(np.argmax(row))
            faces.append(FaceResult(box=box, detection_confidence=face.confidence, label=EMOTIONS[best],
                                    confidence=float(min(1.0, max(0.0, row[best]))),
                                    probabilities={e: round(float(p), 6) for e, p in zip(EMOTIONS, row)}))
    return AnalyzeResult(faces=faces, model_version=model.version, model_role=getattr(model, "role", None),
                         tta=getattr(model, "tta", "none"), width=decoded.width, height=decoded.height,
                         format=decoded.format)


def analyze_image(data: bytes, detector: FaceDetector, model, max_bytes: int, max_pixels: int) -> AnalyzeResult:
    """Decode `data` safely and classify every face in it; raises an AnalyzeError subclass on bad input."""
    return analyze_decoded(decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels), detector, model)


def annotate(decoded: DecodedImage, result: AnalyzeResult) -> np.ndarray:
    """A copy of the decoded image with each face's box, label and confidence drawn on it."""
    image = decoded.image.copy()
    thickness, font_scale = line_style(image)
    for index, face in enumerate(result.faces):
        x, y = face.box.x // decoded.scale, face.box.y // decoded.scale
        w, h = face.box.w // decoded.scale, face.box.h // decoded.scale
        label_box(image, x, y, w, h, f"#{index + 1} {face.label} {face.confidence:.0%}", (80, 200, 120), thickness,
                  font_scale)
    return image
