"""analysis.background: a sink on its own thread keeps the order, closes its sink, and never loses an error."""

import threading
import time

import pytest

from analysis.background import BackgroundSink


class Recording:
    def __init__(self, fail_at: int | None = None, fail_on_close: bool = False, delay_s: float = 0.0) -> None:
        self.items: list[int] = []
        self.threads: set[str] = set()
        self.closed = False
        self.fail_at, self.fail_on_close, self.delay_s = fail_at, fail_on_close, delay_s

    def add(self, item) -> None:
        self.threads.add(threading.current_thread().name)
        if item == self.fail_at:
            raise OSError(f"cannot write frame {item}")
        time.sleep(self.delay_s)
        self.items.append(item)

    def close(self) -> None:
        self.closed = True
        if self.fail_on_close:
            raise OSError("cannot finish the file")


def test_items_reach_the_sink_in_order_on_another_thread_and_close_waits_for_them():
    inner = Recording(delay_s=0.001)
    sink = BackgroundSink(inner, depth=2, name="test-sink")
    for k in range(50):
        sink.add(k)
    sink.close()
    assert inner.items == list(range(50)) and inner.closed
    assert inner.threads == {"test-sink"}
    sink.close()  # a second close is harmless


def test_an_error_on_the_sink_thread_is_raised_at_a_later_add_without_a_hang():
    inner = Recording(fail_at=3)
    sink = BackgroundSink(inner, depth=1)
    with pytest.raises(OSError, match="cannot write frame 3"):
        for k in range(10_000):  # the queue holds one item: a producer that ignored the failure would block
            sink.add(k)
    assert inner.closed  # the sink's file is closed even though it failed
    sink.close()


def test_an_error_raised_while_closing_reaches_close():
    sink = BackgroundSink(Recording(fail_on_close=True))
    sink.add(1)
    with pytest.raises(OSError, match="cannot finish the file"):
        sink.close()


def test_the_first_error_is_reported_when_close_fails_too():
    inner = Recording(fail_at=0, fail_on_close=True)
    sink = BackgroundSink(inner)
    sink.add(0)
    with pytest.raises(OSError, match="cannot write frame 0"):
        sink.close()
