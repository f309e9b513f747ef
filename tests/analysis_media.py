"""Media made in the tests for `emotion analyze`: real faces pasted on moving backgrounds.

The face is the public-domain astronaut portrait shipped with scikit-image (no download), the same
as the demo camera's; a mirrored copy is the second face. Every frame says where it put each face,
so a test can check what the analysis found against the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480
HEAD = (116, 15, 220, 250)  # x, y, w, h of the head and shoulders in the 512x512 portrait


@dataclass(frozen=True)
class Pasted:
    x: int
    y: int
    w: int
    h: int

    def contains_centre_of(self, box: dict) -> bool:
        cx, cy = box["x"] + box["w"] / 2, box["y"] + box["h"] / 2
        return self.x <= cx <= self.x + self.w and self.y <= cy <= self.y + self.h


def portrait(scale: float = 0.75, mirrored: bool = False) -> np.ndarray:
    from skimage import data

    x, y, w, h = HEAD
    head = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[y:y + h, x:x + w]
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.flip(head, 1) if mirrored else head


def background(t: float, seed: int = 0) -> np.ndarray:
    """A textured background that scrolls and changes brightness with t."""
    rng = np.random.default_rng(seed)
    tile = cv2.resize(rng.integers(40, 200, (60, 80), dtype=np.uint8), (WIDTH * 2, HEIGHT * 2),
                      interpolation=cv2.INTER_CUBIC)
    shift = int(40 * t) % WIDTH
    gray = tile[:HEIGHT, shift:shift + WIDTH].astype(np.float32) * (0.8 + 0.2 * math.sin(t))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    return cv2.merge([gray, (gray * 0.9).astype(np.uint8), (gray * 0.8).astype(np.uint8)])


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> Pasted:
    h, w = image.shape[:2]
    canvas[y:y + h, x:x + w] = image
    return Pasted(x, y, w, h)


def scene(index: int, fps: float) -> tuple[np.ndarray, list[Pasted]]:
    """Frame `index`: two faces moving to and fro over a moving background (the left one sideways, the
    right one up and down), never leaving the frame however long the video."""
    t = index / fps
    canvas = background(t)
    left, right = portrait(0.7), portrait(0.6, mirrored=True)
    faces = [paste(canvas, left, 20 + int(120 * (0.5 - 0.5 * math.cos(0.8 * t))), 40 + int(10 * math.sin(t))),
             paste(canvas, right, WIDTH - right.shape[1] - 20, 20 + int(80 * (0.5 - 0.5 * math.cos(0.6 * t))))]
    return canvas, faces


def write_video(path: Path, frames: int = 30, fps: float = 15.0) -> list[list[Pasted]]:
    """An mp4 of `frames` scenes; returns where the faces are in each frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (WIDTH, HEIGHT))
    assert writer.isOpened()
    truth = []
    for index in range(frames):
        canvas, faces = scene(index, fps)
        writer.write(canvas)
        truth.append(faces)
    writer.release()
    return truth


def count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def write_photos(folder: Path) -> dict[str, int]:
    """Photos with 0, 1 and 2 faces and one file that is not an image; returns faces per file name."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, faces in (("a-two.jpg", 2), ("b-one.png", 1), ("c-none.jpg", 0)):
        canvas = background(len(expected) * 1.7, seed=len(expected))
        if faces >= 1:
            paste(canvas, portrait(0.7), 40, 60)
        if faces == 2:
            paste(canvas, portrait(0.6, mirrored=True), 380, 120)
        assert cv2.imwrite(str(folder / name), canvas)
        expected[name] = faces
    (folder / "d-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body")
    return expected
