"""Face finding in worker processes, one per core: YuNet holds the GIL, so threads cannot share it.

Every worker reads every input itself (decoding costs a tenth of detection) and finds the faces of
its own share of the frames: the analysed frame with ordinal `o` belongs to worker `o % W`. Per
frame of its share it sends what `shared.frame_faces.find_faces` found (boxes, scores and the model
crops: a few kilobytes, never the pixels), and per input an end marker. The main process reads the
workers' pipes in turn, so the results come out in frame order with no reorder buffer, and tracks
them there (tracking needs the frames of a video in order). A pipe holds what the kernel's buffer
holds and a worker waits when it is full: memory stays flat.

Each worker writes to a one-way pipe whose write end only that worker holds (the main process closes
its copy once the worker runs). A worker killed in the middle of a message then reads as end of file
instead of leaving the main process waiting for the rest of the message, which a queue (the main
process keeps its writer open) did.

Workers ignore Ctrl+C (the main process stops them), exit when asked, and are sent SIGTERM by the
kernel if the main process dies (`shared.lifetime`), so none outlives an analysis.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Iterator, Sequence

import cv2

from analysis.inputs import Input
from shared.faces import make_detector
from shared.frame_faces import FoundFaces, find_faces
from shared.lifetime import exit_with_parent
from shared.model_runtime import Preprocess
from shared.settings import DetectorSettings

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
    except Exception:  # noqa: BLE001 - anything that does not survive the pipe becomes its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _work(shard: int, shards: int, inputs: Sequence[Input], settings: DetectorSettings, preprocess: Preprocess,
          every: int, out: Connection, stop, parent_pid: int) -> None:
    """A worker's whole life (runs in the child process)."""
    exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def put(item) -> bool:
        # Blocks while the pipe is full; a main process that stops reading sets `stop` and, failing
        # that, terminates the worker (close()), and one that dies takes it along (exit_with_parent).
        if stop.is_set():
            return False
        try:
            out.send(item)
            return True
        except OSError:  # BrokenPipeError: the main process has closed its end
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
        pipes = [context.Pipe(duplex=False) for _ in range(self.count)]
        self._readers = [reader for reader, _ in pipes]
        self._processes = [context.Process(target=_work, name=f"analyze-detect-{k}", daemon=True,
                                           args=(k, self.count, list(inputs), settings, preprocess, every,
                                                 writer, self._stop, os.getpid()))
                           for k, (_, writer) in enumerate(pipes)]
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
            for _, writer in pipes:
                writer.close()  # each worker holds the only write end of its pipe now

    def _exited(self, k: int) -> WorkerError:
        process = self._processes[k]
        process.join(timeout=1)
        return WorkerError(f"detection worker {k} exited (code {process.exitcode}) before finishing")

    def _get(self, k: int):
        reader = self._readers[k]
        while True:
            try:
                if not reader.poll(POLL_S):
                    continue  # a worker that exits closes the only write end: the poll then sees EOF
                item = reader.recv()
            except (EOFError, OSError):  # OSError: it died in the middle of a message
                raise self._exited(k) from None
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
        for reader in self._readers:
            reader.close()  # a worker waiting on a full pipe gets a broken pipe and exits
        for process in self._processes:
            process.join(timeout=3)
            if process.is_alive():
                process.terminate()
                process.join(timeout=3)
