"""The JSON API's contract: query-parameter models (validated with pydantic, so a bad parameter is a
clear 400) and response models. The OpenAPI document is generated from these same classes, so the
schema a client reads is the code that validates and serializes.

Times are ISO 8601 in UTC on the way out; on the way in, a date-time without an offset is read as UTC.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, create_model, model_validator

from shared.emotions import EMOTIONS
from shared.registry import ROLES
from shared.schemas import CAMERA_ID_PATTERN, BBox
from shared.streams import MAX_SHARDS
from shared.store.writer import to_utc

API_VERSION = "1.0.0"
MAX_PAGE = 1000  # the most events (or sessions) one response carries; documented in the OpenAPI document
DEFAULT_PAGE = 100
DEFAULT_RANGE = timedelta(hours=1)
MAX_BUCKETS = 10_000  # an aggregate answers at most this many buckets (a week of minutes, a year of hours)
BUCKET_LENGTHS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 31, tzinfo=timezone.utc)
EPOCH = EARLIEST

Label = Literal[EMOTIONS]  # type: ignore[valid-type]
Role = Literal[ROLES]  # type: ignore[valid-type]


# --- query parameters ---------------------------------------------------------------------------

def _utc_datetime(value: Any) -> datetime:
    """ISO 8601 text (or a datetime) as an aware UTC datetime between 1970 and 9999, else ValueError."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time such as 2026-01-01T00:00:00Z") from None
    if not isinstance(value, datetime):
        raise ValueError("expected an ISO 8601 date-time such as 2026-01-01T00:00:00Z")
    try:
        value = to_utc(value)
    except OverflowError:
        raise ValueError("date-time out of range") from None
    if not EARLIEST <= value <= LATEST:
        raise ValueError("date-time must be between 1970-01-01 and 9999-12-31")
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_utc_datetime)]
CameraId = Annotated[str, Field(min_length=1, max_length=64, pattern=CAMERA_ID_PATTERN,
                                description="a camera id, as capture names it")]
# Session ids are free text to capture; control characters are refused (PostgreSQL cannot even compare NUL).
SessionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$",
                                 description="a session id")]
Cursor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$",
                              description="next_cursor of the previous page (opaque)")]
StreamId = Annotated[str, Field(max_length=42 * MAX_SHARDS, pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?(_[0-9]{1,20}(-[0-9]{1,20})?)*$",
                                description="a Redis stream entry id (the `id:` of an SSE message); with several "
                                            "shards, one per shard joined by `_`")]


class _Query(BaseModel):
    # Unknown parameters are refused: a misspelt filter must not silently return everything.
    model_config = ConfigDict(extra="forbid")


class TimeRangeQuery(_Query):
    start: UtcDatetime | None = Field(None, description="start of the range, inclusive (default: `end` minus one hour)")
    end: UtcDatetime | None = Field(None, description="end of the range, exclusive (default: now)")

    @model_validator(mode="after")
    def _resolve_range(self) -> "TimeRangeQuery":
        end = self.end or datetime.now(timezone.utc)
        start = self.start or end - DEFAULT_RANGE
        if end <= start:
            raise ValueError("`end` must be after `start`")
        self.start, self.end = start, end
        return self


def encode_cursor(time: datetime, row_id: int) -> str:
    micros = (to_utc(time) - EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{int(row_id)}".encode()).rstrip(b"=").decode()


def decode_cursor(text: str) -> tuple[datetime, int]:
    try:
        micros, _, row_id = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode().partition(":")
        return EPOCH + timedelta(microseconds=int(micros)), int(row_id)
    except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError):
        raise ValueError("not a cursor returned by this API (use the page's next_cursor as it is)") from None


class EventsQuery(TimeRangeQuery):
    camera: CameraId | None = Field(None, description="only this camera's events")
    session: SessionId | None = Field(None, description="only this session's events")
    label: Label | None = Field(None, description="only events classified with this emotion")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description=f"events per page (at most {MAX_PAGE})")
    cursor: Cursor | None = Field(None, description="continue after the page that returned this `next_cursor`")
    _after: tuple[datetime, int] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _decode_cursor(self) -> "EventsQuery":
        self._after = decode_cursor(self.cursor) if self.cursor is not None else None
        return self

    @property
    def after(self) -> tuple[datetime, int] | None:
        return self._after


