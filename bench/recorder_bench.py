"""Recorder and event store: sustained insert rate, and month-range aggregate query times.

Insert rate: `RecorderProcessor.handle` (the recorder's whole per-batch work: one transaction with
INSERT ... ON CONFLICT DO NOTHING RETURNING, the minute rollups, sessions and cameras) on batches of
`--batch` valid EmotionEvents spread at 10 events/s over `--cameras` cameras; plus the rate of
re-handling the same batches (every event a redelivery, nothing inserted).

Queries: a synthetic month at `--rate` events/s per camera. The minute rollups of the month are
generated directly (about 43 200 minutes x 7 labels per camera, what 26 million events at 10/s
would leave behind), except for the last `--raw-hours`, which are real raw events written through
`record_events` (so the edges and second buckets read a real time index). Each query is timed as the
median of `--repeats` runs over an unaligned range (as the dashboard asks: now - 30 days .. now).

    python -m bench.recorder_bench --json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from shared.emotions import EMOTIONS
from shared.schemas import BBox, EmotionEvent, StageTimes

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def synthetic_events(count: int, start_ms: int, cameras: int, rate: float, seed: int = 0,
                     session_id: str = "bench") -> list[EmotionEvent]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(len(EMOTIONS), 0.7), size=count)
    events = []
    step_ms = 1000.0 / rate / cameras
    for i in range(count):
        p = [float(v) for v in probs[i]]
        p[-1] = 1.0 - sum(p[:-1])
        order = np.argsort(probs[i])[::-1]
        camera = f"cam{i % cameras}"
        captured = int(start_ms + i * step_ms)
        events.append(EmotionEvent(
            event_id=f"{camera}:{session_id}:{seed}:{i}", camera_id=camera, session_id=session_id, frame_id=i,
            face_index=0, track_id=i % 5, bbox=BBox(x=10, y=10, w=80, h=80), label=EMOTIONS[order[0]],
            confidence=p[order[0]], probabilities=p, top2=(EMOTIONS[order[0]], EMOTIONS[order[1]]), smoothed=p,
            smoothed_label=EMOTIONS[order[0]], model_version="bench",
            times=StageTimes(captured_ms=captured, detected_ms=captured + 10, classified_ms=captured + 25)))
    return events


class Backend:
    """A fresh, migrated store: a temporary SQLite file or a new PostgreSQL database (dropped after)."""

    def __init__(self, kind: str) -> None:
        self.kind, self.url, self._tmp, self._pg_name = kind, "", None, None

    def __enter__(self):
        from shared.store import migrate

        if self.kind == "sqlite":
            self._tmp = tempfile.TemporaryDirectory(prefix="recorder-bench-")
            self.url = f"sqlite:///{Path(self._tmp.name) / 'bench.sqlite'}"
        else:
            import psycopg

            self._pg_name = f"bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"CREATE DATABASE {self._pg_name}")
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self._pg_name}"
        migrate(self.url)
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
        if self._pg_name is not None:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self._pg_name} WITH (FORCE)")


def insert_rate(url: str, events: list[EmotionEvent], batch: int) -> dict:
    from services.recorder.service import RecorderProcessor
    from shared.store import make_engine

    engine = make_engine(url)
    try:
        processor = RecorderProcessor(engine)
        processor.handle(events[:batch])  # warm the pool and the statement cache
        rest = events[batch:]
        batches = [rest[i:i + batch] for i in range(0, len(rest), batch)]
        started = time.perf_counter()
        for part in batches:
            processor.handle(part)
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        for part in batches[: max(1, len(batches) // 4)]:
            processor.handle(part)  # redeliveries: every row conflicts
        dup_elapsed = time.perf_counter() - started
        dup_count = sum(len(p) for p in batches[: max(1, len(batches) // 4)])
        return {"events": len(rest), "batch": batch, "seconds": round(elapsed, 3),
                "events_per_s": round(len(rest) / elapsed, 1),
                "ms_per_batch": round(1000 * elapsed / len(batches), 2),
                "redelivered_events_per_s": round(dup_count / dup_elapsed, 1)}
    finally:
        engine.dispose()


def synthetic_rollups(url: str, start: datetime, minutes: int, cameras: int, rate: float, seed: int = 1) -> int:
    """Minute rollups as `rate` events/s per camera would leave them, written in bulk."""
    import sqlalchemy as sa

    from shared.store import make_engine
    from shared.store.schema import SUM_COLUMNS, rollups_minute

    rng = np.random.default_rng(seed)
    per_minute = int(rate * 60)
    label_p = rng.dirichlet(np.full(len(EMOTIONS), 4.0))
    engine = make_engine(url)
    written = 0
    columns = ["camera_id", "minute", "label", "count", *SUM_COLUMNS]
    try:
        for camera in range(cameras):
            counts = rng.multinomial(per_minute, label_p, size=minutes)  # minutes x labels
            means = rng.dirichlet(np.full(len(EMOTIONS), 2.0), size=len(EMOTIONS))  # label -> mean probabilities
            rows = []
            for m in range(minutes):
                minute = start + timedelta(minutes=m)
                for k, label in enumerate(EMOTIONS):
                    c = int(counts[m, k])
                    if c:
                        rows.append((f"cam{camera}", minute, label, c, *(float(v) * c for v in means[k])))
            if engine.dialect.name == "postgresql":
                raw = engine.raw_connection()
                try:
                    with raw.cursor() as cur, cur.copy(f"COPY rollups_minute ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    raw.commit()
                finally:
                    raw.close()
            else:
                with engine.begin() as conn:
                    for i in range(0, len(rows), 50_000):
                        conn.execute(sa.insert(rollups_minute), [dict(zip(columns, r)) for r in rows[i:i + 50_000]])
            written += len(rows)
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    return written


def timed(fn, repeats: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        frame = fn()
        times.append(time.perf_counter() - started)
        rows = len(frame)
    return round(1000 * float(np.median(times)), 1), rows


def query_times(url: str, *, days: int, rate: float, cameras: int, raw_hours: float, repeats: int) -> dict:
    from shared.store import make_engine, queries, record_events

    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    month_start = end - timedelta(days=days)
    raw_start = end - timedelta(hours=raw_hours)
    started = time.perf_counter()
    rollup_rows = synthetic_rollups(url, month_start, int((raw_start - month_start).total_seconds() // 60), cameras,
                                    rate)
    raw_count = int(raw_hours * 3600 * rate * cameras)
    events = synthetic_events(raw_count, int(raw_start.timestamp() * 1000), cameras, rate * cameras, seed=7)
    engine = make_engine(url)
    try:
        for i in range(0, len(events), 1000):
            record_events(engine, events[i:i + 1000])
        setup_s = time.perf_counter() - started
        # Unaligned, like the dashboard's "last 30 days" (now - 30 d .. now), ending inside the raw hour.
        q_end = end - timedelta(seconds=23.4)
        q_start = q_end - timedelta(days=days)
        cam = "cam0"
        runs = {
            "counts_month_day": lambda: queries.emotion_counts(engine, q_start, q_end, "day"),
            "counts_month_hour": lambda: queries.emotion_counts(engine, q_start, q_end, "hour"),
            "counts_month_minute": lambda: queries.emotion_counts(engine, q_start, q_end, "minute"),
            "counts_month_hour_one_camera": lambda: queries.emotion_counts(engine, q_start, q_end, "hour", camera_id=cam),
            "shares_month": lambda: queries.emotion_shares(engine, q_start, q_end),
            "mean_probabilities_month_hour": lambda: queries.mean_probabilities(engine, q_start, q_end, "hour"),
            "counts_10min_second_raw": lambda: queries.emotion_counts(engine, q_end - timedelta(minutes=10), q_end,
                                                                      "second"),
            "mean_probabilities_10min_second_raw": lambda: queries.mean_probabilities(
                engine, q_end - timedelta(minutes=10), q_end, "second"),
        }
        results = {}
        for name, fn in runs.items():
            ms, rows = timed(fn, repeats)
            results[name] = {"ms": ms, "rows": rows}
    finally:
        engine.dispose()
    return {"days": days, "rate_per_camera": rate, "cameras": cameras, "rollup_rows": rollup_rows + 0,
            "represented_events": int(days * 86400 * rate * cameras), "raw_events": raw_count,
            "setup_s": round(setup_s, 1), "queries": results}


def run_recorder_bench(*, backends: list[str], events: int = 20_000, batch: int = 200, cameras: int = 2,
                       days: int = 30, rate: float = 10.0, query_cameras: int = 1, raw_hours: float = 1.0,
                       repeats: int = 3) -> dict:
    result: dict = {"bench": "recorder", "backends": {}}
    sample = synthetic_events(events + batch, int((time.time() - 86400) * 1000), cameras, 10.0)
    for kind in backends:
        entry: dict = {}
        try:
            with Backend(kind) as backend:
                entry["insert"] = insert_rate(backend.url, sample, batch)
            with Backend(kind) as backend:
                entry["month"] = query_times(backend.url, days=days, rate=rate, cameras=query_cameras,
                                             raw_hours=raw_hours, repeats=repeats)
        except Exception as exc:  # noqa: BLE001 - one backend missing (no PostgreSQL) still reports the other
            entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        result["backends"][kind] = entry
    return result


def table(result: dict) -> str:
    lines = []
    for kind, entry in result["backends"].items():
        if "skipped" in entry:
            lines.append(f"{kind}: skipped ({entry['skipped']})")
            continue
        ins = entry["insert"]
        lines.append(f"{kind}: insert {ins['events_per_s']:,.0f} events/s (batch {ins['batch']}, "
                     f"{ins['ms_per_batch']} ms/batch); redeliveries {ins['redelivered_events_per_s']:,.0f} events/s")
        month = entry["month"]
        lines.append(f"  month: {month['represented_events']:,} events as {month['rollup_rows']:,} rollup rows "
                     f"+ {month['raw_events']:,} raw events")
        for name, q in month["queries"].items():
            lines.append(f"    {name:<38} {q['ms']:>9.1f} ms  ({q['rows']:,} rows)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.common import emit, run_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--events", type=int, default=20_000, help="events inserted for the rate")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--cameras", type=int, default=2, help="cameras in the insert-rate events")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10.0, help="events/s per camera of the synthetic month")
    parser.add_argument("--query-cameras", type=int, default=1)
    parser.add_argument("--raw-hours", type=float, default=1.0, help="last hours of the month kept as raw events")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run_recorder_bench(backends=[b for b in args.backends.split(",") if b], events=args.events,
                                batch=args.batch, cameras=args.cameras, days=args.days, rate=args.rate,
                                query_cameras=args.query_cameras, raw_hours=args.raw_hours, repeats=args.repeats)
    result["run"] = run_info(argv if argv is not None else sys.argv[1:], program="python -m bench.recorder_bench")
    emit(result, table(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
