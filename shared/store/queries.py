"""Read side of the event store: every query the dashboard, its JSON API and `emotion export` run.

All functions take an Engine and UTC datetimes (naive ones are read as UTC) and return pandas
DataFrames whose datetime columns are timezone-aware UTC. Ranges are half-open: [start, end).

Minute-or-coarser aggregates read the `rollups_minute` table for the whole minutes inside the range
and the raw events only for the partial minutes at its two edges, so they are exact and a month of
data costs a scan of about 43 200 x cameras x labels rollup rows, not of 26 million events.
Second buckets, session reports and exports read raw events through the time and session indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator, Literal

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shared.emotions import EMOTIONS
from shared.store.schema import PROB_COLUMNS, SUM_COLUMNS, cameras, events, rollups_minute, sessions
from shared.store.writer import floor_minute, to_utc

Bucket = Literal["second", "minute", "hour", "day"]
BUCKETS: tuple[str, ...] = ("second", "minute", "hour", "day")
# SQLite stores DateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's fixed format): a bucket is a prefix
# of that text plus zeros, several times cheaper than strftime() over a month of rollups.
_SQLITE_PREFIX = {"second": (19, ""), "minute": (16, ":00"), "hour": (13, ":00:00"), "day": (10, " 00:00:00")}
EVENT_COLUMNS = [c.name for c in events.columns if c.name != "id"]
_LABEL_ORDER = {label: i for i, label in enumerate(EMOTIONS)}


@dataclass
class SessionReport:
    """What the dashboard's session page shows. Every frame is empty (with its columns) for an empty session."""

    session_id: str
    session: dict | None = None  # the sessions row (camera_id, source, started, ended, event_count, ...)
    total: int = 0
    bucket: str = "second"  # resolution of mean_probabilities, chosen from the session's length
    counts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"label": list(EMOTIONS), "count": 0}))
    shares: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["label", "count", "share"]))
    mean_probabilities: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["bucket", *PROB_COLUMNS]))
    counts_over_time: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["bucket", "label", "count"]))
    cameras: dict[str, int] = field(default_factory=dict)  # faces per camera (a session may have several)


# --- helpers ---------------------------------------------------------------------------------------

def _check_bucket(bucket: str | None) -> None:
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")


def _bucket_expr(dialect: str, column, bucket: str):
    """Start of the bucket containing `column`, as UTC (text on SQLite, timestamp on PostgreSQL).

    Literals, not bound parameters: PostgreSQL must see the same expression in SELECT and GROUP BY.
    """
    if dialect == "sqlite":
        length, zeros = _SQLITE_PREFIX[bucket]
        prefix = sa.func.substr(column, 1, sa.literal_column(str(length)))
        return prefix.op("||")(sa.literal_column(f"'{zeros}'")) if zeros else prefix
    return sa.func.date_trunc(sa.literal_column(f"'{bucket}'"), sa.func.timezone(sa.literal_column("'UTC'"), column))