class StreamQuery(_Query):
    camera: CameraId | None = Field(None, description="only this camera's events")
    last_event_id: StreamId | None = Field(None, description="resume after this entry (the Last-Event-ID header, "
                                                             "which EventSource sends on reconnect, wins)")


class SessionsQuery(_Query):
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description=f"most recent sessions to list (at most {MAX_PAGE})")


class AggregatesQuery(TimeRangeQuery):
    bucket: Literal["minute", "hour", "day"] = Field("minute", description="bucket length (UTC boundaries)")
    camera: CameraId | None = Field(None, description="only this camera's events")

    @model_validator(mode="after")
    def _bounded(self) -> "AggregatesQuery":
        buckets = (self.end - self.start) / BUCKET_LENGTHS[self.bucket]
        if buckets > MAX_BUCKETS:
            raise ValueError(f"the range holds {math.ceil(buckets):,} {self.bucket}s, more than {MAX_BUCKETS:,}: "
                             "narrow it or use a longer bucket")
        return self


class NoQuery(_Query):
    """An operation without query parameters (the auth `token` is always allowed)."""


# --- responses ----------------------------------------------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


Probabilities = create_model(
    "Probabilities", __config__=ConfigDict(extra="forbid"),
    __doc__="One probability per emotion, in FER order (means are over events, so they sum to 1 as well).",
    **{e: (float, Field(description=f"probability of {e}")) for e in EMOTIONS})
LabelCounts = create_model(
    "LabelCounts", __config__=ConfigDict(extra="forbid"), __doc__="Events per emotion, every emotion present.",
    **{e: (int, Field(ge=0)) for e in EMOTIONS})
LabelShares = create_model(
    "LabelShares", __config__=ConfigDict(extra="forbid"), __doc__="Share of the events per emotion (0 to 1).",
    **{e: (float, Field(ge=0)) for e in EMOTIONS})


class Latency(_Out):
    detect_ms: int = Field(description="detected - captured")
    classify_ms: int = Field(description="classified - detected")
    total_ms: int = Field(description="classified - captured")


class Event(_Out):
    """One classified face: a row of the store, or (live feed) an entry of the events stream."""

    event_id: str
    time: datetime = Field(description="capture time of the frame")
    camera_id: str
    session_id: str
    frame_id: int
    face_index: int
    track_id: int
    bbox: BBox = Field(description="in pixels of the captured frame")
    detection_confidence: float | None = Field(description="the face detector's score (null for older events)")
    label: Label
    confidence: float = Field(description="probability of `label`")
    probabilities: Probabilities  # type: ignore[valid-type]
    smoothed_label: Label
    smoothed: Probabilities = Field(description="per-track smoothed probabilities")  # type: ignore[valid-type]
    model_version: str
    latency: Latency
    recorded: datetime | None = Field(description="when the recorder stored it (null on the live feed)")

    @classmethod
    def from_row(cls, row: dict) -> "Event":
        """From a store row (shared.store.writer.event_row's columns, as queries return them)."""
        return cls(
            event_id=row["event_id"], time=optional_time(row["time"]), camera_id=row["camera_id"], session_id=row["session_id"],
            frame_id=int(row["frame_id"]), face_index=int(row["face_index"]), track_id=int(row["track_id"]),
            bbox=BBox(x=int(row["x"]), y=int(row["y"]), w=int(row["w"]), h=int(row["h"])),
            detection_confidence=optional_float(row.get("detection_confidence")), label=row["label"],
            confidence=float(row["confidence"]),
            probabilities=Probabilities(**{e: float(row[f"p_{e}"]) for e in EMOTIONS}),
            smoothed_label=row["smoothed_label"], smoothed=Probabilities(**{e: float(row[f"s_{e}"]) for e in EMOTIONS}),
            model_version=row["model_version"],
            latency=Latency(detect_ms=int(row["detect_ms"]), classify_ms=int(row["classify_ms"]),
                            total_ms=int(row["total_ms"])),
            recorded=optional_time(row.get("recorded")))


class EventsPage(_Out):
    events: list[Event] = Field(description="oldest first, in (time, id) order")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")
    limit: int


class StreamEnd(_Out):
    """`data` of the live feed's final `end` event."""

    reason: str
    last_event_id: str = Field(description="send it back as Last-Event-ID to continue without a gap")


class Session(_Out):
    session_id: str
    camera_id: str | None
    source: str | None
    started: datetime | None
    ended: datetime | None
    last_event: datetime | None
    event_count: int


