"""The recorder driven through the real events stream, consumer group and loop, on SQLite and PostgreSQL:
N events in -> N rows; everything delivered twice -> still N rows; the database cut mid-stream and
restored -> N rows, nothing lost, nothing dead-lettered."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from services.recorder.run import build_worker, drop_crop_group
from shared.streams import CROPS_GROUP
from shared.schemas import encode
from shared.store import make_engine
from shared.streams import RECORDER_GROUP
from tests.proc_utils import TcpProxy, wait_for
from tests.test_store_support import PG_URL, make_event, store, store_url  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fast(settings, **worker):
    return settings.model_copy(update={"worker": settings.worker.model_copy(update={
        "block_ms": 50, "batch_size": 25, "backoff_initial_s": 0.05, "backoff_max_s": 0.3, "claim_interval_s": 60,
        **worker})})


def _publish(client, stream: str, events) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, encode(event))
    pipe.execute()


def _rows(engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        total, distinct = conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events")).one()
        rolled = conn.execute(sa.text("SELECT COALESCE(SUM(count), 0) FROM rollups_minute")).scalar()
    return int(total), int(distinct), int(rolled)


def _pending(client, keys) -> int:
    return int(client.xpending(keys.events, RECORDER_GROUP)["pending"])


def test_events_from_the_stream_become_rows(redis_client, settings, keys, store):
    """N events in via the real stream -> N rows, all acknowledged, counters in the stats hash."""
    events = [make_event(i, camera_id=f"cam{i % 2}") for i in range(120)]
    _publish(redis_client, keys.events, events)
    worker = build_worker(_fast(settings), redis_client, store)
    worker.run(burst=True)
    assert _rows(store) == (120, 120, 120)
    assert _pending(redis_client, keys) == 0
    stats = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.stats("recorder")).items()}
    assert stats["entries_in"] == 120 and stats["recorded"] == 120 and stats.get("duplicates", 0) == 0
    assert redis_client.xlen(keys.dead(keys.events)) == 0


def test_every_event_delivered_twice_is_stored_once(redis_client, settings, keys, store):
    """Each event appears twice on the stream (a classifier retry); the store keeps one row per event_id."""
    events = [make_event(i) for i in range(80)]
    _publish(redis_client, keys.events, events[:50] + events + events[50:])
    worker = build_worker(_fast(settings, batch_size=16), redis_client, store)
    worker.run(burst=True)
    assert _rows(store) == (80, 80, 80)
    assert worker.processor.counters["duplicates"] == 80
    assert _pending(redis_client, keys) == 0


class _SqliteOutage:
    """SQLite 'down': another connection holds the write lock (the recorder sees 'database is locked')."""

    def __init__(self, path: str) -> None:
        self.path, self.conn = path, None

    def down(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


def test_database_cut_mid_stream_loses_nothing(redis_client, settings, keys, store_url):
    """Half the events are stored, then the database goes away: the loop gets TransientError, backs off
    without acking, and once the database is back every event is stored exactly once."""
    proxy = None
    if store_url.startswith("sqlite"):
        engine = make_engine(store_url, busy_timeout_ms=100)
        outage = _SqliteOutage(store_url.removeprefix("sqlite:///"))
    else:
        proxy = TcpProxy("127.0.0.1", 5432)
        engine = make_engine(store_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), connect_timeout_s=2)
        outage = proxy
    try:
        total = 200
        _publish(redis_client, keys.events, [make_event(i) for i in range(total)])
        worker = build_worker(_fast(settings, batch_size=20), redis_client, engine)
        worker.run(max_entries=total // 2)
        stored_before, _, _ = _rows(engine)
        assert 0 < stored_before < total

        outage.down()
        thread = threading.Thread(target=worker.run, kwargs={"burst": True}, daemon=True)
        thread.start()
        wait_for(lambda: worker.stats.transient_errors >= 3, 30, interval=0.05, what="the recorder to feel the outage")
        assert _pending(redis_client, keys) > 0  # the failed batch stays pending, unacknowledged
        outage.up()
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert _rows(engine) == (total, total, total)
        assert _pending(redis_client, keys) == 0
        assert redis_client.xlen(keys.dead(keys.events)) == 0
    finally:
        engine.dispose()
        if proxy is not None:
            proxy.close()


def test_crop_group_is_removed_without_keep_crops(redis_client, keys):
    """A crop group left by an earlier keep_crops run must not keep the faces stream from being trimmed."""
    redis_client.xgroup_create(keys.faces, CROPS_GROUP, id="0", mkstream=True)
    drop_crop_group(redis_client, keys)
    assert not [g for g in redis_client.xinfo_groups(keys.faces) if g["name"] == CROPS_GROUP.encode()]
    drop_crop_group(redis_client, keys)  # no group, no error


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_recorder_command_records_and_stops_on_sigterm(redis_client, redis_url, keys, tmp_path):
    """`emotion recorder` as a process: migrates a new store, records, exits 0 on SIGTERM."""
    url = f"sqlite:///{tmp_path / 'proc.sqlite'}"
    _publish(redis_client, keys.events, [make_event(i) for i in range(60)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}
    env.update(EMOTION_REDIS_URL=redis_url, EMOTION_PREFIX=keys.prefix, EMOTION_WORKER__BLOCK_MS="50")
    log = open(tmp_path / "recorder.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "emotion", "recorder", "--database-url", url,
                             "--retention-days", "3650"], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def recorded() -> bool:
            assert proc.poll() is None, (tmp_path / "recorder.log").read_text()
            return int(redis_client.hget(keys.stats("recorder"), "recorded") or 0) >= 60

        wait_for(recorded, 60, interval=0.2, what="60 events recorded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    engine = make_engine(url)
    assert _rows(engine) == (60, 60, 60)
    engine.dispose()


def test_keep_crops_stores_face_crops_and_retention_removes_them(redis_client, settings, keys, store):
    """Opt-in keep_crops: the crop consumer stores each face crop once under its event_id; the
    retention loop deletes crops older than crop_max_age_days."""
    from services.recorder.run import build_crop_worker
    from services.recorder.service import RetentionLoop
    from shared.schemas import BBox, FaceMessage

    now_ms = int(time.time() * 1000)
    faces = [FaceMessage(camera_id="cam0", session_id="s1", frame_id=i, face_index=0, faces_in_frame=1, track_id=1,
                         bbox=BBox(x=1, y=1, w=48, h=48), side=48, preprocess="grey48",
                         captured_ms=now_ms - (10 * 86_400_000 if i < 4 else 0) + i, detected_ms=now_ms + i,
                         crop=bytes([i]) * 48 * 48) for i in range(10)]
    _publish(redis_client, keys.faces, faces + faces[:3])
    build_crop_worker(_fast(settings), redis_client, store).run(burst=True)
    with store.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT event_id, crop FROM crops")).all())
    assert len(stored) == 10 and bytes(stored[faces[5].event_id]) == faces[5].crop

    stop = threading.Event()
    loop = RetentionLoop(store, None, 7, stop, interval_s=60)
    loop.start()
    wait_for(lambda: loop.runs, 10, interval=0.05, what="a retention round")
    stop.set()
    loop.join(5)
    assert loop.last_report["crops"] == 4
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM crops")).scalar() == 6


def test_long_outage_outlasting_max_deliveries_loses_nothing(redis_client, settings, keys, tmp_path):
    from shared.store import migrate

    url = f"sqlite:///{tmp_path / 'long.sqlite'}"
    migrate(url)
    engine = make_engine(url, busy_timeout_ms=50)
    outage = _SqliteOutage(str(tmp_path / "long.sqlite"))
    try:
        _publish(redis_client, keys.events, [make_event(i) for i in range(40)])
        worker = build_worker(_fast(settings, batch_size=20, max_deliveries=3), redis_client, engine)
        outage.down()
        thread = threading.Thread(target=worker.run, kwargs={"burst": True}, daemon=True)
        thread.start()
        wait_for(lambda: worker.stats.transient_errors >= 6, 30, interval=0.05,
                 what="more failed attempts than max_deliveries")
        outage.up()
        thread.join(timeout=60)
        assert redis_client.xlen(keys.dead(keys.events)) == 0
        assert _rows(engine) == (40, 40, 40)
    finally:
        engine.dispose()
