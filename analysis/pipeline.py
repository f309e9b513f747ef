"""Frames -> emotion events as fast as the machine allows.

    detection workers (one process per core, analysis/workers.py)
        read the inputs, find the faces of their share of the frames, crop them for the model
    this process
        tracks the faces frame by frame (shared.frame_faces.track_faces), sends the crops of many
        frames through the model in one batch, smooths each track (shared.smoothing, the classifier's
        own functions) and hands every frame, in order, to the sinks (rows, annotation, report, store)
    annotation reader (a thread, only with --annotate)
        decodes every frame again for its pixels, so no image ever crosses a process boundary

Why processes for detection: YuNet holds the GIL while it runs (two detection threads measured no
faster than one), so only processes put both cores to work on it. LiteRT's invoke, OpenCV's decoder,
drawing and video encoder release the GIL, so they overlap on the main process's threads. Every
queue is bounded: memory stays flat however long the video is.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from analysis.inputs import Frame, Input
from analysis.workers import DetectWorkers, InputEnd, WorkerError
from shared.emotions import EMOTIONS
from shared.faces import IoUTracker
from shared.frame_faces import track_faces
from shared.model_runtime import EmotionModel, TtaMode
from shared.schemas import EmotionEvent, FaceMessage
from shared.settings import DetectorSettings
from shared.smoothing import TrackState, build_events

# Track states of a face unseen this long (video time) are dropped, as the classifier's expire in Redis.
STATE_KEEP_MS = 60_000
UNREADABLE_KEPT = 20


@dataclass(frozen=True)
class FrameResult:
    input: Input
    frame: Frame
    events: list[EmotionEvent]  # one per face, largest first; empty without faces or when skipped
    over_limit: int = 0


class Sink(Protocol):
    """Where results go: `add` once per frame, in order (skipped frames only when pixels are kept), then
    `close` once."""

    def add(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


@dataclass
class PipelineConfig:
    detector_settings: DetectorSettings
    model: EmotionModel
    tta: TtaMode
    tau_ms: float
    session_id: str
    base_ms: int  # the run's clock: a frame at video time t is captured at base_ms + t
    every: int = 1
    keep_images: bool = False  # sinks need the pixels (annotation)
    batch_faces: int = 32  # faces per model call, always (a call of another size re-plans the interpreter)
    held_frames: int = 64  # frames held at most while a batch fills (then it is classified padded)
    held_bytes: int = 256 << 20  # pixels held at most (annotation keeps each frame's until it is drawn)

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
    unreadable: list[str] = field(default_factory=list)  # the first UNREADABLE_KEPT images that did not decode
    unreadable_count: int = 0


def input_span_ms(item: Input, config: PipelineConfig) -> int:
    """How long an input lasts on the run's clock."""
    if item.kind == "video":
        return round(item.expected_frames * 1000 / item.fps)
    return item.expected_frames * config.image_step_ms


