"""The event store on SQLite and PostgreSQL: migrations, exactly-once writes, rollups that equal the
raw aggregates, sessions, queries, retention and exports (each test runs on both backends)."""

from __future__ import annotations

import io
import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from emotion.cli import main
from services.recorder.service import RecorderProcessor
from shared.emotions import EMOTIONS
from shared.store import (apply_retention, close_session, current_revision, head_revision, make_engine, migrate,
                          open_session, queries, record_events)
from shared.store.schema import PROB_COLUMNS, SUM_COLUMNS
from shared.worker import TransientError
from tests.test_store_support import T0_MS, make_event, store, store_url  # noqa: F401

T0 = datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)


def _spread_events(n: int, cameras=("cam0", "cam1"), step_ms: int = 1_337) -> list:
    """n events over several minutes and cameras, at times that do not fall on minute edges."""
    return [make_event(i, camera_id=cameras[i % len(cameras)], session_id=f"s{i % 3}",
                       captured_ms=T0_MS + 7_000 + i * step_ms) for i in range(n)]


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar())


def _raw_rollups(engine) -> pd.DataFrame:
    """Rollups recomputed from the raw events with pandas, independent of the writer's bookkeeping."""
    raw = queries.events_frame(engine, T0 - timedelta(days=400), T0 + timedelta(days=400))
    raw["minute"] = raw["time"].dt.floor("min")
    grouped = raw.groupby(["camera_id", "minute", "label"]).agg(count=("event_id", "size"),
                                                                **{s: (p, "sum") for p, s in zip(PROB_COLUMNS, SUM_COLUMNS)})
    return grouped.reset_index().sort_values(["camera_id", "minute", "label"]).reset_index(drop=True)


