"""Detector: every backend in one run. Frames/s of `FaceFinder.process` on one core, recall and the
served model's accuracy on FER-2013 faces composed into frames, and id switches of the tracker.

Speed: demo-scene frames (the astronaut portrait, one or two faces) at 640x480, and the same scene
scaled 1.5x into a 1280x720 frame, JPEG-encoded exactly as capture publishes them; each frame goes
through `FaceFinder.process` (JPEG decode + detection at the configured detect_width + tracking +
aligned crops + FaceMessage building) with one OpenCV thread and one CNN thread.

Recall: FER-2013 PublicTest faces composed two per 640x480 frame (`trainer.framing.compose`: each
48x48 face scaled to 140-180 px, feathered into the demo's face-free backdrop), upright and turned
±15°; a face is found when a detection overlaps its square with IoU >= 0.3 (for a turned face, the
upright square that bounds it, 1.5x the face's area at 15°: a box drawn tight on the face itself
falls under 0.3 there, so each row also counts a face found when a detection overlaps either that
square or the face's own square turned upright, `recall_either_square`). The served model then
classifies each found face from the crop the detector service would publish (detect -> align ->
crop with the model's calibrated framing -> classify), and its top-1 is compared with its top-1 on
the original 48x48 crops of the same faces. Both on the live path (`detect`, at detect_width) and on
the photo path (`detect_photo`: uploads on the Analyze page and /api/analyze, with the roll search
that `roll_search=photos`, the default, gives them).

Tracking: `tracking_scene` renders four real faces (the astronaut portrait, two of them mirrored)
moving on straight lines that cross, with the later face hiding the earlier one; detections are
matched to the true faces by IoU and every change of a true face's track id is an id switch (a
swap when the new id had been another face's; otherwise a fresh id after the face went undetected
for longer than `track_max_age_ms`).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import FER_PUBLICTEST, format_table, load_fer, median, serving_model_dir
from shared.faces import BACKENDS, make_detector
from shared.model_runtime import EmotionModel, ModelError, Preprocess, crop_face, read_metadata
from shared.schemas import BBox, FrameMessage
from shared.settings import Settings

RESOLUTIONS = ((640, 480), (1280, 720))
ANGLES = (0.0, 15.0, -15.0)
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


def _messages(frames: list[np.ndarray], camera_id: str, quality: int, start_ms: int | None = None) -> list[FrameMessage]:
    now = start_ms or int(time.time() * 1000)
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

    return FaceFinder(make_detector(settings.detector), settings.detector, preprocess)


def _speed(settings: Settings, preprocess: Preprocess, width: int, height: int, frames: int, repeats: int) -> dict:
    messages = _messages(_frames(width, height, frames), f"bench{width}", settings.capture.jpeg_quality)
    finder = _finder(settings, preprocess)
    finder.process(messages[:2])  # warm up
    seconds, cpu_seconds, faces = [], [], 0
    for _ in range(repeats):
        finder.trackers.clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        faces = sum(len(finder.process([message]).faces) for message in messages)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    rate = frames / median(seconds)
    # CPU seconds of this (single-threaded) process: frames per second of one core even when other
    # work shares the machine, where wall time would also count the waits for a core.
    cpu_rate = frames / median(cpu_seconds)
    return {"resolution": f"{width}x{height}", "frames": frames, "repeats": repeats,
            "frames_per_s": round(rate, 1), "ms_per_frame": round(1000 / rate, 2),
            "frames_per_cpu_s": round(cpu_rate, 1),
            "runs_frames_per_s": [round(frames / s, 1) for s in seconds], "faces_per_frame": round(faces / frames, 2)}


def _recall(settings: Settings, model: EmotionModel | None, images: np.ndarray, labels: np.ndarray) -> dict:
    """Recall and serving-path top-1 for upright and turned faces (see the module docstring): on the
    live path (`detect`, at detect_width) and on the photo path (`detect_photo`, what the Analyze page
    and /api/analyze run on an upload)."""
    detector = make_detector(settings.detector)
    preprocess = model.preprocess if model else Preprocess()
    original = model.predict(images).argmax(axis=1) == labels if model else None
    started = time.perf_counter()
    rows = _recall_rows(detector.detect, detector.name, model, preprocess, images, labels, original)
    photo_rows = _recall_rows(detector.detect_photo, detector.name, model, preprocess, images, labels, original)
    upright = rows[0]
    total = sum(r["found"] for r in rows)
    return {"faces": int(len(images)), "recall": upright["recall"], "found": upright["found"],
            "false_positives": upright["false_positives"],
            "recall_all_angles": round(total / (len(images) * len(ANGLES)), 4),
            "top1_original": round(float(original.mean()), 4) if model else None,
            "framing": detector.name in preprocess.framing, "iou_threshold": IOU_FOUND,
            "roll_search": settings.detector.roll_search, "roll_search_deg": settings.detector.roll_search_deg,
            "by_angle": rows, "photo_by_angle": photo_rows, "seconds": round(time.perf_counter() - started, 1)}


def _recall_rows(detect, backend: str, model: EmotionModel | None, preprocess: Preprocess, images: np.ndarray,
                 labels: np.ndarray, original: np.ndarray | None) -> list[dict]:
    from shared.framing import Square
    from trainer.framing import compose, match

    rows = []
    for angle in ANGLES:
        found, found_either, false_positives, correct, indices = 0, 0, 0, 0, []
        for frame_index, composed in enumerate(compose(images, seed=1, angle_deg=angle)):
            detections = detect(composed.frame)
            matched = [match(truth, detections) for truth in composed.truths]
            false_positives += sum(1 for d in detections if all(d is not m for m in matched))
            found_either += sum(1 for truth, detection in zip(composed.truths, matched)
                                if detection is not None
                                or match(Square(truth.cx, truth.cy, truth.side, 0.0), detections) is not None)
            for slot, detection in enumerate(matched):
                if detection is None:
                    continue
                found += 1
                index = 2 * frame_index + slot
                indices.append(index)
                if model is not None:
                    crop = crop_face(composed.frame, detection.box, preprocess, landmarks=detection.landmarks,
                                     backend=backend)
                    correct += int(model.predict(crop[None]).argmax() == labels[index])
        row = {"angle": angle, "faces": int(len(images)), "found": found, "recall": round(found / len(images), 4),
               "recall_either_square": round(found_either / len(images), 4), "false_positives": false_positives}
        if model is not None and found:
            row["top1_serving"] = round(correct / found, 4)
            row["top1_original_same_faces"] = round(float(original[indices].mean()), 4)
            row["top1_delta_points"] = round(100 * (row["top1_serving"] - row["top1_original_same_faces"]), 2)
        rows.append(row)
    return rows


# --- tracking ---------------------------------------------------------------------------------------

def tracking_scene(frames: int = 150, fps: float = 15.0) -> tuple[list[np.ndarray], list[list[BBox | None]]]:
    """Four faces on straight lines that cross (x and y both); returns BGR frames and, per frame,
    each face's true box (None when another face hides most of it)."""
    from services.capture.demo import HEIGHT, WIDTH, _PORTRAIT_CROP, _background
    from skimage import data as skdata

    portrait = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w, h = _PORTRAIT_CROP
    head = portrait[y:y + h, x:x + w]
    scale = 0.65
    head = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    heads = [head, cv2.flip(head, 1), head, cv2.flip(head, 1)]
    # The face box inside the pasted head (from the demo's measured portrait geometry).
    fx, fy, fs = (176 - x) * scale, (65 - y) * scale, 98 * scale
    hh, hw = head.shape[:2]
    # start (x, y) and velocity (px/frame): pairs cross mid-frame, left-right and top-bottom.
    paths = [((10, 60), (3.2, 0.6)), ((WIDTH - hw - 10, 90), (-3.2, 0.3)),
             ((WIDTH // 2 - hw // 2, 0), (0.4, 1.8)), ((60, HEIGHT - hh), (2.2, -1.6))]
    background = _background(np.random.default_rng(3))
    # Each head is pasted through an elliptical mask, so a head hides only what a head would.
    mask = np.zeros((hh, hw), np.float32)
    cv2.ellipse(mask, (hw // 2, hh // 2), (hw // 2 - 2, hh // 2 - 2), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 3)[..., None]
    out_frames, truths = [], []
    for t in range(frames):
        canvas = background.copy()
        boxes: list[BBox] = []
        for (sx, sy), (vx, vy) in paths:
            px, py = _bounce(sx + vx * t, WIDTH - hw), _bounce(sy + vy * t, HEIGHT - hh)
            boxes.append(BBox(x=int(px + fx), y=int(py + fy), w=int(fs), h=int(fs)))
        for head_image, box in zip(heads, boxes):
            px, py = int(box.x - fx), int(box.y - fy)
            region = canvas[py:py + hh, px:px + hw].astype(np.float32)
            canvas[py:py + hh, px:px + hw] = (mask * head_image + (1 - mask) * region).astype(np.uint8)
        # A face is hidden when a later (nearer) face covers more than a third of it.
        visible = [None if any(_covered(box, later) > 1 / 3 for later in boxes[index + 1:]) else box
                   for index, box in enumerate(boxes)]
        out_frames.append(canvas)
        truths.append(visible)
    return out_frames, truths


def _bounce(position: float, limit: float) -> float:
    period = 2 * limit
    p = position % period
    return p if p <= limit else period - p


def _covered(box: BBox, other: BBox) -> float:
    ix = max(0, min(box.x + box.w, other.x + other.w) - max(box.x, other.x))
    iy = max(0, min(box.y + box.h, other.y + other.h) - max(box.y, other.y))
    return ix * iy / (box.w * box.h)


def _tracking(settings: Settings, preprocess: Preprocess) -> dict:
    frames, truths = tracking_scene()
    finder = _finder(settings, preprocess)
    messages = _messages(frames, "track", settings.capture.jpeg_quality, start_ms=1_000_000)
    last_id: dict[int, int] = {}
    owner: dict[int, int] = {}  # track id -> the true face it was first given to
    switches = swaps = matched = visible = 0
    for message, truth in zip(messages, truths):
        faces = finder.process([message]).faces
        for face_index, box in enumerate(truth):
            if box is None:
                continue
            visible += 1
            best = max(faces, key=lambda f: f.bbox.iou(box), default=None)
            if best is None or best.bbox.iou(box) < IOU_FOUND:
                continue
            matched += 1
            if face_index in last_id and last_id[face_index] != best.track_id:
                switches += 1
                swaps += owner.get(best.track_id, face_index) != face_index
            owner.setdefault(best.track_id, face_index)
            last_id[face_index] = best.track_id
    return {"frames": len(frames), "faces": len(truths[0]), "visible_faces": visible, "matched": matched,
            "id_switches": switches, "id_swaps": swaps, "max_age_ms": settings.detector.track_max_age_ms}


def _backend_settings(settings: Settings, backend: str) -> Settings:
    return settings.model_copy(update={"detector": settings.detector.model_copy(update={"backend": backend})})


def run_detector_bench(settings: Settings, *, frames: int = 60, repeats: int = 3, recall_faces: int = 600,
                       fer_path: Path | None = None) -> dict:
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        try:
            model: EmotionModel | None = EmotionModel(serving_model_dir(settings, None))
            preprocess = model.preprocess
        except ModelError:
            model, preprocess = None, Preprocess()  # speed does not depend on the model; crops use the defaults
        fer = load_fer(fer_path or FER_PUBLICTEST) if recall_faces else None
        if fer is not None:
            order = np.random.default_rng(0).permutation(len(fer[0]))[:recall_faces]
        backends = []
        for name in BACKENDS:
            chosen = _backend_settings(settings, name)
            if make_detector(chosen.detector).name != name:
                backends.append({"backend": name, "skipped": "not installed on this platform"})
                continue
            speed = [_speed(chosen, preprocess, w, h, frames, repeats) for w, h in RESOLUTIONS]
            if not recall_faces:
                recall: dict = {"skipped": "recall_faces is 0"}
            elif fer is None:
                recall = {"skipped": f"FER-2013 archive not found at {fer_path or FER_PUBLICTEST}"}
            else:
                recall = _recall(chosen, model, fer[0][order], fer[1][order])
            by_res = {row["resolution"]: row for row in speed}
            backends.append({"backend": name, "frames_per_s_640x480": by_res["640x480"]["frames_per_s"],
                             "frames_per_s_1280x720": by_res["1280x720"]["frames_per_s"],
                             "frames_per_cpu_s_640x480": by_res["640x480"]["frames_per_cpu_s"],
                             "frames_per_cpu_s_1280x720": by_res["1280x720"]["frames_per_cpu_s"], "speed": speed,
                             "recall": recall.get("recall"), "recall_detail": recall,
                             "tracking": _tracking(chosen, preprocess)})
    finally:
        cv2.setNumThreads(previous_threads)
    measured = {b["backend"]: b for b in backends if "skipped" not in b}
    default = measured.get(make_detector(settings.detector).name) or next(iter(measured.values()))
    haar = measured.get("haar")
    ratio = {res: round(default[f"frames_per_cpu_s_{res}"] / haar[f"frames_per_cpu_s_{res}"], 2)
             for res in ("640x480", "1280x720")} if haar else None  # per core: CPU time
    return {
        "benchmark": "detector",
        "backend": default["backend"],
        "detect_width": settings.detector.detect_width,
        "min_face": settings.detector.min_face,
        "min_confidence": settings.detector.min_confidence,
        "opencv_threads": 1,
        "model": read_metadata(model.directory).version if model else None,
        "frames_per_s_640x480": default["frames_per_s_640x480"],
        "frames_per_s_1280x720": default["frames_per_s_1280x720"],
        "ratio_to_haar": ratio,
        "target_ratio_to_haar": 2.0,
        "target_frames_per_s_640x480": 30,
        "recall": default["recall"],
        "recall_detail": default["recall_detail"],
        "id_switches": default["tracking"]["id_switches"],
        "backends": backends,
    }


def table(result: dict) -> str:
    rows = []
    for b in result["backends"]:
        if "skipped" in b:
            rows.append((b["backend"], "skipped: " + b["skipped"], "", "", "", "", "", ""))
            continue
        r = b["recall_detail"]
        upright = r.get("by_angle", [{}])[0]
        photo = "/".join(str(row["recall"]) for row in r.get("photo_by_angle", [])) or "-"
        rows.append((b["backend"], b["frames_per_cpu_s_640x480"], b["frames_per_cpu_s_1280x720"], r.get("recall", "-"),
                     r.get("recall_all_angles", "-"), upright.get("top1_delta_points", "-"), photo,
                     b["tracking"]["id_switches"]))
    head = (f"detectors at detect_width={result['detect_width']}, one thread; frames per CPU second, medians of "
            f"{result['backends'][0].get('speed', [{}])[0].get('repeats', '?')} runs; ratio of {result['backend']} "
            f"to haar: {result['ratio_to_haar']}")
    return head + "\n" + format_table(("backend", "fps 640x480", "fps 1280x720", "recall", "recall ±15°",
                                       "top-1 Δ pts", "photo recall 0/+15/-15°", "id switches"), rows)
