"""Drawing a face's box and its caption on an image: the Analyze page and `emotion analyze --annotate`."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
DARK, LIGHT = (20, 20, 20), (250, 250, 250)


def line_style(image: np.ndarray) -> tuple[int, float]:
    """(line thickness, font scale) that read well at this image's width."""
    width = image.shape[1]
    return max(2, width // 300), max(0.5, width / 900)


def label_box(image: np.ndarray, x: int, y: int, w: int, h: int, text: str, colour: tuple[int, int, int],
              thickness: int, font_scale: float) -> None:
    """The box in `colour`, and `text` on a filled tab of the same colour above it (inside the image)."""
    cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, thickness)
    top = max(0, y - th - base - 6)
    cv2.rectangle(image, (x, top), (x + tw + 8, top + th + base + 6), colour, cv2.FILLED)
    # Dark ink on light colours, light ink on dark ones (BT.601 luma of the BGR colour).
    ink = DARK if 0.114 * colour[0] + 0.587 * colour[1] + 0.299 * colour[2] > 140 else LIGHT
    cv2.putText(image, text, (x + 4, top + th + 3), FONT, font_scale, ink, thickness, cv2.LINE_AA)
