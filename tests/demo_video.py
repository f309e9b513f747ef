"""A video file of the demo camera (the astronaut portrait, moving), for tests that capture from a file."""

from __future__ import annotations

import cv2

from services.capture.demo import AstronautDemo


def write_demo_video(path, frames: int = 45) -> None:
    demo = AstronautDemo(fps=15)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for _ in range(frames):
        writer.write(demo.frame())
    writer.release()
