"""Demo sources that need no camera: real faces composed into 640x480 frames at run time.

`demo`: the public-domain astronaut portrait shipped with scikit-image (Eileen Collins, NASA),
moving across the frame while a smooth warp pulls the mouth corners up or down and lifts the brows,
so the expression drifts between smiling, neutral and frowning; a mirrored second face comes and goes.

`demo:PATH`: faces from a FER-2013 archive (.npz in the ../shared format), two at a time, each shown
for two seconds; their dataset labels are known, which makes the demo a rough live check.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480
# Face geometry in the astronaut portrait (512x512), measured with the Haar cascade: box (176, 65, 98, 98).
_PORTRAIT_CROP = (116, 15, 220, 250)  # x, y, w, h of the head-and-shoulders region we paste
_MOUTH = (225 - 116, 143 - 15)  # mouth centre inside the crop
_MOUTH_HALF_WIDTH = 19
_BROWS_Y = 95 - 15


def _background(rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(60, 150, WIDTH, dtype=np.float32)[None, :].repeat(HEIGHT, 0)
    ramp += np.linspace(0, 40, HEIGHT, dtype=np.float32)[:, None]
    noise = rng.normal(0, 3, (HEIGHT, WIDTH)).astype(np.float32)
    gray = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    return cv2.merge([gray, (gray * 0.95).astype(np.uint8), (gray * 0.85).astype(np.uint8)])


class _ExpressionWarp:
    """Remap grids that move the mouth corners (smile>0 up, <0 down) and the brows (brows>0 up).

    The displacement is smile and brows times fixed bumps around the mouth corners and the brows, so the
    bumps are computed once per face size; a frame only scales and adds them (the exponentials of every
    frame were most of a demo camera's cost: eight of them used a core beside the pipeline they feed)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        h, w = shape
        self.xs, self.ys = np.mgrid[0:h, 0:w].astype(np.float32)[::-1]
        mx, my = _MOUTH
        self.mouth = sum(np.exp(-(((self.xs - (mx + side * _MOUTH_HALF_WIDTH)) / 9.0) ** 2
                                  + ((self.ys - my) / 7.0) ** 2)) for side in (-1, 1)).astype(np.float32)
        self.brows = np.exp(-(((self.xs - mx) / 40.0) ** 2 + ((self.ys - _BROWS_Y) / 8.0) ** 2)).astype(np.float32)

    def maps(self, smile: float, brows: float) -> tuple[np.ndarray, np.ndarray]:
        # remap samples from (x, y + dy): content moves up by dy.
        return self.xs, self.ys + (smile * 6.0) * self.mouth + (brows * 5.0) * self.brows


class AstronautDemo:
    """Endless frames; `t` advances by 1/fps per frame so the scene is deterministic for a given fps."""

    def __init__(self, fps: float = 15.0, seed: int = 0) -> None:
        from skimage import data as skdata

        portrait = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
        x, y, w, h = _PORTRAIT_CROP
        self.portrait = portrait[y:y + h, x:x + w].copy()
        self.fps = fps
        self.background = _background(np.random.default_rng(seed))
        self.warp = _ExpressionWarp(self.portrait.shape[:2])
        self.frame_index = 0

    def frame(self) -> np.ndarray:
        t = self.frame_index / self.fps
        self.frame_index += 1
        canvas = self.background.copy()
        smile = math.sin(2 * math.pi * t / 8.0)
        brows = max(0.0, math.sin(2 * math.pi * t / 11.0 + 1.0))
        map_x, map_y = self.warp.maps(smile, brows)
        face = cv2.remap(self.portrait, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        scale = 1.0 + 0.15 * math.sin(2 * math.pi * t / 13.0)
        face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        fx = int(40 + (WIDTH / 2 - face.shape[1] - 40) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 10.0)))
        fy = int(20 + (HEIGHT - face.shape[0] - 40) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 7.0)))
        _paste(canvas, face, fx, fy)
        if math.sin(2 * math.pi * t / 20.0) > -0.3:  # a second, mirrored face for two thirds of the time
            other = cv2.flip(cv2.remap(self.portrait, *self.warp.maps(-smile, 0.0),
                                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), 1)
            other = cv2.resize(other, None, fx=0.8, fy=0.8)
            _paste(canvas, other, WIDTH - other.shape[1] - 30, HEIGHT - other.shape[0] - 30)
        return canvas

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.frame()


class FerDemo:
    """Two FER-2013 faces at a time, upscaled with a border of context so a face detector finds them."""

    def __init__(self, archive: Path, fps: float = 15.0, seconds_per_face: float = 2.0, seed: int = 0) -> None:
        data = np.load(archive, allow_pickle=False)
        self.images, self.labels = data["images"], data["labels"]
        self.order = np.random.default_rng(seed).permutation(len(self.images))
        self.frames_per_face = max(1, int(fps * seconds_per_face))
        self.background = _background(np.random.default_rng(seed))
        self.frame_index = 0

    def _face(self, slot: int) -> np.ndarray:
        index = self.order[(self.frame_index // self.frames_per_face * 2 + slot) % len(self.order)]
        face = cv2.resize(self.images[index], (160, 160), interpolation=cv2.INTER_CUBIC)
        face = cv2.copyMakeBorder(face, 40, 40, 40, 40, cv2.BORDER_REPLICATE)
        return cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)

    def frame(self) -> np.ndarray:
        canvas = self.background.copy()
        _paste(canvas, self._face(0), 40, 120)
        _paste(canvas, self._face(1), 360, 120)
        self.frame_index += 1
        return canvas

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.frame()


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    h = min(image.shape[0], canvas.shape[0] - y)
    w = min(image.shape[1], canvas.shape[1] - x)
    if h > 0 and w > 0:
        canvas[y:y + h, x:x + w] = image[:h, :w]
