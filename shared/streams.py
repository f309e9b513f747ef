"""Names of every Redis stream, group and key, and the table of streams: who reads each one and how it
stays bounded. Everything derives from one prefix (two deployments can share a Redis), so a change of
naming is made here and nowhere else.

Shards. The streams are split into `shards` (EMOTION_SHARDS, default 1) by camera: a camera's
frames, the faces found in them and their events all live in one shard, and so do the keys a
transaction writes together with them (the stats counters, the classifier's per-track state, the
detector's lease and track ids). Each shard's keys carry one Redis Cluster hash tag
(`emotion:{0}:frames`, `emotion:{0}:faces`, ...), so every MULTI/EXEC the worker loop commits stays
in one slot, as Redis Cluster requires, and different shards can live on different masters. The
tag of shard k of S is its number, salted (`{1.3}`) until its slot falls in the k-th S-th of the
slot space: on a cluster whose masters split the slots evenly (what `redis-cli --cluster create`
does), S shards spread over the masters instead of landing where the digits happen to hash.
Keys that no transaction writes together with a shard's (heartbeats, the cameras hash, the model
pointers, the layout) carry no shard tag.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

if TYPE_CHECKING:
    from shared.settings import Settings

DEAD_SUFFIX = ":dead"

# Consumer group names: one per consuming service.
DETECTOR_GROUP = "detector"
CLASSIFIER_GROUP = "classifier"
RECORDER_GROUP = "recorder"
CROPS_GROUP = "recorder-crops"  # the opt-in crop recorder (recorder.keep_crops) on the faces stream

MAX_SHARDS = 256


StreamName = Literal["frames", "faces", "events"]
STREAM_NAMES: tuple[StreamName, ...] = ("frames", "faces", "events")


@lru_cache(maxsize=4 * MAX_SHARDS)
def shard_tag(shard: int, shards: int) -> str:
    """The hash tag (without braces) of shard `shard` of `shards`: see the module docstring."""
    low = shard * REDIS_CLUSTER_HASH_SLOTS // shards
    high = (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
    candidate, salt = str(shard), 0
    while not low <= key_slot(candidate.encode()) < high:
        salt += 1
        candidate = f"{shard}.{salt}"
    return candidate


def camera_shard(camera_id: str, shards: int) -> int:
    """The shard of a camera that was not given one: a stable hash of its id (the same in every
    process and every run, unlike Python's hash())."""
    digest = hashlib.blake2b(camera_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


@dataclass(frozen=True)
class Keys:
    """The key names of one deployment, seen from one shard (`shard`, of `shards`).

    `frames`, `faces`, `events`, `stats(...)`, `track(...)`, `lease(...)` name the keys of this
    view's shard; `of_shard(k)` and `all_shards()` give the other views. A reader of a whole stream
    (the dashboard, `emotion up`, the benches) iterates `all_shards()`.
    """

    prefix: str = "emotion"
    shards: int = 1
    shard: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS or not 0 <= self.shard < self.shards:
            raise ValueError(f"shard {self.shard} of {self.shards}: need 1 <= shards <= {MAX_SHARDS}, "
                             f"0 <= shard < shards")

    @classmethod
    def of(cls, settings: "Settings") -> "Keys":
        return cls(settings.prefix, settings.shards)

    # --- shards -------------------------------------------------------------------------------

    @property
    def tag(self) -> str:
        """This shard's hash tag, braces included: every key of the shard contains it."""
        return "{" + shard_tag(self.shard, self.shards) + "}"

    def of_shard(self, shard: int) -> "Keys":
        return replace(self, shard=shard)

    def all_shards(self) -> list["Keys"]:
        return [self.of_shard(k) for k in range(self.shards)]

    def shard_of(self, camera_id: str) -> int:
        return camera_shard(camera_id, self.shards)

    def _in_shard(self, name: str) -> str:
        return f"{self.prefix}:{self.tag}:{name}"

    # --- the streams of this shard --------------------------------------------------------------

    @property
    def frames(self) -> str:
        return self._in_shard("frames")

    @property
    def faces(self) -> str:
        return self._in_shard("faces")

    @property
    def events(self) -> str:
        return self._in_shard("events")

    def stream(self, name: "StreamName") -> str:
        """The key of this shard's stream called `name` (as the table of streams names them)."""
        if name not in STREAM_NAMES:
            raise ValueError(f"unknown stream {name!r} (streams: {', '.join(STREAM_NAMES)})")
        return self._in_shard(name)

    @staticmethod
    def dead(stream: str) -> str:
        """The dead-letter stream of `stream` (same hash tag: dead-lettered in the same transaction)."""
        return stream + DEAD_SUFFIX

    def stats(self, service: str) -> str:
        """Hash of counters of a service in this shard, summed over its replicas (frames_in, faces_out,
        dead, shed, ...): written in the same transaction as the acknowledgements it counts. The
        service's totals are the sum over every shard (shared/shards.py: service_stats)."""
        return self._in_shard(f"stats:{service}")

    def track(self, camera_id: str, track_id: int) -> str:
        """Smoothed distribution of one face track, shared by classifier replicas (written with the
        events of the shard the camera's faces are in)."""
        return self._in_shard(f"track:{camera_id}:{track_id}")

    def track_ids(self, camera_id: str) -> str:
        """Counter the detector reserves blocks of track ids from, so a camera's tracks never reuse an
        id when the camera moves to another detector replica (or the detector restarts)."""
        return self._in_shard(f"track-ids:{camera_id}")

    def lease(self, role: str) -> str:
        """Which replica of `role` (the detector) owns this shard: a string with a TTL."""
        return self._in_shard(f"lease:{role}")

    def lease_epoch(self, role: str) -> str:
        """Counter incremented at every acquisition of the lease: what commits are fenced with."""
        return self._in_shard(f"lease-epoch:{role}")

    # --- keys of the whole deployment -------------------------------------------------------------

    @property
    def layout(self) -> str:
        """String key: the number of shards the deployment's streams are laid out in."""
        return f"{self.prefix}:shards"

    @property
    def model_current(self) -> str:
        """String key: the version every detector and classifier should serve (they poll it). Tagged
        with its history so that a promotion (one transaction over both) is valid on Redis Cluster."""
        return f"{self.prefix}:{{model}}:current"

    @property
    def model_history(self) -> str:
        """List key: previously current versions, newest first (rollback pops it)."""
        return f"{self.prefix}:{{model}}:history"

    def heartbeat(self, service: str, consumer: str) -> str:
        return f"{self.prefix}:heartbeat:{service}:{consumer}"

    def heartbeat_pattern(self, service: str = "*") -> str:
        return f"{self.prefix}:heartbeat:{service}:*"

    @property
    def cameras(self) -> str:
        """Hash camera_id -> JSON of the camera's live state (source, session, fps, shard)."""
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
    shard: int = 0

    def xadd_options(self) -> dict:
        """Keyword arguments for XADD: the approximate MAXLEN of a live stream, nothing otherwise."""
        if self.retention.live:
            return {"maxlen": self.retention.cap, "approximate": True}
        return {}

    @property
    def required_groups(self) -> tuple[str, ...]:
        return tuple(group.name for group in self.groups if not group.optional)


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
    """Every stream of one deployment, in every shard, with its groups and its retention rule.

    The worker reads it for what it publishes (XADD options) and what it trims; capture for the
    frames cap; `emotion up`, the dashboard and the benches for which groups to watch, in which
    shards (`sharded`). Each stream has the same groups and rule in every shard.
    """

    def __init__(self, keys: Keys, *, frames: Retention = FRAMES_RETENTION, faces: Retention = FACES_RETENTION,
                 events: Retention = EVENTS_RETENTION) -> None:
        """The rules are keyword arguments only so that a test can shorten one (keep_ms=0, a small cap)."""
        self.keys = keys
        self._rules = {"frames": ((Group(DETECTOR_GROUP),), frames),
                       "faces": ((Group(CLASSIFIER_GROUP), Group(CROPS_GROUP, optional=True)), faces),
                       "events": ((Group(RECORDER_GROUP),), events)}
        self._by_key = {spec.key: spec for shard in keys.all_shards() for spec in self._specs(shard)}
        # The streams of this view's shard, by name (what a service of that shard reads and writes).
        self.frames, self.faces, self.events = self._specs(keys)

    def _specs(self, shard: Keys) -> tuple[StreamSpec, ...]:
        return tuple(StreamSpec(name, shard.stream(name), *self._rules[name], shard=shard.shard)
                     for name in STREAM_NAMES)

    def __iter__(self):
        """Every stream of every shard."""
        return iter(self._by_key.values())

    def sharded(self, name: str) -> list[StreamSpec]:
        """One stream (`frames`, `faces`, `events`) in every shard, shard 0 first."""
        return [spec for spec in self._by_key.values() if spec.name == name]

    def spec(self, key: str) -> StreamSpec | None:
        """The spec of a stream by its key; every dead-letter stream is capped alike; None for any other
        stream not in the table (a test's output stream)."""
        if key in self._by_key:
            return self._by_key[key]
        if key.endswith(DEAD_SUFFIX):
            return StreamSpec("dead", key, (), DEAD_RETENTION)
        return None
