"""Detector: frames per second of `FaceFinder.process` on one core, and detection recall on FER-2013 faces.

Speed: demo-scene frames (the astronaut portrait, one or two faces) at 640x480, and the same scene
scaled 1.5x into a 1280x720 frame, JPEG-encoded exactly as capture publishes them; each frame goes
through `FaceFinder.process` (JPEG decode + Haar detection at the configured detect_width + tracking
+ crops + FaceMessage building) with `cv2.setNumThreads(1)`.

Recall: FER-2013 PublicTest faces composed two per 640x480 frame the way the `demo:` source does
(each 48x48 face upscaled to 160x160 with a 40-pixel replicated border); a face counts as found when
a detected box overlaps its 160x160 square with IoU >= 0.3. Boxes overlapping no face are counted
as false positives.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import FER_PUBLICTEST, format_table, load_fer, median, serving_preprocess
from shared.faces import iou, make_detector
from shared.model_runtime import ModelError, Preprocess
from shared.schemas import FrameMessage
from shared.settings import Settings

RESOLUTIONS = ((640, 480), (1280, 720))
FACE_SIDE, FACE_BORDER = 160, 40
FER_SLOTS = ((40, 120), (360, 120))  # where FerDemo pastes its two faces (top-left of the bordered face)
IOU_FOUND = 0.3


def _frames(width: int, height: int, count: int) -> list[np.ndarray]:
    from services.capture.demo import AstronautDemo, _background

    demo = AstronautDemo(fps=15.0)
    frames = []
    if (width, height) == (640, 480):
        base = None
    else:
        base = cv2.resize(_background(np.random.default_rng(1)), (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(count):
        frame = demo.frame()
        demo.frame_index += 4  # a wider spread of poses and expressions than consecutive frames
        if base is not None:
            scale = min(width / 640, height / 480)
            scaled = cv2.resize(frame, (int(640 * scale), int(480 * scale)), interpolation=cv2.INTER_LINEAR)
            canvas = base.copy()
            x0, y0 = (width - scaled.shape[1]) // 2, (height - scaled.shape[0]) // 2
            canvas[y0:y0 + scaled.shape[0], x0:x0 + scaled.shape[1]] = scaled
            frame = canvas
        frames.append(frame)
    return frames


def _messages(frames: list[np.ndarray], camera_id: str, quality: int) -> list[FrameMessage]:
    now = int(time.time() * 1000)
    messages = []
    for index, frame in enumerate(frames):
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        messages.append(FrameMessage(camera_id=camera_id, session_id="bench", frame_id=index,
                                     captured_ms=now + index * 66, width=frame.shape[1], height=frame.shape[0],
                                     jpeg=jpeg.tobytes()))
    return messages


def _finder(settings: Settings, preprocess: Preprocess):
    from services.detector.service import FaceFinder

    d = settings.detector
    detector = make_detector(d.backend, detect_width=d.detect_width, min_face=d.min_face,
                             scale_factor=d.scale_factor, min_neighbors=d.min_neighbors)
    return FaceFinder(detector, d, preprocess)


def _speed(settings: Settings, preprocess: Preprocess, width: int, height: int, frames: int, repeats: int) -> dict:
    messages = _messages(_frames(width, height, frames), f"bench{width}", settings.capture.jpeg_quality)
    finder = _finder(settings, preprocess)
    finder.process(messages[:2])  # warm up
    seconds, faces = [], 0
    for _ in range(repeats):
        finder.trackers.clear()
        started = time.perf_counter()
        faces = sum(len(finder.process([message]).faces) for message in messages)
        seconds.append(time.perf_counter() - started)
    rate = frames / median(seconds)
    return {"resolution": f"{width}x{height}", "frames": frames, "repeats": repeats,
            "frames_per_s": round(rate, 1), "ms_per_frame": round(1000 / rate, 2),
            "runs_frames_per_s": [round(frames / s, 1) for s in seconds], "faces_per_frame": round(faces / frames, 2)}


def _recall(settings: Settings, preprocess: Preprocess, images: np.ndarray) -> dict:
    from services.capture.demo import _background, _paste

    background = _background(np.random.default_rng(0))
    finder = _finder(settings, preprocess)
    found = false_positives = frames = 0
    started = time.perf_counter()
    quality = settings.capture.jpeg_quality
    for start in range(0, len(images), len(FER_SLOTS)):
        group = images[start:start + len(FER_SLOTS)]
        canvas = background.copy()
        truths = []
        for image, (x, y) in zip(group, FER_SLOTS):
            face = cv2.resize(image, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
            face = cv2.copyMakeBorder(face, FACE_BORDER, FACE_BORDER, FACE_BORDER, FACE_BORDER, cv2.BORDER_REPLICATE)
            _paste(canvas, cv2.cvtColor(face, cv2.COLOR_GRAY2BGR), x, y)
            truths.append((x + FACE_BORDER, y + FACE_BORDER, FACE_SIDE, FACE_SIDE))
        message = _messages([canvas], "recall", quality)[0].model_copy(update={"frame_id": frames})
        boxes = [(f.bbox.x, f.bbox.y, f.bbox.w, f.bbox.h) for f in finder.process([message]).faces]
        frames += 1
        found += sum(1 for truth in truths if any(iou(truth, box) >= IOU_FOUND for box in boxes))
        false_positives += sum(1 for box in boxes if all(iou(truth, box) < IOU_FOUND for truth in truths))
    return {"faces": int(len(images)), "frames": frames, "found": found,
            "recall": round(found / len(images), 4) if len(images) else None,
            "false_positives": false_positives, "iou_threshold": IOU_FOUND,
            "seconds": round(time.perf_counter() - started, 1)}


def run_detector_bench(settings: Settings, *, frames: int = 60, repeats: int = 3, recall_faces: int = 600,
                       fer_path: Path | None = None) -> dict:
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        try:
            preprocess = serving_preprocess(settings, None)
        except ModelError:
            preprocess = Preprocess()  # detection speed does not depend on the model; crops use the defaults
        speed = [_speed(settings, preprocess, w, h, frames, repeats) for w, h in RESOLUTIONS]
        recall: dict = {"skipped": "recall_faces is 0"}
        fer_path = fer_path or FER_PUBLICTEST
        if recall_faces:
            fer = load_fer(fer_path)
            if fer is None:
                recall = {"skipped": f"FER-2013 archive not found at {fer_path}"}
            else:
                order = np.random.default_rng(0).permutation(len(fer[0]))[:recall_faces]
                recall = _recall(settings, preprocess, fer[0][order])
    finally:
        cv2.setNumThreads(previous_threads)
    by_res = {row["resolution"]: row for row in speed}
    return {
        "benchmark": "detector",
        "backend": settings.detector.backend,
        "detect_width": settings.detector.detect_width,
        "min_face": settings.detector.min_face,
        "opencv_threads": 1,
        "frames_per_s_640x480": by_res["640x480"]["frames_per_s"],
        "frames_per_s_1280x720": by_res["1280x720"]["frames_per_s"],
        "target_frames_per_s_640x480": 30,
        "recall": recall.get("recall"),
        "recall_detail": recall,
        "table": speed,
    }


def table(result: dict) -> str:
    rows = [(r["resolution"], r["frames_per_s"], r["ms_per_frame"], r["faces_per_frame"]) for r in result["table"]]
    head = (f"detector {result['backend']} at detect_width={result['detect_width']}, one OpenCV thread; "
            f"medians of {result['table'][0]['repeats']} runs")
    recall = result["recall_detail"]
    tail = (f"recall on {recall['faces']} FER-2013 PublicTest faces: {recall['recall']:.3f} "
            f"({recall['found']} found, {recall['false_positives']} false positives)"
            if "recall" in recall else f"recall: skipped ({recall['skipped']})")
    return head + "\n" + format_table(("frame", "frames/s", "ms/frame", "faces/frame"), rows) + "\n" + tail