def _utc_columns(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for column in columns:
        if column in frame and len(frame):
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601") \
                if frame[column].dtype == object else pd.to_datetime(frame[column], utc=True)
        elif column in frame:
            frame[column] = pd.Series([], dtype="datetime64[ns, UTC]")
    return frame


def _frame(conn: Connection, query) -> pd.DataFrame:
    result = conn.execute(query)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    return to_utc(start), to_utc(end)


def _raw_sums(conn: Connection, start: datetime, end: datetime, bucket: str | None, camera_id: str | None):
    label_sums = [sa.func.count().label("count"), *(sa.func.sum(events.c[p]).label(s)
                                                   for p, s in zip(PROB_COLUMNS, SUM_COLUMNS))]
    keys = [events.c.label]
    if bucket is not None:
        keys.insert(0, _bucket_expr(conn.dialect.name, events.c.time, bucket).label("bucket"))
    query = sa.select(*keys, *label_sums).where(events.c.time >= start, events.c.time < end)
    if camera_id is not None:
        query = query.where(events.c.camera_id == camera_id)
    return _frame(conn, query.group_by(*keys))


def _rollup_sums(conn: Connection, start: datetime, end: datetime, bucket: str | None, camera_id: str | None):
    r = rollups_minute
    label_sums = [sa.func.sum(r.c["count"]).label("count"), *(sa.func.sum(r.c[s]).label(s) for s in SUM_COLUMNS)]
    keys = [r.c.label]
    if bucket is not None:
        keys.insert(0, _bucket_expr(conn.dialect.name, r.c.minute, bucket).label("bucket"))
    query = sa.select(*keys, *label_sums).where(r.c.minute >= start, r.c.minute < end)
    if camera_id is not None:
        query = query.where(r.c.camera_id == camera_id)
    return _frame(conn, query.group_by(*keys))


def _sums(engine: Engine, start: datetime, end: datetime, bucket: str | None, camera_id: str | None) -> pd.DataFrame:
    """Per (bucket, label) or per label: count and the seven probability sums over [start, end), exact."""
    _check_bucket(bucket)
    start, end = _range(start, end)
    keys = (["bucket"] if bucket is not None else []) + ["label"]
    parts: list[pd.DataFrame] = []
    if end > start:
        with engine.connect() as conn:
            inner_start = floor_minute(start) + (timedelta(minutes=1) if floor_minute(start) < start else timedelta())
            inner_end = floor_minute(end)
            if bucket == "second" or inner_end <= inner_start:
                parts.append(_raw_sums(conn, start, end, bucket, camera_id))
            else:
                parts.append(_rollup_sums(conn, inner_start, inner_end, bucket, camera_id))
                if start < inner_start:
                    parts.append(_raw_sums(conn, start, inner_start, bucket, camera_id))
                if inner_end < end:
                    parts.append(_raw_sums(conn, inner_end, end, bucket, camera_id))
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({**{k: pd.Series(dtype="datetime64[ns, UTC]" if k == "bucket" else object) for k in keys},
                             "count": pd.Series(dtype="int64"), **{s: pd.Series(dtype="float64") for s in SUM_COLUMNS}})
    frame = pd.concat(parts, ignore_index=True)
    frame = _utc_columns(frame, "bucket")
    frame["count"] = frame["count"].astype("int64")
    for s in SUM_COLUMNS:
        frame[s] = frame[s].astype("float64")
    if len(parts) > 1:
        frame = frame.groupby(keys, as_index=False, sort=False)[["count", *SUM_COLUMNS]].sum()
    frame["_order"] = frame["label"].map(_LABEL_ORDER)
    return frame.sort_values([*keys[:-1], "_order"]).drop(columns="_order").reset_index(drop=True)


def _means(frame: pd.DataFrame) -> pd.DataFrame:
    for p, s in zip(PROB_COLUMNS, SUM_COLUMNS):
        frame[p] = frame[s] / frame["count"].where(frame["count"] > 0)
    return frame.drop(columns=list(SUM_COLUMNS))


# --- the queries the dashboard imports ---------------------------------------------------------------

def events_frame(engine: Engine, start: datetime, end: datetime, camera_id: str | None = None,
                 limit: int | None = None) -> pd.DataFrame:
    """Raw events in [start, end), oldest first (at most `limit` of them)."""
    start, end = _range(start, end)
    with engine.connect() as conn:
        frame = _frame(conn, _events_query(start, end, camera_id).limit(limit))
    if frame.empty:
        frame = pd.DataFrame(columns=EVENT_COLUMNS)
    return _utc_columns(frame, "time", "recorded")


def events_page(engine: Engine, start: datetime, end: datetime, *, camera_id: str | None = None,
                session_id: str | None = None, label: str | None = None, after: tuple[datetime, int] | None = None,
                limit: int = 100) -> pd.DataFrame:
    """One page of keyset pagination: at most `limit` raw events in [start, end) that come after the
    position `after` = (time, id) in (time, id) order, oldest first, with their `id` column.

    The next page starts after the last row's (time, id), so pages never skip nor repeat a row however
    many events arrive meanwhile, and a deep page costs an index seek, not an OFFSET scan.
    """
    start, end = _range(start, end)
    query = _events_query(start, end, camera_id, session_id=session_id, label=label, with_id=True)
    if after is not None:
        after_time, after_id = to_utc(after[0]), int(after[1])
        # The plain bound lets the planner use ix_events_time; the row comparison breaks ties on id.
        query = query.where(events.c.time >= after_time,
                            sa.tuple_(events.c.time, events.c.id) > sa.tuple_(sa.literal(after_time, events.c.time.type),
                                                                               sa.literal(after_id, events.c.id.type)))
    with engine.connect() as conn:
        frame = _frame(conn, query.limit(limit))
    if frame.empty:
        frame = pd.DataFrame(columns=["id", *EVENT_COLUMNS])
    return _utc_columns(frame, "time", "recorded")


def _events_query(start: datetime, end: datetime, camera_id: str | None, *, session_id: str | None = None,
                  label: str | None = None, with_id: bool = False):
    columns = (["id"] if with_id else []) + EVENT_COLUMNS
    query = sa.select(*(events.c[c] for c in columns)).where(events.c.time >= start, events.c.time < end)
    for column, value in (("camera_id", camera_id), ("session_id", session_id), ("label", label)):
        if value is not None:
            query = query.where(events.c[column] == value)
    return query.order_by(events.c.time, events.c.id)


def iter_events(engine: Engine, start: datetime, end: datetime, camera_id: str | None = None,
                chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Raw events in [start, end) as DataFrames of at most `chunk_rows` (a server-side cursor on
    PostgreSQL), so an export of a month never holds the month in memory."""
    start, end = _range(start, end)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
            _events_query(start, end, camera_id))
        columns = list(result.keys())
        for rows in result.partitions():
            yield _utc_columns(pd.DataFrame(rows, columns=columns), "time", "recorded")


def emotion_counts(engine: Engine, start: datetime, end: datetime, bucket: Bucket,
                   camera_id: str | None = None) -> pd.DataFrame:
    """bucket (UTC datetime), label, count and the mean p_<emotion> of the events with that label."""
    return _means(_sums(engine, start, end, bucket, camera_id))


def emotion_shares(engine: Engine, start: datetime, end: datetime, camera_id: str | None = None) -> pd.DataFrame:
    """label, count, share (of all events in the range); labels without events are left out."""
    frame = _sums(engine, start, end, None, camera_id)[["label", "count"]].copy()
    total = int(frame["count"].sum())
    frame["share"] = frame["count"] / total if total else pd.Series(dtype="float64")
    return frame


def mean_probabilities(engine: Engine, start: datetime, end: datetime, bucket: Bucket,
                       camera_id: str | None = None) -> pd.DataFrame:
    """bucket and the mean of each of the seven probabilities over every event of the bucket."""
    frame = _sums(engine, start, end, bucket, camera_id)
    frame = frame.groupby("bucket", as_index=False, sort=True)[["count", *SUM_COLUMNS]].sum()
    return _means(frame).drop(columns="count")


def ping(engine: Engine) -> bool:
    """The store answers a trivial query (the dashboard's readiness probe)."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT 1")).scalar() == 1


def list_sessions(engine: Engine, limit: int = 100) -> pd.DataFrame:
    """Most recent sessions first: session_id, camera_id, source, started, ended, last_event, event_count."""
    order = sa.func.coalesce(sessions.c.started, sessions.c.last_event)
    query = sa.select(sessions).order_by(order.desc().nulls_last(), sessions.c.session_id).limit(limit)
    with engine.connect() as conn:
        frame = _frame(conn, query)
    if frame.empty:
        frame = pd.DataFrame(columns=[c.name for c in sessions.columns])
    return _utc_columns(frame, "started", "ended", "last_event")


def list_cameras(engine: Engine) -> pd.DataFrame:
    """camera_id, source, first_seen, last_seen, last_session_id, event_count."""
    with engine.connect() as conn:
        frame = _frame(conn, sa.select(cameras).order_by(cameras.c.camera_id))
    if frame.empty:
        frame = pd.DataFrame(columns=[c.name for c in cameras.columns])
    return _utc_columns(frame, "first_seen", "last_seen")


def auto_bucket(span: timedelta) -> str:
    """The bucket that gives a readable chart for a time span (used for history ranges and sessions)."""
    if span <= timedelta(minutes=10):
        return "second"
    if span <= timedelta(hours=12):
        return "minute"
    if span <= timedelta(days=14):
        return "hour"
    return "day"


def session_report(engine: Engine, session_id: str) -> SessionReport:
    """Counts per label, shares, and mean probabilities (and counts) over time of one session."""
    report = SessionReport(session_id=session_id)
    in_session = events.c.session_id == session_id
    with engine.connect() as conn:
        row = conn.execute(sa.select(sessions).where(sessions.c.session_id == session_id)).mappings().first()
        report.session = dict(row) if row else None
        first, last = conn.execute(sa.select(sa.func.min(events.c.time), sa.func.max(events.c.time))
                                   .where(in_session)).one()
        if first is None:
            return report
        first, last = (pd.Timestamp(v, tz="UTC") if pd.Timestamp(v).tzinfo is None else pd.Timestamp(v)
                       for v in (first, last))
        report.bucket = auto_bucket(last - first)
        bucket = _bucket_expr(conn.dialect.name, events.c.time, report.bucket).label("bucket")
        sums = [sa.func.count().label("count"), *(sa.func.sum(events.c[p]).label(s)
                                                  for p, s in zip(PROB_COLUMNS, SUM_COLUMNS))]
        over_time = _frame(conn, sa.select(bucket, events.c.label, *sums).where(in_session)
                           .group_by(bucket, events.c.label))
        per_camera = conn.execute(sa.select(events.c.camera_id, sa.func.count()).where(in_session)
                                  .group_by(events.c.camera_id).order_by(events.c.camera_id)).all()
    report.cameras = {str(camera): int(count) for camera, count in per_camera}
    over_time = _utc_columns(over_time, "bucket")
    over_time["count"] = over_time["count"].astype("int64")
    totals = over_time.groupby("label")["count"].sum()
    report.total = int(totals.sum())
    report.counts = pd.DataFrame({"label": list(EMOTIONS), "count": [int(totals.get(e, 0)) for e in EMOTIONS]})
    shares = report.counts[report.counts["count"] > 0].reset_index(drop=True)
    report.shares = shares.assign(share=shares["count"] / report.total)
    per_bucket = over_time.groupby("bucket", as_index=False, sort=True)[["count", *SUM_COLUMNS]].sum()
    report.mean_probabilities = _means(per_bucket.astype({s: "float64" for s in SUM_COLUMNS})).drop(columns="count")
    over_time["_order"] = over_time["label"].map(_LABEL_ORDER)
    report.counts_over_time = (over_time.sort_values(["bucket", "_order"])[["bucket", "label", "count"]]
                               .reset_index(drop=True))
    return report
