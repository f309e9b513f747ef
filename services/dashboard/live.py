"""Live data from Redis for the Live and Health pages: recent events, camera frames, pipeline state.

Events are read incrementally: `EventWindow` keeps the last minute of decoded events in memory and
each refresh asks Redis only for entries newer than the last one it has in each shard (XRANGE with an
exclusive start), so a page refreshing every second costs one small read per shard however busy the
pipeline is. Events of all shards are ordered by entry id, then shard.
Frames are big (JPEG), so they are fetched one at a time, by time window around the wanted frame, in
the shard of its camera.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass

from shared.heartbeats import read_heartbeats
from shared.redis_conn import Client
from shared.schemas import EmotionEvent, FrameMessage, MessageError, decode
from shared.shards import advance, entries_after, sharded_group_state, stats_of, stream_lengths
from shared.stream_state import format_id, parse_id, text
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
    shard: int = 0

    @property
    def position(self) -> tuple[int, int, int]:
        """Where the event is in the window: its entry id, then its shard."""
        return (*self.entry_id, self.shard)

    @property
    def stream_id(self) -> str:
        """`position` as text (the shard only when it is not the first): what a page keeps as its cursor."""
        return format_id(self.entry_id) + (f"-{self.shard}" if self.shard else "")


def parse_position(stream_id: str) -> tuple[int, int, int]:
    ms, _, rest = stream_id.partition("-")
    seq, _, shard = rest.partition("-")
    return int(ms), int(seq or 0), int(shard or 0)


class EventWindow:
    """The last `WINDOW_MS` of events of every shard, shared by every browser the dashboard serves."""

    def __init__(self, client: Client, keys: Keys, window_ms: int = WINDOW_MS) -> None:
        self.client, self.keys, self.window_ms = client, keys, window_ms
        self._events: deque[LiveEvent] = deque()
        self._cursors: dict[int, tuple[int, int]] | None = None
        self._lock = threading.Lock()
        self.undecodable = 0

    def refresh(self) -> list[LiveEvent]:
        """Read what is new in the events streams; returns every event in the window, oldest first."""
        with self._lock:
            now_ms = int(time.time() * 1000)
            if self._cursors is None:
                self._cursors = {shard: (now_ms - self.window_ms, 0) for shard in range(self.keys.shards)}
            new: list[LiveEvent] = []
            for _ in range(MAX_CATCH_UP_READS):
                entries = entries_after(self.client, self.keys, "events", self._cursors, READ_COUNT)
                advance(self._cursors, entries)
                for entry in entries:
                    try:
                        new.append(LiveEvent(parse_id(entry.entry_id), decode(EmotionEvent, entry.fields), entry.shard))
                    except MessageError:
                        self.undecodable += 1
                per_shard = [sum(1 for e in entries if e.shard == k) for k in range(self.keys.shards)]
                if max(per_shard, default=0) < READ_COUNT:
                    break
            new.sort(key=lambda e: e.position)
            if new and self._events and new[0].position < self._events[-1].position:
                self._events = deque(sorted([*self._events, *new], key=lambda e: e.position))
            else:
                self._events.extend(new)
            horizon = now_ms - self.window_ms
            while self._events and self._events[0].entry_id[0] < horizon:
                self._events.popleft()
            return list(self._events)


def events_after(events: list[LiveEvent], stream_id: str | None) -> list[LiveEvent]:
    if not stream_id:
        return events
    after = parse_position(stream_id)
    return [e for e in events if e.position > after]


def capturing_cameras(client: Client, keys: Keys) -> set[str]:
    """Cameras whose capture is running now: its heartbeat is live (capture deletes it when it stops)."""
    return {str(beat["camera_id"]) for beat in read_heartbeats(client, keys, "capture") if "camera_id" in beat}


def camera_shards(client: Client, keys: Keys) -> dict[str, int]:
    """The shard each registered camera publishes to (capture records it in the cameras hash)."""
    shards: dict[str, int] = {}
    for camera, raw in client.hgetall(keys.cameras).items():
        try:
            shard = int(json.loads(raw).get("shard", 0))
        except (ValueError, TypeError, AttributeError):
            continue
        if 0 <= shard < keys.shards:
            shards[text(camera)] = shard
    return shards


def known_cameras(client: Client, keys: Keys, events: list[LiveEvent]) -> list[str]:
    """Cameras that registered themselves (capture writes the cameras hash) or sent recent events."""
    names = {k.decode() for k in client.hkeys(keys.cameras)}
    names.update(e.event.camera_id for e in events)
    return sorted(names)


def find_frame(client: Client, keys: Keys, camera_id: str, frame_id: int, captured_ms: int,
               max_pages: int = 4) -> FrameMessage | None:
    """The frame an event came from, if the (trimmed) frames stream of `keys`' shard (the event's) still
    holds it.

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


def latest_frames(client: Client, keys: Keys, cameras: list[str], max_entries: int = 64) -> dict[str, FrameMessage]:
    """The newest frame of each camera, reading back from the end of its shard's frames stream (every
    shard for a camera that did not say which)."""
    shard_of = camera_shards(client, keys) if keys.shards > 1 else {}
    found: dict[str, FrameMessage] = {}
    for shard in keys.all_shards():
        wanted = {c for c in cameras if shard_of.get(c, shard.shard) == shard.shard and c not in found}
        if wanted:
            found.update(_latest_in_shard(client, shard, wanted, max_entries))
    return found


def _latest_in_shard(client: Client, keys: Keys, wanted: set[str], max_entries: int) -> dict[str, FrameMessage]:
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


def camera_views(client: Client, keys: Keys, cameras: list[str], events: list[LiveEvent],
                 fresh_ms: int = 3_000) -> list[CameraView]:
    """Per camera: the newest classified frame with its boxes, else the newest frame without boxes."""
    now_ms = int(time.time() * 1000)
    newest: dict[str, LiveEvent] = {}
    for live in events:
        newest[live.event.camera_id] = live
    views: list[CameraView] = []
    missing: list[str] = []
    for camera in cameras:
        live = newest.get(camera)
        frame = None
        if live is not None and now_ms - live.event.times.captured_ms <= fresh_ms:
            frame = find_frame(client, keys.of_shard(live.shard), camera, live.event.frame_id,
                               live.event.times.captured_ms)
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


def pipeline_snapshot(client: Client, keys: Keys) -> dict:
    """Counters, heartbeats, stream lengths and group state in one dict (all cheap O(1)-ish calls per
    shard), summed over the shards."""
    stats = stats_of(client, keys, ("capture", "detector", "classifier", "recorder"))
    lengths, dead = {}, {}
    for name in ("frames", "faces", "events"):
        lengths[name], dead[name] = stream_lengths(client, keys, name)
    groups: dict[str, dict] = {}
    for service, stream_name, group in STAGES:
        if stream_name is None:
            continue
        state = sharded_group_state(client, keys, stream_name, group)
        if state.exists:
            groups[service] = {"lag": state.lag, "pending": state.pending, "consumers": state.consumers}
    beats = read_heartbeats(client, keys)
    return {"ts_ms": int(time.time() * 1000), "stats": stats, "lengths": lengths, "dead": dead, "groups": groups,
            "heartbeats": beats, "shards": keys.shards}


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
