"""Names of every Redis stream, group and key, and the table of streams: who reads each one and how it
stays bounded. Everything derives from one prefix (two deployments can share a Redis), so a change of
naming (sharding for Redis Cluster, say) is made here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_SUFFIX = ":dead"

# Consumer group names: one per consuming service.
DETECTOR_GROUP = "detector"
CLASSIFIER_GROUP = "classifier"
RECORDER_GROUP = "recorder"
CROPS_GROUP = "recorder-crops"  # the opt-in crop recorder (recorder.keep_crops) on the faces stream


@dataclass(frozen=True)
class Keys:
    prefix: str = "emotion"

    @property
    def frames(self) -> str:
        return f"{self.prefix}:frames"

    @property
    def faces(self) -> str:
        return f"{self.prefix}:faces"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @staticmethod
    def dead(stream: str) -> str:
        return stream + DEAD_SUFFIX

    @property
    def model_current(self) -> str:
        """String key: the version every detector and classifier should serve (they poll it)."""
        return f"{self.prefix}:model:current"

    @property
    def model_history(self) -> str:
        """List key: previously current versions, newest first (rollback pops it)."""
        return f"{self.prefix}:model:history"

    def heartbeat(self, service: str, consumer: str) -> str:
        return f"{self.prefix}:heartbeat:{service}:{consumer}"

    def heartbeat_pattern(self, service: str = "*") -> str:
        return f"{self.prefix}:heartbeat:{service}:*"

    def stats(self, service: str) -> str:
        """Hash of counters summed over a service's replicas (frames_in, faces_out, dead, shed, ...)."""
        return f"{self.prefix}:stats:{service}"

    def track(self, camera_id: str, track_id: int) -> str:
        """Smoothed distribution of one face track, shared by classifier replicas."""
        return f"{self.prefix}:track:{camera_id}:{track_id}"

    @property
    def cameras(self) -> str:
        """Hash camera_id -> JSON of the camera's live state (source, session, fps)."""
        return f"{self.prefix}:cameras"

    @property
    def training_queue(self) -> str:
        """Name of the RQ queue of training jobs (RQ keeps it as rq:queue:<name>)."""
        return f"{self.prefix}:training"


# --- the table of streams -----------------------------------------------------------------------

LIVE_WINDOW_MS = 70_000
"""How far back the live views read the events stream: the dashboard shows at most the last minute,
plus a margin for a page that refreshes late. Recorded events stay this long for them."""


@dataclass(frozen=True)
class Retention:
    """How one stream stays bounded.

    `cap` is an approximate MAXLEN. On a `live` stream it is the whole rule, applied on every XADD:
    the oldest entries go whether or not anyone read them (live data is only worth its freshness).
    On the other streams it is a safety cap that only an outage longer than hours reaches: the
    retention step (shared/retention.py) applies it and reports, loudly, any entry it removed
    before every declared group had acknowledged it.

    `after_ack`: entries that every declared group has acknowledged, and that are older than
    `keep_ms`, are trimmed (XTRIM MINID); nothing a declared group has not acknowledged ever is.
    """

    cap: int
    live: bool = False
    after_ack: bool = False
    keep_ms: int = 0


@dataclass(frozen=True)
class Group:
    """A consumer group that must see every entry of its stream before the entry may be trimmed.

    A group that does not exist yet has acknowledged nothing, so it holds back all trimming by
    acknowledgement, unless it is `optional` (a reader that only runs when enabled, such as the crop
    recorder), which counts only while it exists.
    """

    name: str
    optional: bool = False


@dataclass(frozen=True)
class StreamSpec:
    name: str
    key: str
    groups: tuple[Group, ...]
    retention: Retention

    def xadd_options(self) -> dict:
        """Keyword arguments for XADD: the approximate MAXLEN of a live stream, nothing otherwise."""
        if self.retention.live:
            return {"maxlen": self.retention.cap, "approximate": True}
        return {}


# Sizes: at two cameras the pipeline makes about 30 frames/s and 45 faces/s and events/s; a frame is
# ~40 KB of JPEG, a face ~2.7 KB, an event ~0.9 KB of Redis memory.
FRAMES_RETENTION = Retention(cap=300, live=True)  # ~10 s of frames at two cameras, ~12 MB
# Faces linger a few seconds after classification, so a tail reader (bench/soak.py) or a person
# debugging still sees them; the cap (~270 MB) is ~35 minutes of faces with every classifier down.
FACES_RETENTION = Retention(cap=100_000, after_ack=True, keep_ms=5_000)
# Events stay for the live views' window once recorded; the cap (~450 MB) is ~3 hours of a recorder outage.
EVENTS_RETENTION = Retention(cap=500_000, after_ack=True, keep_ms=LIVE_WINDOW_MS)
DEAD_RETENTION = Retention(cap=10_000, live=True)  # each letter was logged and counted when it was written


class StreamTable:
    """Every stream of one deployment with its groups and its retention rule.

    The worker reads it for what it publishes (XADD options) and what it trims; capture for the
    frames cap; `emotion up`, the dashboard and the benches for which groups to watch.
    """

    def __init__(self, keys: Keys, *, frames: Retention = FRAMES_RETENTION, faces: Retention = FACES_RETENTION,
                 events: Retention = EVENTS_RETENTION) -> None:
        """The rules are keyword arguments only so that a test can shorten one (keep_ms=0, a small cap)."""
        self.keys = keys
        self.frames = StreamSpec("frames", keys.frames, (Group(DETECTOR_GROUP),), frames)
        self.faces = StreamSpec("faces", keys.faces, (Group(CLASSIFIER_GROUP), Group(CROPS_GROUP, optional=True)),
                                faces)
        self.events = StreamSpec("events", keys.events, (Group(RECORDER_GROUP),), events)
        self._by_key = {spec.key: spec for spec in (self.frames, self.faces, self.events)}

    def __iter__(self):
        return iter(self._by_key.values())

    def spec(self, key: str) -> StreamSpec | None:
        """The spec of a stream by its key; every dead-letter stream is capped alike; None for any other
        stream not in the table (a test's output stream)."""
        if key in self._by_key:
            return self._by_key[key]
        if key.endswith(DEAD_SUFFIX):
            return StreamSpec("dead", key, (), DEAD_RETENTION)
        return None