def _stored_rollups(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM rollups_minute"))
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    frame["minute"] = pd.to_datetime(frame["minute"], utc=True, format="ISO8601") if frame["minute"].dtype == object \
        else pd.to_datetime(frame["minute"], utc=True)
    frame["count"] = frame["count"].astype("int64")
    return frame.sort_values(["camera_id", "minute", "label"]).reset_index(drop=True)[list(_raw_rollups(engine).columns)]


def test_migrate_is_idempotent_and_reaches_head(store_url):
    """migrate() at every service start must be a no-op once the store is at head."""
    assert migrate(store_url) == head_revision()
    engine = make_engine(store_url)
    try:
        assert current_revision(engine) == head_revision()
        tables = set(sa.inspect(engine).get_table_names())
        assert {"events", "rollups_minute", "sessions", "cameras", "crops", "alembic_version"} <= tables
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
        assert {"ix_events_time", "ix_events_camera_id_time", "ix_events_session_id_time"} <= indexes
    finally:
        engine.dispose()


def test_redelivered_events_are_stored_once_and_counted_once(store):
    """At-least-once delivery: the same events written again (whole batch, overlap, duplicates inside a
    batch) add no row and no count to rollups, sessions or cameras."""
    batch = _spread_events(300)
    assert record_events(store, batch[:200]) == 200
    assert record_events(store, batch[100:] + batch[150:160]) == 100
    assert record_events(store, batch) == 0
    assert _count(store, "events") == 300
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT SUM(count) FROM rollups_minute")).scalar() == 300
        assert conn.execute(sa.text("SELECT SUM(event_count) FROM sessions")).scalar() == 300
        assert conn.execute(sa.text("SELECT SUM(event_count) FROM cameras")).scalar() == 300


def test_every_column_of_an_event_is_stored_as_given(store):
    """PostgreSQL takes a batch as one array per column (unnest), SQLite as rows: both must store each
    event's every field, row by row, with nothing shifted between columns or rows."""
    from shared.store.writer import event_row

    batch = _spread_events(250, cameras=("cam0", "cam1", "cam2"))
    recorded = T0 + timedelta(hours=1)
    assert record_events(store, batch, recorded=recorded) == 250
    with store.connect() as conn:
        stored = {row["event_id"]: row for row in conn.execute(sa.text("SELECT * FROM events")).mappings()}
    assert len(stored) == 250
    for event in batch:
        expected, row = event_row(event, recorded), stored[event.event_id]
        for column, value in expected.items():
            if isinstance(value, datetime):
                got = row[column] if isinstance(row[column], datetime) else datetime.fromisoformat(row[column])
                assert got.replace(tzinfo=got.tzinfo or timezone.utc) == value, column
            elif isinstance(value, float):
                assert row[column] == pytest.approx(value, rel=1e-12), column
            else:
                assert row[column] == value, column


def test_rollups_equal_aggregates_recomputed_from_raw_events(store):
    """The incremental rollups (written in many batches, with redeliveries) equal a GROUP BY of the raw rows."""
    batch = _spread_events(700)
    for start in range(0, 700, 90):
        record_events(store, batch[start:start + 90])
        record_events(store, batch[max(0, start - 30):start + 10])  # redeliveries
    stored, raw = _stored_rollups(store), _raw_rollups(store)
    assert len(stored) == len(raw) > 20
    pd.testing.assert_frame_equal(stored[["camera_id", "minute", "label", "count"]],
                                  raw[["camera_id", "minute", "label", "count"]], check_dtype=False)
    np.testing.assert_allclose(stored[list(SUM_COLUMNS)].to_numpy(), raw[list(SUM_COLUMNS)].to_numpy(), rtol=1e-9)


@pytest.mark.parametrize("bucket", ["second", "minute", "hour", "day"])
def test_emotion_counts_are_exact_on_unaligned_ranges(store, bucket):
    """Rollups for whole minutes plus raw events at the edges give the same answer as the raw events alone."""
    record_events(store, _spread_events(600))
    start, end = T0 + timedelta(minutes=1, seconds=17.3), T0 + timedelta(minutes=9, seconds=41.9)
    camera = "cam1"
    counts = queries.emotion_counts(store, start, end, bucket, camera_id=camera)
    raw = queries.events_frame(store, start, end, camera_id=camera)
    assert 0 < int(counts["count"].sum()) == len(raw) < 600
    freq = {"second": "s", "minute": "min", "hour": "h", "day": "D"}[bucket]
    raw["bucket"] = raw["time"].dt.floor(freq)
    expected = raw.groupby(["bucket", "label"]).agg(count=("event_id", "size"), p_happy=("p_happy", "mean")).reset_index()
    merged = counts.merge(expected, on=["bucket", "label"], suffixes=("", "_raw"), how="outer")
    assert merged["count_raw"].notna().all() and merged["count"].notna().all()
    assert (merged["count"] == merged["count_raw"]).all()
    np.testing.assert_allclose(merged["p_happy"], merged["p_happy_raw"], rtol=1e-9)
    assert list(counts.columns) == ["bucket", "label", "count", *PROB_COLUMNS]
    assert str(counts["bucket"].dtype) .endswith("UTC]")

    shares = queries.emotion_shares(store, start, end, camera_id=camera)
    assert shares["count"].sum() == len(raw) and abs(shares["share"].sum() - 1) < 1e-9
    means = queries.mean_probabilities(store, start, end, bucket, camera_id=camera)
    assert list(means.columns) == ["bucket", *PROB_COLUMNS]
    np.testing.assert_allclose(means[list(PROB_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)


def test_queries_on_an_empty_range_return_empty_frames(store):
    start, end = T0, T0 + timedelta(hours=2)
    assert queries.emotion_counts(store, start, end, "minute").empty
    assert queries.emotion_shares(store, start, end).empty
    assert queries.mean_probabilities(store, start, end, "hour").empty
    assert queries.events_frame(store, start, end).empty
    assert queries.list_sessions(store).empty and queries.list_cameras(store).empty
    with pytest.raises(ValueError, match="bucket"):
        queries.emotion_counts(store, start, end, "week")


def test_sessions_opened_by_pipeline_or_created_from_events(store):
    """open/close_session from the pipeline; a session only seen in events is created by the recorder."""
    opened = T0 - timedelta(seconds=5)
    open_session(store, "s0", camera_id="cam0", source="demo", started=opened)
    record_events(store, _spread_events(90))
    close_session(store, "s0", ended=T0 + timedelta(hours=1))
    sessions = queries.list_sessions(store).set_index("session_id")
    assert set(sessions.index) == {"s0", "s1", "s2"}
    assert sessions.loc["s0", "source"] == "demo"
    assert sessions.loc["s0", "started"] == pd.Timestamp(opened)
    assert sessions.loc["s0", "ended"] == pd.Timestamp(T0 + timedelta(hours=1))
    assert pd.isna(sessions.loc["s1", "ended"]) and sessions.loc["s1", "started"] > pd.Timestamp(T0)
    assert sessions["event_count"].sum() == 90
    cameras = queries.list_cameras(store)
    assert list(cameras["camera_id"]) == ["cam0", "cam1"] and cameras["event_count"].sum() == 90
    assert cameras.set_index("camera_id").loc["cam0", "source"] == "demo"
    assert close_session(store, "never-opened") is False


def test_session_report(store):
    record_events(store, _spread_events(120))
    report = queries.session_report(store, "s1")
    assert report.total == 40 and int(report.counts["count"].sum()) == 40
    assert list(report.counts["label"]) == list(EMOTIONS)
    assert abs(report.shares["share"].sum() - 1) < 1e-9
    assert report.bucket == "second" and not report.mean_probabilities.empty
    assert report.session["event_count"] == 40

    empty = queries.session_report(store, "no-such-session")
    assert empty.total == 0 and empty.session is None
    assert empty.shares.empty and empty.mean_probabilities.empty and int(empty.counts["count"].sum()) == 0


def test_retention_deletes_old_events_and_rollups_consistently(store):
    """After retention, the remaining rollups still equal the remaining raw events (minute-aligned cutoff)."""
    old = [make_event(i, captured_ms=T0_MS - 3 * 86_400_000 + i * 1_000) for i in range(50)]
    new = [make_event(1000 + i, captured_ms=T0_MS + i * 1_000) for i in range(50)]
    record_events(store, old + new)
    report = apply_retention(store, 2, now=T0 + timedelta(seconds=30))
    assert report["events"] == 50 and report["rollups"] > 0
    assert _count(store, "events") == 50
    stored, raw = _stored_rollups(store), _raw_rollups(store)
    assert stored["count"].sum() == raw["count"].sum() == 50
    assert apply_retention(store, None)["events"] == 0


def test_export_round_trips_csv_and_parquet(store, store_url, tmp_path, capsys):
    """`emotion export` writes exactly the rows of the range; reading the file back gives them again."""
    record_events(store, _spread_events(150))
    start, end = T0 + timedelta(minutes=1), T0 + timedelta(minutes=3)
    expected = queries.events_frame(store, start, end, camera_id="cam0")
    assert len(expected) > 10
    for fmt in ("csv", "parquet"):
        path = tmp_path / f"out.{fmt}"
        assert main(["export", "--from", start.isoformat(), "--to", end.isoformat(), "--camera", "cam0",
                     "--format", fmt, "--output", str(path), "--database-url", store_url]) == 0
        back = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, parse_dates=["time", "recorded"])
        assert list(back.columns) == list(expected.columns)
        back["time"] = pd.to_datetime(back["time"], utc=True)
        pd.testing.assert_series_equal(back["time"], expected["time"], check_dtype=False, check_names=False)
        pd.testing.assert_frame_equal(back.drop(columns=["time", "recorded"]),
                                      expected.drop(columns=["time", "recorded"]), check_dtype=False)
    capsys.readouterr()
    assert main(["export", "--from", "2026-01-01", "--to", "2026-01-01", "--output", "-",
                 "--database-url", store_url]) == 0
    out = capsys.readouterr().out
    assert len(pd.read_csv(io.StringIO(out))) == 150  # a date as --to means the end of that day


def test_cli_user_errors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert main(["export", "--from", "yesterday", "--to", "2026-01-01", "--database-url", url]) == 2
    assert main(["export", "--from", "2026-01-02", "--to", "2026-01-01", "--database-url", url]) == 2
    assert main(["export", "--from", "2026-01-01", "--to", "2026-01-02", "--database-url", url, "--output", "-"]) == 2
    assert "emotion db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--database-url", url]) == 0
    assert main(["recorder", "--check-config", "--retention-days", "0"]) == 2
    assert main(["recorder", "--check-config", "--database-url", "mysql://x/y"]) == 2
    assert main(["recorder", "--check-config", "--retention-days", "30", "--database-url", url]) == 0


