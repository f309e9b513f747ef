"""Writing to the event store: events (exactly once), rollups, sessions, cameras, crops, retention.

`record_events` is the recorder's whole job for one batch, meant to run inside ONE transaction:
insert the events with ON CONFLICT (event_id) DO NOTHING RETURNING event_id, then fold only the rows
actually inserted into the minute rollups, the sessions and the cameras. A redelivered event
inserts nothing and so counts nothing, which is what makes at-least-once delivery exactly-once storage.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from typing import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from shared.emotions import EMOTIONS
from shared.schemas import EmotionEvent, FaceMessage
from shared.store.schema import (PROB_COLUMNS, SMOOTHED_COLUMNS, SUM_COLUMNS, cameras, crops, events,
                                 rollups_minute, sessions)

log = logging.getLogger(__name__)
RETENTION_CHUNK_ROWS = 20_000


def utc_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Aware datetimes converted to UTC; naive ones are taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def floor_minute(value: datetime) -> datetime:
    return to_utc(value).replace(second=0, microsecond=0)


def _insert(conn: Connection, table: sa.Table):
    """The dialect's INSERT, which has on_conflict_do_nothing / on_conflict_do_update."""
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"the event store supports SQLite and PostgreSQL, not {name}")
    return insert(table)


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction on an Engine, or the caller's own transaction on a Connection."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    else:
        with nullcontext(bind) as conn:
            yield conn


def _earliest(column, new):
    return sa.case((column.is_(None), new), (new < column, new), else_=column)


def _latest(column, new):
    return sa.case((column.is_(None), new), (new > column, new), else_=column)


# --- events -------------------------------------------------------------------------------------

def event_row(event: EmotionEvent, recorded: datetime) -> dict:
    t = event.times
    row = {
        "event_id": event.event_id, "time": utc_from_ms(t.captured_ms), "camera_id": event.camera_id,
        "session_id": event.session_id, "frame_id": event.frame_id, "face_index": event.face_index,
        "track_id": event.track_id, "x": event.bbox.x, "y": event.bbox.y, "w": event.bbox.w, "h": event.bbox.h,
        "detection_confidence": event.detection_confidence, "label": event.label,
        "confidence": float(event.confidence), "smoothed_label": event.smoothed_label,
        "model_version": event.model_version, "detect_ms": t.detected_ms - t.captured_ms,
        "classify_ms": t.classified_ms - t.detected_ms, "total_ms": t.classified_ms - t.captured_ms,
        "recorded": recorded,
    }
    row.update(zip(PROB_COLUMNS, map(float, event.probabilities)))
    row.update(zip(SMOOTHED_COLUMNS, map(float, event.smoothed)))
    return row


def record_events(bind: Engine | Connection, batch: Iterable[EmotionEvent], recorded: datetime | None = None) -> int:
    """Store a batch; returns how many rows were new. Rows already stored (same event_id) are skipped
    and add nothing to the rollups, sessions or cameras. Pass a Connection to join its transaction."""
    recorded = recorded or datetime.now(timezone.utc)
    rows: dict[str, dict] = {}
    for event in batch:
        rows.setdefault(event.event_id, event_row(event, recorded))
    if not rows:
        return 0
    with _transaction(bind) as conn:
        if conn.dialect.name == "postgresql":
            inserted_ids = _insert_events_postgres(conn, list(rows.values()))
        else:
            stmt = _insert(conn, events).on_conflict_do_nothing(index_elements=["event_id"]).returning(events.c.event_id)
            inserted_ids = conn.execute(stmt, list(rows.values())).scalars().all()
        inserted = [rows[event_id] for event_id in inserted_ids]
        if inserted:
            _add_rollups(conn, inserted)
            _add_sessions(conn, inserted)
            _add_cameras(conn, inserted)
    return len(inserted)


_INSERTED_EVENT_COLUMNS = [c for c in events.columns if c.name != "id"]  # id is the database's


