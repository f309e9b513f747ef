"""Images made in the tests for uploads (shared.analyze, the dashboard's /api/analyze): a PNG
decompression bomb, and group photos of real faces at photo resolution."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge image (its zlib stream would inflate to gigabytes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(bytes(200_000)))
            + _png_chunk(b"IEND", b""))


def two_person_photo() -> np.ndarray:
    """Two real people side by side (the astronaut portrait and its mirror image), faces of ~190 px,
    on a plain wall with space between them (BGR, 960x560)."""
    from services.capture.demo import _PORTRAIT_CROP
    from skimage import data

    portrait = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w, h = _PORTRAIT_CROP
    head = cv2.resize(portrait[y:y + h, x:x + w], None, fx=1.9, fy=1.9, interpolation=cv2.INTER_CUBIC)
    hh, hw = head.shape[:2]
    photo = np.full((hh + 80, 2 * hw + 120, 3), (150, 160, 170), np.uint8)
    photo[40:40 + hh, 40:40 + hw] = head
    photo[40:40 + hh, 80 + hw:80 + 2 * hw] = cv2.flip(head, 1)
    return photo


def group_photo_jpeg(tiles: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.tile(two_person_photo(), (tiles, tiles, 1)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()