def expected_analysed(item: Input, every: int) -> int:
    return -(-item.expected_frames // every) if item.kind == "video" else item.expected_frames


@dataclass
class _Pending:
    input: Input
    frame: Frame
    faces: list[FaceMessage]
    over_limit: int
    probabilities: list[np.ndarray] = field(default_factory=list)  # one row per face, as they are classified


_END = object()


class _FrameReader:
    """The annotation reader: every frame of every input, with its pixels, on a thread of its own."""

    def __init__(self, inputs: Sequence[Input], every: int, depth: int = 8) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(list(inputs), every), name="analyze-annotate-read",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, inputs: list[Input], every: int) -> None:
        try:
            for item in inputs:
                for frame in item.frames(every, decode_skipped=True):
                    if not self._put(frame):
                        return
                if not self._put(_END):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised where the frames are consumed
            self._put(exc)

    def frames(self) -> Iterator[Frame]:
        """The frames of the next input, up to its end."""
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Pipeline:
    def __init__(self, config: PipelineConfig, sinks: Sequence[Sink],
                 on_progress: Callable[[Totals], None] | None = None) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.on_progress = on_progress
        self.totals = Totals()
        self._states: dict[str, TrackState] = {}
        self._pending: deque[_Pending] = deque()
        self._unclassified: deque[tuple[_Pending, FaceMessage]] = deque()
        self._held_bytes = 0

    # --- classification and emission -------------------------------------------------------
    #
    # Frames wait in `_pending` (in order) and their faces in `_unclassified` until a full batch of
    # `batch_faces` faces can go through the model; then every leading frame whose faces all have
    # their probabilities is smoothed and emitted. The interpreter sees one batch size only: each new
    # size costs a re-plan (AllocateTensors, ~0.1 s measured here), more than the inference itself.

    def _add(self, item: _Pending) -> None:
        config = self.config
        self._pending.append(item)
        self._unclassified.extend((item, face) for face in item.faces)
        if item.frame.image is not None:
            self._held_bytes += item.frame.image.nbytes
        while len(self._unclassified) >= config.batch_faces:
            self._infer()
        if len(self._pending) > config.held_frames or self._held_bytes > config.held_bytes:
            self._infer()  # sparse faces: do not hold frames back for a full batch
        self._emit_ready()

    def _infer(self) -> None:
        """Classify up to `batch_faces` of the oldest waiting faces (padded with blank crops to that size)."""
        config = self.config
        take = [self._unclassified.popleft() for _ in range(min(config.batch_faces, len(self._unclassified)))]
        if not take:
            return
        crops = np.stack([face.crop_array() for _, face in take])
        if len(crops) < config.batch_faces:
            crops = np.concatenate([crops, np.zeros((config.batch_faces - len(crops), *crops.shape[1:]), crops.dtype)])
        probabilities = config.model.predict_tta(crops, config.tta)[:len(take)]
        if not np.all(np.isfinite(probabilities)):
            raise ValueError("the model produced non-finite probabilities")
        for (item, _), row in zip(take, probabilities):
            item.probabilities.append(row)

    def _emit_ready(self) -> None:
        config = self.config
        emitted = False
        while self._pending and len(self._pending[0].probabilities) == len(self._pending[0].faces):
            item = self._pending.popleft()
            if item.frame.image is not None:
                self._held_bytes -= item.frame.image.nbytes
            events: list[EmotionEvent] = []
            if item.faces:
                captured = item.faces[0].captured_ms
                # One call per frame, with the frame's own clock as the classification time: offline
                # events carry the video's clock in every stage time (the store's latencies read 0).
                events, updated = build_events(item.faces, np.stack(item.probabilities), config.model.version,
                                               self._states, config.tau_ms, now_ms=captured)
                self._states.update(updated)
                if len(self._states) > 256:
                    self._states = {k: s for k, s in self._states.items() if captured - s.at_ms <= STATE_KEEP_MS}
            self._emit(FrameResult(item.input, item.frame, events, item.over_limit))
            emitted = True
        if emitted and self.on_progress is not None:
            self.on_progress(self.totals)

    def _flush(self) -> None:
        while self._unclassified:
            self._infer()
        self._emit_ready()

    def _emit(self, result: FrameResult) -> None:
        totals = self.totals
        if result.frame.analyse:
            totals.frames += 1
            totals.faces += len(result.events)
            totals.frames_without_faces += not result.events
            totals.faces_over_limit += result.over_limit
            for event in result.events:
                totals.labels[event.label] += 1
        for sink in self.sinks:
            sink.add(result)

    def _unreadable(self, path: str) -> None:
        self.totals.unreadable_count += 1
        if len(self.totals.unreadable) < UNREADABLE_KEPT:
            self.totals.unreadable.append(path)

    # --- one input -----------------------------------------------------------------------------

    def _input(self, index: int, item: Input, workers: DetectWorkers, reader: _FrameReader | None) -> None:
        config = self.config
        settings = config.detector_settings
        tracker = IoUTracker(settings.iou_threshold, settings.track_max_age_ms)
        self._states = {}  # track ids are per input
        frames = reader.frames() if reader is not None else None
        for found in workers.results(index):
            if isinstance(found, InputEnd):
                self.totals.frames_read += found.frames
                break
            frame = Frame(found.frame_index, found.time_ms, found.path, None, found.ordinal)
            if frames is not None:  # the frames before this one were skipped by --every: they go out as they are
                for frame in frames:
                    if frame.index == found.frame_index:
                        break
                    self._add(_Pending(item, frame, [], 0))
                else:
                    raise WorkerError(f"{item_name(item)}: frame {found.frame_index} was detected but not read again")
            if found.faces is None:
                self._unreadable(found.path)
                continue
            clock = found.time_ms if found.time_ms is not None else found.frame_index * config.image_step_ms
            captured = config.base_ms + clock
            messages = track_faces(found.faces, tracker, config.model.preprocess, camera_id=item.camera_id,
                                   session_id=config.session_id, frame_id=found.frame_index, captured_ms=captured,
                                   detected_ms=captured)
            self._add(_Pending(item, frame, messages, found.faces.over_limit))
        if frames is not None:
            for frame in frames:  # skipped frames after the last analysed one
                self._add(_Pending(item, frame, [], 0))
        self._flush()

    def run(self, inputs: Sequence[Input], workers: DetectWorkers) -> Totals:
        """Analyse every input; the sinks are closed at the end, also when it fails or is interrupted."""
        reader = _FrameReader(inputs, self.config.every) if self.config.keep_images else None
        failed = True
        try:
            for index, item in enumerate(inputs):
                self._input(index, item, workers, reader)
            failed = False
        finally:
            if reader is not None:
                reader.close()
            errors = []
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - close every sink, then report the first failure
                    errors.append(exc)
            if errors and not failed:  # a failure of the run itself is the one to report
                raise errors[0]
        return self.totals


def item_name(item: Input) -> str:
    return str(item.path) if item.kind == "video" else item.name
