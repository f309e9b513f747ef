"""Face finding in worker processes, one per core: YuNet holds the GIL, so threads cannot share it.

Every worker reads every input itself (decoding costs a tenth of detection) and finds the faces of
its own share of the frames: the analysed frame with ordinal `o` belongs to worker `o % W`. Per
frame of its share it sends what `shared.frame_faces.find_faces` found (boxes, scores and the model
crops: a few kilobytes, never the pixels), and per input an end marker. The main process reads the
workers' queues in turn, so the results come out in frame order with no reorder buffer, and tracks
them there (tracking needs the frames of a video in order). Queues are bounded: memory stays flat.

Workers ignore Ctrl+C (the main process stops them), exit when asked, and are sent SIGTERM by the
kernel if the main process dies (`shared.lifetime`), so none outlives an analysis.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2

from analysis.inputs import Input
from shared.faces import make_detector
from shared.frame_faces import FoundFaces, find_faces
from shared.lifetime import exit_with_parent
from shared.model_runtime import Preprocess
from shared.settings import DetectorSettings

QUEUE_ITEMS = 16
POLL_S = 0.25


class WorkerError(RuntimeError):
    """A worker died or broke the protocol (the message says which and how)."""


@dataclass(frozen=True)
class Found:
    input_index: int
    frame_index: int
    ordinal: int
    time_ms: int | None
    path: str
    faces: FoundFaces | None  # None: an image that does not decode


@dataclass(frozen=True)
class InputEnd:
    input_index: int
    frames: int  # frames the input held (decoded or stepped over)


@dataclass(frozen=True)
class _Ready:
    detector: str


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything that does not survive the queue becomes its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(shard: int, shards: int, inputs: Sequence[Input], settings: DetectorSettings, preprocess: Preprocess,
          every: int, out: mp.Queue, stop, parent_pid: int) -> None:
    """A worker's whole life (runs in the child process)."""
    exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                if os.getppid() != parent_pid:
                    return False
        return False

    def mine(ordinal: int) -> bool:
        return ordinal % shards == shard

    try:
        detector = make_detector(settings)
        if not put(_Ready(detector.name)):
            return
        for input_index, item in enumerate(inputs):
            photo = item.kind == "images"
            frames = 0
            for frame in item.frames(every, select=mine):
                frames += 1
                if frame.ordinal is None or not mine(frame.ordinal):
                    continue
                found = None
                if frame.image is not None:
                    gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
                    found = find_faces(gray, detector, settings, preprocess, photo=photo)
                if not put(Found(input_index, frame.index, frame.ordinal, frame.time_ms, frame.path, found)):
                    return
            if not put(InputEnd(input_index, frames)):
                return
    except BaseException as exc:  # noqa: BLE001 - the main process raises it
        put(_Failed(_picklable(exc)))


class DetectWorkers:
    """`count` worker processes over `inputs`; iterate `results(i)` for each input in turn."""

    def __init__(self, inputs: Sequence[Input], count: int, settings: DetectorSettings, preprocess: Preprocess,
                 every: int) -> None:
        context = mp.get_context("spawn")  # no fork: the parent may hold threads and a loaded model
        self.count = max(1, count)
        self._stop = context.Event()
        self._queues = [context.Queue(maxsize=QUEUE_ITEMS) for _ in range(self.count)]
        self._processes = [context.Process(target=_work, name=f"analyze-detect-{k}", daemon=True,
                                           args=(k, self.count, list(inputs), settings, preprocess, every,
                                                 self._queues[k], self._stop, os.getpid()))
                           for k in range(self.count)]
        self.detector = ""
        # Born ignoring SIGINT (an ignored signal stays ignored across exec, and Python then installs no
        # KeyboardInterrupt handler): Ctrl+C in the terminal reaches the whole group, and only the main
        # process should act on it, also while a worker is still importing.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            for process in self._processes:
                process.start()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    def _get(self, k: int):
        while True:
            try:
                item = self._queues[k].get(timeout=POLL_S)
            except queue.Empty:
                process = self._processes[k]
                if not process.is_alive():
                    raise WorkerError(f"detection worker {k} exited (code {process.exitcode}) before finishing") \
                        from None
                continue
            if isinstance(item, _Failed):
                raise item.error
            return item

    def wait_ready(self) -> str:
        """Block until every worker has its detector; returns the backend's name."""
        names = {self._get(k).detector for k in range(self.count)}
        self.detector = names.pop()
        return self.detector

    def results(self, input_index: int) -> Iterator[Found | InputEnd]:
        """The analysed frames of one input in order, then its InputEnd."""
        ordinal = 0
        while True:
            k = ordinal % self.count
            item = self._get(k)
            if isinstance(item, InputEnd):
                for other in range(self.count):
                    if other != k and not isinstance(self._get(other), InputEnd):
                        raise WorkerError(f"detection workers disagree on where input {input_index} ends")
                yield item
                return
            if item.input_index != input_index or item.ordinal != ordinal:
                raise WorkerError(f"detection worker {k} sent frame {item.ordinal} of input {item.input_index}, "
                                  f"expected {ordinal} of {input_index}")
            yield item
            ordinal += 1

    def close(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(timeout=3)
            if process.is_alive():
                process.terminate()
                process.join(timeout=3)
        for q in self._queues:
            q.cancel_join_thread()  # items nobody will read must not hold the exit
            q.close()