def _insert_events_postgres(conn: Connection, rows: list[dict]) -> list[str]:
    """INSERT ... SELECT FROM unnest(one array per column): a batch is 33 parameters, not 33 per row.

    The multi-row VALUES form sends and plans one statement with ~6,600 typed parameters per batch of
    200, which took 38 of a batch's 48 ms; column arrays take a few.
    """
    columns = _INSERTED_EVENT_COLUMNS
    # A bind typed ARRAY(...) is sent with its cast (::varchar(200)[] ...), which unnest needs.
    arrays = [sa.bindparam(c.name, [row[c.name] for row in rows], type_=postgresql.ARRAY(c.type)) for c in columns]
    source = sa.func.unnest(*arrays).table_valued(*(c.name for c in columns)).render_derived()
    stmt = (postgresql.insert(events).from_select([c.name for c in columns], sa.select(*source.c))
            .on_conflict_do_nothing(index_elements=["event_id"]).returning(events.c.event_id))
    return conn.execute(stmt).scalars().all()


def _add_rollups(conn: Connection, rows: list[dict]) -> None:
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0] + [0.0] * len(EMOTIONS))
    for row in rows:
        acc = totals[(row["camera_id"], floor_minute(row["time"]), row["label"])]
        acc[0] += 1
        for i, column in enumerate(PROB_COLUMNS, start=1):
            acc[i] += row[column]
    stmt = _insert(conn, rollups_minute)
    stmt = stmt.on_conflict_do_update(
        index_elements=["camera_id", "minute", "label"],
        set_={"count": rollups_minute.c["count"] + stmt.excluded["count"],
              **{c: rollups_minute.c[c] + stmt.excluded[c] for c in SUM_COLUMNS}})
    # Sorted keys: concurrent recorders lock rollup rows in one order, so they cannot deadlock.
    params = [{"camera_id": cam, "minute": minute, "label": label, "count": acc[0], **dict(zip(SUM_COLUMNS, acc[1:]))}
              for (cam, minute, label), acc in sorted(totals.items())]
    conn.execute(stmt, params)


def _add_sessions(conn: Connection, rows: list[dict]) -> None:
    by_session: dict[str, dict] = {}
    for row in rows:
        s = by_session.setdefault(row["session_id"], {"session_id": row["session_id"], "camera_id": row["camera_id"],
                                                      "started": row["time"], "last_event": row["time"],
                                                      "event_count": 0})
        s["event_count"] += 1
        s["started"] = min(s["started"], row["time"])
        s["last_event"] = max(s["last_event"], row["time"])
    stmt = _insert(conn, sessions)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(index_elements=["session_id"], set_={
        "event_count": sessions.c.event_count + ex.event_count,
        "camera_id": sa.func.coalesce(sessions.c.camera_id, ex.camera_id),
        "started": _earliest(sessions.c.started, ex.started),
        "last_event": _latest(sessions.c.last_event, ex.last_event)})
    conn.execute(stmt, [by_session[k] for k in sorted(by_session)])


def _add_cameras(conn: Connection, rows: list[dict]) -> None:
    by_camera: dict[str, dict] = {}
    for row in rows:
        c = by_camera.setdefault(row["camera_id"], {"camera_id": row["camera_id"], "first_seen": row["time"],
                                                    "last_seen": row["time"], "last_session_id": row["session_id"],
                                                    "event_count": 0})
        c["event_count"] += 1
        c["first_seen"] = min(c["first_seen"], row["time"])
        if row["time"] >= c["last_seen"]:
            c["last_seen"], c["last_session_id"] = row["time"], row["session_id"]
    stmt = _insert(conn, cameras)
    ex = stmt.excluded
    stmt = stmt.on_conflict_do_update(index_elements=["camera_id"], set_={
        "event_count": cameras.c.event_count + ex.event_count,
        "first_seen": _earliest(cameras.c.first_seen, ex.first_seen),
        "last_session_id": sa.case((cameras.c.last_seen.is_(None), ex.last_session_id),
                                   (ex.last_seen >= cameras.c.last_seen, ex.last_session_id),
                                   else_=cameras.c.last_session_id),
        "last_seen": _latest(cameras.c.last_seen, ex.last_seen)})
    conn.execute(stmt, [by_camera[k] for k in sorted(by_camera)])


# --- sessions (called by the pipeline: one `emotion start` / `emotion up` run is one session) ------