def test_database_away_is_transient(tmp_path):
    """A database that is away becomes TransientError (retry without ack), never a dead letter."""
    url = f"sqlite:///{tmp_path / 'locked.sqlite'}"
    migrate(url)
    engine = make_engine(url, busy_timeout_ms=100)
    locker = sqlite3.connect(tmp_path / "locked.sqlite", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TransientError, match="unavailable"):
            RecorderProcessor(engine).handle([make_event(1)])
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert RecorderProcessor(engine).handle([make_event(1)]) == []
    engine.dispose()

    nowhere = make_engine("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=2)
    with pytest.raises(TransientError, match="unavailable"):
        RecorderProcessor(nowhere).handle([make_event(1)])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_detection_confidence_migration_keeps_old_rows_and_stores_new_scores(backend, tmp_path):
    """Revision 0002 adds events.detection_confidence to a store that already holds events: the old
    rows keep every value (NULL score), new events store theirs, and the export carries the column."""
    from shared.store.writer import event_row
    from tests.test_store_support import create_pg_database

    drop = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    else:
        name, drop = create_pg_database()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        migrate(url, "0001_initial")
        engine = make_engine(url)
        old = make_event(1).model_copy(update={"detection_confidence": None})
        row = {k: v for k, v in event_row(old, datetime.now(timezone.utc)).items() if k != "detection_confidence"}
        with engine.begin() as conn:
            conn.execute(sa.Table("events", sa.MetaData(), autoload_with=conn).insert(), [row])
        assert migrate(url) == head_revision()
        new = make_event(2).model_copy(update={"detection_confidence": 0.87})  # type: ignore[arg-type]
        assert record_events(engine, [old, new]) == 1  # the old event is already there
        frame = queries.events_frame(engine, datetime(2025, 1, 1, tzinfo=timezone.utc),
                                     datetime(2027, 1, 1, tzinfo=timezone.utc))
        by_id = frame.set_index("event_id")
        assert pd.isna(by_id.loc[old.event_id, "detection_confidence"])
        assert by_id.loc[new.event_id, "detection_confidence"] == pytest.approx(0.87)
        assert by_id.loc[old.event_id, "label"] == old.label
        engine.dispose()
    finally:
        if drop:
            drop()
