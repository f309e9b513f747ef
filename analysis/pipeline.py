"""Frames -> emotion events as fast as the machine allows: two stages on two threads.

Stage 1 (a helper thread) reads frames, turns them grey and finds, tracks and crops the faces
(`shared.frame_faces`, the detector service's own step). Stage 2 (the calling thread) sends the
crops of many frames through the model in one batch, smooths each track (`shared.smoothing`, the
classifier's own functions) and hands every frame, in order, to the sinks (rows, annotated video,
report, store).

Why threads and this split: YuNet holds the GIL while it runs (two detection threads measured no
faster than one), while LiteRT's invoke, OpenCV's decoder, resizing, drawing and video encoder all
release it. So detection keeps one core busy and the model, the drawing and the encoding run on the
other. A bounded queue between the stages keeps memory flat however long the video is.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import cv2
import numpy as np

from analysis.inputs import Frame, Input
from shared.emotions import EMOTIONS
from shared.faces import FaceDetector, IoUTracker
from shared.frame_faces import frame_faces
from shared.model_runtime import EmotionModel, TtaMode
from shared.schemas import EmotionEvent, FaceMessage
from shared.settings import DetectorSettings
from shared.smoothing import TrackState, build_events

# Track states of a face unseen this long (video time) are dropped, as the classifier's expire in Redis.
STATE_KEEP_MS = 60_000


@dataclass(frozen=True)
class FrameResult:
    input: Input
    frame: Frame
    events: list[EmotionEvent]  # one per face, largest first; empty without faces or when skipped
    over_limit: int = 0


class Sink(Protocol):
    """Where results go; `add` is called once per frame read, in order, then `close` once."""

    def add(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


@dataclass
class PipelineConfig:
    detector: FaceDetector
    detector_settings: DetectorSettings
    model: EmotionModel
    tta: TtaMode
    tau_ms: float
    session_id: str
    base_ms: int  # the run's clock: a frame at video time t is captured at base_ms + t
    every: int = 1
    keep_images: bool = False  # sinks need the pixels (annotation)
    batch_faces: int = 64  # faces per model call
    batch_frames: int = 32  # frames held at most while a batch fills (bounds memory)
    queue_frames: int = 16

    @property
    def image_step_ms(self) -> int:
        """Images of a set are this far apart on the run's clock: further than a track lives, so no
        track (and no smoothing) joins two photos."""
        return self.detector_settings.track_max_age_ms + 1


@dataclass
class Totals:
    frames: int = 0  # analysed
    frames_read: int = 0
    faces: int = 0
    frames_without_faces: int = 0
    faces_over_limit: int = 0
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EMOTIONS, 0))


@dataclass
class _Detected:
    input: Input
    frame: Frame
    faces: list[FaceMessage]
    over_limit: int


@dataclass
class _Failed:
    error: BaseException


_END = object()


def input_span_ms(item: Input, config: PipelineConfig) -> int:
    """How long an input lasts on the run's clock."""
    if item.kind == "video":
        return round(item.expected_frames * 1000 / item.fps)
    return item.expected_frames * config.image_step_ms


class Pipeline:
    def __init__(self, config: PipelineConfig, sinks: Sequence[Sink],
                 on_progress: Callable[[Totals], None] | None = None) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.on_progress = on_progress
        self.totals = Totals()
        self._stop = threading.Event()
        self._states: dict[str, TrackState] = {}
        self._camera: str | None = None

    # --- stage 1: read, detect, track, crop -------------------------------------------------

    def _put(self, out: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _detect(self, inputs: Sequence[Input], out: queue.Queue) -> None:
        config = self.config
        settings = config.detector_settings
        try:
            for item in inputs:
                tracker = IoUTracker(settings.iou_threshold, settings.track_max_age_ms)
                photo = item.kind == "images"
                for frame in item.frames(config.every, keep_skipped=config.keep_images):
                    faces: list[FaceMessage] = []
                    over = 0
                    if frame.analyse:
                        gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
                        clock = frame.time_ms if frame.time_ms is not None else frame.index * config.image_step_ms
                        captured = config.base_ms + clock
                        # Offline faces carry the video's clock in every stage time: there is no
                        # capture latency to report, and the store's latency columns read 0.
                        found = frame_faces(gray, config.detector, settings, config.model.preprocess, tracker,
                                            camera_id=item.camera_id, session_id=config.session_id,
                                            frame_id=frame.index, captured_ms=captured, detected_ms=captured,
                                            photo=photo)
                        faces, over = found.faces, found.over_limit
                    if not config.keep_images and frame.image is not None:
                        frame = replace(frame, image=None)
                    if not self._put(out, _Detected(item, frame, faces, over)):
                        return
            self._put(out, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            self._put(out, _Failed(exc))

    # --- stage 2: classify, smooth, emit ----------------------------------------------------

    def _classify(self, batch: list[_Detected]) -> None:
        config = self.config
        faces = [face for item in batch for face in item.faces]
        if faces:
            crops = np.stack([face.crop_array() for face in faces])
            probabilities = config.model.predict_tta(crops, config.tta)
            if not np.all(np.isfinite(probabilities)):
                raise ValueError("the model produced non-finite probabilities")
        start = 0
        for item in batch:
            events: list[EmotionEvent] = []
            if item.faces:
                if item.input.camera_id != self._camera:
                    self._camera, self._states = item.input.camera_id, {}  # inputs are read one after another
                captured = item.faces[0].captured_ms
                rows = probabilities[start:start + len(item.faces)]
                start += len(item.faces)
                events, updated = build_events(item.faces, rows, config.model.version, self._states,
                                               config.tau_ms, now_ms=captured)
                self._states.update(updated)
                if len(self._states) > 256:
                    self._states = {k: s for k, s in self._states.items() if captured - s.at_ms <= STATE_KEEP_MS}
            self._emit(FrameResult(item.input, item.frame, events, item.over_limit))

    def _emit(self, result: FrameResult) -> None:
        totals = self.totals
        totals.frames_read += 1
        if result.frame.analyse:
            totals.frames += 1
            totals.faces += len(result.events)
            totals.frames_without_faces += not result.events
            totals.faces_over_limit += result.over_limit
            for event in result.events:
                totals.labels[event.label] += 1
        for sink in self.sinks:
            sink.add(result)

    def run(self, inputs: Sequence[Input]) -> Totals:
        """Analyse every input; the sinks are closed at the end, also when it fails or is interrupted."""
        config = self.config
        handoff: queue.Queue = queue.Queue(maxsize=config.queue_frames)
        reader = threading.Thread(target=self._detect, args=(inputs, handoff), name="analyze-detect", daemon=True)
        reader.start()
        failed = True
        try:
            finished = False
            while not finished:
                batch: list[_Detected] = []
                faces = 0
                while faces < config.batch_faces and len(batch) < config.batch_frames:
                    item = handoff.get()
                    if item is _END:
                        finished = True
                        break
                    if isinstance(item, _Failed):
                        raise item.error
                    batch.append(item)
                    faces += len(item.faces)
                if batch:
                    self._classify(batch)
                    if self.on_progress is not None:
                        self.on_progress(self.totals)
            failed = False
        finally:
            self._stop.set()
            reader.join(timeout=10)
            errors = []
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - close every sink, then report the first failure
                    errors.append(exc)
            if errors and not failed:  # a failure of the run itself is the one to report
                raise errors[0]
        return self.totals