class SessionList(_Out):
    sessions: list[Session] = Field(description="most recent first")


class TimelineBucket(_Out):
    bucket: datetime = Field(description="start of the bucket (UTC)")
    total: int = Field(ge=1)
    counts: LabelCounts  # type: ignore[valid-type]
    mean_probabilities: Probabilities = Field(description="mean over every event of the bucket")  # type: ignore


class SessionReport(_Out):
    """The data of the dashboard's session report: counts, shares and the timeline."""

    session_id: str
    session: Session | None = Field(description="the sessions row (null when only events are known)")
    total: int
    bucket: Literal["second", "minute", "hour", "day"] = Field(description="timeline resolution, chosen from the "
                                                                            "session's length")
    counts: LabelCounts  # type: ignore[valid-type]
    shares: LabelShares  # type: ignore[valid-type]
    timeline: list[TimelineBucket]


class Aggregates(_Out):
    start: datetime
    end: datetime
    bucket: Literal["minute", "hour", "day"]
    camera: str | None
    total: int
    counts: LabelCounts  # type: ignore[valid-type]
    timeline: list[TimelineBucket] = Field(description="buckets with at least one event, oldest first")


class CameraLive(BaseModel):
    """What a running capture announced about itself."""

    model_config = ConfigDict(extra="allow")
    source: str | None = None
    session_id: str | None = None
    fps: float | None = None
    started_ms: int | None = None


class Camera(_Out):
    camera_id: str
    source: str | None
    first_seen: datetime | None
    last_seen: datetime | None
    last_session_id: str | None
    event_count: int = Field(description="events recorded")
    live: CameraLive | None = Field(description="the capture's live state, when it has registered in Redis")


class CameraList(_Out):
    cameras: list[Camera]


class RoleState(_Out):
    role: Role
    current: str | None = Field(description="version the role's pointer names (null: none promoted)")
    serving: str | None = Field(description="version of the model that answers for this role now")
    source: Literal["registry", "default"] | None = Field(description="registry version, or the shipped default")
    error: str | None = Field(description="why no model can answer for this role, when none can")


class ModelVersion(_Out):
    version: str
    architecture: str
    created: str | None
    params: int | None
    sha256: str | None
    metrics: dict[str, Any] = Field(description="evaluation results recorded at export")
    current_for: list[Role] = Field(description="roles whose pointer names this version")


class ModelsReport(_Out):
    roles: list[RoleState]
    versions: list[ModelVersion] = Field(description="every registered version, oldest first")


class GroupState(_Out):
    lag: int | None = Field(description="entries not yet delivered to the group (null: Redis cannot tell)")
    pending: int = Field(description="delivered, not yet acknowledged")
    consumers: int


class StageHealth(_Out):
    service: str
    replicas: int = Field(description="live heartbeats")
    input_stream: str | None
    length: int | None = Field(description="entries in the input stream")
    dead_letters: int | None = Field(description="entries in the input stream's dead-letter stream")
    group: GroupState | None
    counters: dict[str, int] = Field(description="cumulative counters summed over replicas; rates are differences "
                                                 "between two calls")


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="allow")
    service: str | None = None
    consumer: str | None = None
    host: str | None = None
    pid: int | None = None
    ts_ms: int | None = None
    started_ms: int | None = None
    entries: int | None = None
    dead: int | None = None
    busy_s: float | None = None


class LatencySummary(_Out):
    events: int = Field(description="events classified in the window")
    p50_ms: float | None
    p95_ms: float | None
    window_ms: int


class Health(_Out):
    time: datetime
    stages: list[StageHealth]
    heartbeats: list[Heartbeat]
    latency: LatencySummary = Field(description="capture -> event latency over the last minute")
    shed_frames: int = Field(description="frames capture dropped under load")
    dead_letters: int = Field(description="entries in every dead-letter stream")


class Error(_Out):
    error: str = Field(description="one line saying what is wrong")
    details: list[dict[str, Any]] | None = Field(None, description="per-parameter validation errors")


# --- helpers ------------------------------------------------------------------------------------

def optional_float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def optional_time(value: Any) -> datetime | None:
    """None for SQL NULL and pandas NaT, else an aware UTC datetime (SQLite hands back naive UTC ones)."""
    if value is None or pd.isna(value):
        return None
    return to_utc(pd.Timestamp(value).to_pydatetime())
