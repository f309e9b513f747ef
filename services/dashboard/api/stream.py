"""The live feed for programs: emotion events as server-sent events, read from the events stream.

    id: 1767225600123-0            (with EMOTION_SHARDS=N: one entry id per shard, joined by `_`)
    event: emotion
    data: {"event_id": ..., the same Event object as GET /api/v1/events}

Each response is bounded, because it holds one of the server's few threads (waitress serves 8):
- at most `dashboard.max_streams` feeds are open at once; one more is answered 503 with Retry-After;
- a feed ends after `dashboard.stream_max_s` with an `end` event whose `id:` is the position read so
  far, and EventSource (or any client sending Last-Event-ID) resumes there without a gap;
- Redis is read with XREAD BLOCK of at most a second (every shard of the events stream: see
  shared.shards.read_after), so a pooled connection is borrowed per read, never held by an idle
  feed, and the loop sees its deadline;
- an idle feed sends a comment line every `dashboard.stream_heartbeat_s`: proxies keep it open, and a
  write to a client that has gone raises in the server, which closes the response and frees the slot.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import redis

from services.dashboard.api.models import Error, Event, StreamEnd
from shared.redis_conn import REDIS_DOWN_ERRORS, redact
from shared.schemas import EmotionEvent, MessageError, decode
from shared.shards import advance, format_position, newest_cursors, parse_position, read_after
from shared.store.writer import event_row
from shared.streams import Keys

READ_COUNT = 200  # entries per XREAD: a feed catching up from an old Last-Event-ID advances in bounded steps
BLOCK_MS = 1000  # below the dashboard client's 2 s socket timeout
RETRY_MS = 2000  # the reconnect delay EventSource is told to use


class StreamSlots:
    """Counts open feeds; `acquire` gives an idempotent release, or None when all `limit` are taken."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def acquire(self) -> Callable[[], None] | None:
        with self._lock:
            if self._open >= self.limit:
                return None
            self._open += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if not released.is_set():
                    released.set()
                    self._open -= 1

        return release


def sse(*, data: str | None = None, event: str | None = None, id: str | None = None) -> str:
    """One server-sent-events message (data is one JSON line here, so never needs splitting)."""
    lines = ([f"id: {id}"] if id is not None else []) + ([f"event: {event}"] if event else [])
    if data is not None:
        lines.append(f"data: {data}")
    return "\n".join(lines) + "\n\n"


def start_id(client: redis.Redis, keys: Keys) -> str:
    """The position of the newest entry of every shard, so the feed delivers what comes after it (`$`
    resolved once: a `$` re-sent with every read would lose what arrives between two reads). A shard
    with no stream yet starts at 0-0: everything that will be added is new."""
    return format_position(newest_cursors(client, keys, "events"), keys.shards)


def event_feed(client: redis.Redis, keys: Keys, *, after: str, camera: str | None, max_s: float, heartbeat_s: float,
               redis_url: str = "", clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """SSE text for the events after entry `after` (optionally of one camera), for at most `max_s`."""
    deadline = clock() + max_s
    quiet_since = clock()
    cursors = parse_position(after, keys.shards)
    yield (f"retry: {RETRY_MS}\n: live emotion events{' of camera ' + camera if camera else ''}; this response ends "
           f"after {max_s:g} s, reconnect with Last-Event-ID\n\n")
    while (now := clock()) < deadline:
        wait_s = min(BLOCK_MS / 1000, deadline - now, max(0.001, quiet_since + heartbeat_s - now))
        try:
            entries = read_after(client, keys, "events", cursors, READ_COUNT, int(wait_s * 1000))
        except REDIS_DOWN_ERRORS as exc:
            yield sse(event="error", id=after, data=Error(error=f"Redis at {redact(redis_url)} is not answering "
                                                              f"({type(exc).__name__}); reconnect later").model_dump_json())
            return
        for entry in entries:
            advance(cursors, [entry])
            after = format_position(cursors, keys.shards)
            # The stream is shared by every camera: skip other cameras' entries before decoding them.
            if camera is not None and camera.encode() not in entry.fields.get(b"meta", b""):
                continue
            try:
                message = decode(EmotionEvent, entry.fields)
            except MessageError as exc:
                yield f": skipped entry {entry.entry_id.decode()}: {exc}\n\n"
                continue
            if camera is not None and message.camera_id != camera:
                continue
            yield sse(event="emotion", id=after, data=Event.from_row(event_row(message, None)).model_dump_json())
            quiet_since = clock()
        if clock() - quiet_since >= heartbeat_s:
            yield ": heartbeat\n\n"
            quiet_since = clock()
    yield sse(event="end", id=after, data=StreamEnd(reason=f"a feed lasts at most {max_s:g} s; reconnect with "
                                                           f"Last-Event-ID", last_event_id=after).model_dump_json())
