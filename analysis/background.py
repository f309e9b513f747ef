"""A sink on a thread of its own, so the main thread hands it each frame and goes on classifying.

Annotating a frame (drawing, then encoding the video) costs about what classifying its faces with the
accurate model does, and both release the GIL (OpenCV's encoder, LiteRT's invoke): on separate threads
they overlap instead of taking turns on the main thread. The queue between them is bounded, so the
frames held stay few; an error on the sink's thread is raised in the main thread at the next `add`
or at `close`, never lost.
"""

from __future__ import annotations

import queue
import threading

from analysis.pipeline import FrameResult, Sink

POLL_S = 0.2
_END = object()


class BackgroundSink:
    """`sink`'s `add` and `close`, called in order on one thread of their own."""

    def __init__(self, sink: Sink, depth: int = 8, name: str = "analyze-sink") -> None:
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _END:
                self.sink.add(item)
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread
            self._error = exc
        finally:
            try:
                self.sink.close()
            except BaseException as exc:  # noqa: BLE001 - the first failure is the one reported
                self._error = self._error or exc

    def _put(self, item) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        self._raise()  # the thread ended early: it failed

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def add(self, result: FrameResult) -> None:
        self._raise()
        self._put(result)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._error is None:
            self._put(_END)
        self._thread.join()
        self._raise()