def open_session(bind: Engine | Connection, session_id: str, camera_id: str | None = None, source: str | None = None,
                 started: datetime | None = None) -> None:
    """Create (or reopen) a session; also registers the camera and its source. Idempotent."""
    started = to_utc(started) if started else datetime.now(timezone.utc)
    with _transaction(bind) as conn:
        stmt = _insert(conn, sessions).values(session_id=session_id, camera_id=camera_id, source=source,
                                              started=started, event_count=0)
        ex = stmt.excluded
        conn.execute(stmt.on_conflict_do_update(index_elements=["session_id"], set_={
            "camera_id": sa.func.coalesce(sessions.c.camera_id, ex.camera_id),
            "source": sa.func.coalesce(sessions.c.source, ex.source),
            "started": _earliest(sessions.c.started, ex.started),
            "ended": None}))
        if camera_id:
            stmt = _insert(conn, cameras).values(camera_id=camera_id, source=source, last_session_id=session_id,
                                                 event_count=0)
            ex = stmt.excluded
            conn.execute(stmt.on_conflict_do_update(index_elements=["camera_id"], set_={
                "source": sa.func.coalesce(ex.source, cameras.c.source),
                "last_session_id": ex.last_session_id}))


def close_session(bind: Engine | Connection, session_id: str, ended: datetime | None = None) -> bool:
    """Mark a session ended; returns False when no such session was known (one is then created, ended)."""
    ended = to_utc(ended) if ended else datetime.now(timezone.utc)
    with _transaction(bind) as conn:
        result = conn.execute(sa.update(sessions).where(sessions.c.session_id == session_id).values(ended=ended))
        if result.rowcount:
            return True
        conn.execute(_insert(conn, sessions).values(session_id=session_id, ended=ended, event_count=0)
                     .on_conflict_do_update(index_elements=["session_id"], set_={"ended": ended}))
        return False


# --- crops (opt-in: recorder.keep_crops) -----------------------------------------------------------

def record_crops(bind: Engine | Connection, faces: Iterable[FaceMessage]) -> int:
    rows = {f.event_id: {"event_id": f.event_id, "time": utc_from_ms(f.captured_ms), "camera_id": f.camera_id,
                         "side": f.side, "crop": bytes(f.crop)} for f in faces}
    if not rows:
        return 0
    with _transaction(bind) as conn:
        stmt = _insert(conn, crops).on_conflict_do_nothing(index_elements=["event_id"]).returning(crops.c.event_id)
        return len(conn.execute(stmt, list(rows.values())).scalars().all())


# --- retention -------------------------------------------------------------------------------------

def _delete_chunked(engine: Engine, table: sa.Table, key: sa.Column, time_column: sa.Column, cutoff: datetime) -> int:
    """Delete rows older than cutoff in short transactions, so the recorder is never blocked for long."""
    total = 0
    while True:
        with engine.begin() as conn:
            chosen = sa.select(key).where(time_column < cutoff).limit(RETENTION_CHUNK_ROWS).scalar_subquery()
            deleted = conn.execute(sa.delete(table).where(key.in_(chosen))).rowcount or 0
        total += deleted
        if deleted < RETENTION_CHUNK_ROWS:
            return total


def apply_retention(engine: Engine, days: int | None, *, crop_days: int | None = None,
                    now: datetime | None = None) -> dict:
    """Delete events and rollups older than `days` (None keeps them), crops older than `crop_days`.

    The cutoff is aligned to a minute so that each remaining rollup row still equals the aggregate of
    the remaining events. Sessions that ended (or last saw an event) before the cutoff go too.
    """
    now = to_utc(now) if now else datetime.now(timezone.utc)
    report: dict = {"events": 0, "rollups": 0, "sessions": 0, "crops": 0}
    if days is not None:
        cutoff = floor_minute(now - timedelta(days=days))
        report["cutoff"] = cutoff.isoformat()
        report["events"] = _delete_chunked(engine, events, events.c.id, events.c.time, cutoff)
        with engine.begin() as conn:
            report["rollups"] = conn.execute(sa.delete(rollups_minute).where(rollups_minute.c.minute < cutoff)).rowcount
            last = sa.func.coalesce(sessions.c.ended, sessions.c.last_event, sessions.c.started)
            report["sessions"] = conn.execute(sa.delete(sessions).where(last < cutoff)).rowcount
    if crop_days is not None:
        report["crops"] = _delete_chunked(engine, crops, crops.c.event_id, crops.c.time,
                                          now - timedelta(days=crop_days))
    if any(report[k] for k in ("events", "rollups", "sessions", "crops")):
        log.info("event=retention days=%s crop_days=%s deleted=%s", days, crop_days, report)
    return report
