"""Live data from Redis for the Live and Health pages: recent events, camera frames, pipeline state.

Events are read incrementally: `EventWindow` keeps the last minute of decoded events in memory and
each refresh asks Redis only for entries newer than the last one it has (XRANGE with an exclusive
start), so a page refreshing every second costs one small read however busy the pipeline is.
Frames are big (JPEG), so they are fetched one at a time, by time window around the wanted frame.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import redis

from shared.heartbeats import read_heartbeats
from shared.schemas import EmotionEvent, FrameMessage, MessageError, decode
from shared.stream_state import format_id, group_state, parse_id, text
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, LIVE_WINDOW_MS, RECORDER_GROUP, Keys

# The window is the events stream's retention for recorded events (the table of streams): older
# events may already be trimmed, so the live views never read further back than this.
WINDOW_MS = LIVE_WINDOW_MS
READ_COUNT = 2_000
MAX_CATCH_UP_READS = 10
FRAME_PAGE = 8


@dataclass(frozen=True)
class LiveEvent:
    entry_id: tuple[int, int]
    event: EmotionEvent

    @property
    def stream_id(self) -> str:
        return format_id(self.entry_id)


class EventWindow:
    """The last `WINDOW_MS` of events, shared by every browser the dashboard serves."""

    def __init__(self, client: redis.Redis, keys: Keys, window_ms: int = WINDOW_MS) -> None:
        self.client, self.keys, self.window_ms = client, keys, window_ms
        self._events: deque[LiveEvent] = deque()
        self._last: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.undecodable = 0

    def refresh(self) -> list[LiveEvent]:
        """Read what is new in the events stream; returns every event in the window, oldest first."""
        with self._lock:
            now_ms = int(time.time() * 1000)
            if self._last is None:
                start = f"{now_ms - self.window_ms}-0"
            else:
                start = "(" + format_id(self._last)
            for _ in range(MAX_CATCH_UP_READS):
                entries = self.client.xrange(self.keys.events, min=start, max="+", count=READ_COUNT)
                for entry_id, fields in entries:
                    parsed = parse_id(entry_id)
                    self._last = parsed
                    try:
                        self._events.append(LiveEvent(parsed, decode(EmotionEvent, fields)))
                    except MessageError:
                        self.undecodable += 1
                if len(entries) < READ_COUNT:
                    break
                start = "(" + format_id(self._last)
            if self._last is None:
                self._last = (now_ms - self.window_ms, 0)
            horizon = now_ms - self.window_ms
            while self._events and self._events[0].entry_id[0] < horizon:
                self._events.popleft()
            return list(self._events)


def events_after(events: list[LiveEvent], stream_id: str | None) -> list[LiveEvent]:
    if not stream_id:
        return events
    after = parse_id(stream_id)
    return [e for e in events if e.entry_id > after]


def capturing_cameras(client: redis.Redis, keys: Keys) -> set[str]:
    """Cameras whose capture is running now: its heartbeat is live (capture deletes it when it stops)."""
    return {str(beat["camera_id"]) for beat in read_heartbeats(client, keys, "capture") if "camera_id" in beat}


def known_cameras(client: redis.Redis, keys: Keys, events: list[LiveEvent]) -> list[str]:
    """Cameras that registered themselves (capture writes the cameras hash) or sent recent events."""
    names = {k.decode() for k in client.hkeys(keys.cameras)}
    names.update(e.event.camera_id for e in events)
    return sorted(names)


def find_frame(client: redis.Redis, keys: Keys, camera_id: str, frame_id: int, captured_ms: int,
               max_pages: int = 4) -> FrameMessage | None:
    """The frame an event came from, if the (trimmed) frames stream still holds it.

    Capture stamps `captured_ms` just before its XADD, so the entry's id time is a few ms later:
    reading forward from there finds it within a page or two, reading only a handful of JPEGs.
    """
    start = f"{max(0, captured_ms - 50)}-0"
    for _ in range(max_pages):
        entries = client.xrange(keys.frames, min=start, max="+", count=FRAME_PAGE)
        for entry_id, fields in entries:
            meta = fields.get(b"meta", b"")
            if camera_id.encode() not in meta:
                continue
            try:
                frame = decode(FrameMessage, fields)
            except MessageError:
                continue
            if frame.camera_id == camera_id and frame.frame_id == frame_id:
                return frame
            if frame.camera_id == camera_id and frame.frame_id > frame_id:
                return None
        if len(entries) < FRAME_PAGE or parse_id(entries[-1][0])[0] > captured_ms + 2_000:
            return None
        start = "(" + entries[-1][0].decode()
    return None


def latest_frames(client: redis.Redis, keys: Keys, cameras: list[str], max_entries: int = 64) -> dict[str, FrameMessage]:
    """The newest frame of each camera, reading back from the end of the shared frames stream."""
    wanted = set(cameras)
    found: dict[str, FrameMessage] = {}
    end = "+"
    read = 0
    while wanted - set(found) and read < max_entries:
        entries = client.xrevrange(keys.frames, max=end, min="-", count=FRAME_PAGE)
        if not entries:
            break
        read += len(entries)
        for _entry_id, fields in entries:
            try:
                frame = decode(FrameMessage, fields)
            except MessageError:
                continue
            if frame.camera_id in wanted and frame.camera_id not in found:
                found[frame.camera_id] = frame
        end = "(" + entries[-1][0].decode()
    return found


@dataclass
class CameraView:
    camera_id: str
    frame: FrameMessage | None
    boxes: list[EmotionEvent]
    age_ms: int | None


def camera_views(client: redis.Redis, keys: Keys, cameras: list[str], events: list[LiveEvent],
                 fresh_ms: int = 3_000) -> list[CameraView]:
    """Per camera: the newest classified frame with its boxes, else the newest frame without boxes."""
    now_ms = int(time.time() * 1000)
    newest: dict[str, EmotionEvent] = {}
    for live in events:
        newest[live.event.camera_id] = live.event
    views: list[CameraView] = []
    missing: list[str] = []
    for camera in cameras:
        event = newest.get(camera)
        frame = None
        if event is not None and now_ms - event.times.captured_ms <= fresh_ms:
            frame = find_frame(client, keys, camera, event.frame_id, event.times.captured_ms)
        if frame is None:
            missing.append(camera)
            views.append(CameraView(camera, None, [], None))
            continue
        boxes = [e.event for e in events if e.event.camera_id == camera and e.event.frame_id == frame.frame_id
                 and e.event.session_id == frame.session_id]
        views.append(CameraView(camera, frame, boxes, now_ms - frame.captured_ms))
    if missing:
        latest = latest_frames(client, keys, missing)
        for view in views:
            if view.frame is None and view.camera_id in latest:
                view.frame = latest[view.camera_id]
                view.age_ms = now_ms - view.frame.captured_ms
    return views


# --- pipeline health ---------------------------------------------------------------------------

STAGES = (("capture", None, None), ("detector", "frames", DETECTOR_GROUP), ("classifier", "faces", CLASSIFIER_GROUP),
          ("recorder", "events", RECORDER_GROUP))


def pipeline_snapshot(client: redis.Redis, keys: Keys) -> dict:
    """Counters, heartbeats, stream lengths and group state in one dict (all cheap O(1)-ish calls)."""
    streams = {"frames": keys.frames, "faces": keys.faces, "events": keys.events}
    pipe = client.pipeline(transaction=False)
    for name in ("capture", "detector", "classifier", "recorder"):
        pipe.hgetall(keys.stats(name))
    for stream in streams.values():
        pipe.xlen(stream)
        pipe.xlen(keys.dead(stream))
    replies = pipe.execute()
    stats = {name: {text(k): int(v) for k, v in replies[i].items()}
             for i, name in enumerate(("capture", "detector", "classifier", "recorder"))}
    lengths, dead = {}, {}
    for i, name in enumerate(streams):
        lengths[name] = int(replies[4 + 2 * i])
        dead[name] = int(replies[5 + 2 * i])
    groups: dict[str, dict] = {}
    for service, stream_name, group in STAGES:
        if stream_name is None:
            continue
        state = group_state(client, streams[stream_name], group)
        if state.exists:
            groups[service] = {"lag": state.lag, "pending": state.pending, "consumers": state.consumers}
    beats = read_heartbeats(client, keys)
    return {"ts_ms": int(time.time() * 1000), "stats": stats, "lengths": lengths, "dead": dead, "groups": groups,
            "heartbeats": beats}


@dataclass(frozen=True)
class LatencySummary:
    """Capture-to-event latency of the events classified in the last `window_ms`."""

    events: int
    p50_ms: float | None
    p95_ms: float | None
    window_ms: int


def latency_summary(events: list[LiveEvent], now_ms: int, window_ms: int = 60_000) -> LatencySummary:
    latencies = [e.event.latency_ms for e in events if e.event.times.classified_ms >= now_ms - window_ms]
    return LatencySummary(len(latencies), percentile(latencies, 50), percentile(latencies, 95), window_ms)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
