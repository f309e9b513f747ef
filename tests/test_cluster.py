"""The platform on a real Redis Cluster (EMOTION_REDIS_CLUSTER=true): three masters started by the test
with `redis-server --cluster-enabled yes` on loopback ports, joined by `redis-cli --cluster create`.

The whole pipeline runs as `emotion up` runs it (capture, two detector replicas, a classifier, the
recorder, the dashboard: real processes), nothing is lost, every event is recorded once, and the
shards' keys sit on more than one master (CLUSTER KEYSLOT against the slot ranges of CLUSTER NODES).
The other commands that talk to Redis work against the cluster too, and the training queue, which
RQ keeps on one node, says so instead of failing later.

Ports: TEST_CLUSTER_PORTS (default 7101,7102,7103).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid

import pytest

from shared.redis_conn import connect
from shared.schemas import EmotionEvent, decode
from shared.shards import entries_since, stats_of
from shared.streams import Keys
from tests.proc_utils import RedisCluster, clean_env, find_model_dir, free_port
from tests.up_utils import UpRun

PORTS = [int(p) for p in os.environ.get("TEST_CLUSTER_PORTS", "7101,7102,7103").split(",")]
SHARDS = 3

pytestmark = [
    pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")),
                       reason="redis-server and redis-cli are needed to make a cluster"),
    pytest.mark.skipif(find_model_dir() is None, reason="no exported model"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = RedisCluster(tmp_path_factory.mktemp("cluster"), PORTS)
    try:
        yield made.start()
    finally:
        made.stop()


@pytest.fixture
def store_url(tmp_path):
    """A PostgreSQL database of its own (several recorder threads write it at once), else SQLite."""
    psycopg = pytest.importorskip("psycopg")
    name = f"shards_{uuid.uuid4().hex[:10]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError:
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def cluster_env(cluster, tmp_path, store_url):
    prefix = f"cl{uuid.uuid4().hex[:6]}"
    env = clean_env(EMOTION_REDIS_CLUSTER="true", EMOTION_SHARDS=str(SHARDS), REDIS_URL=cluster.url,
                    EMOTION_PREFIX=prefix, EMOTION_DEFAULT_MODEL_DIR=str(find_model_dir()),
                    EMOTION_REGISTRY_DIR=str(tmp_path / "registry"), EMOTION_DATA_DIR=str(tmp_path / "data"),
                    DATABASE_URL=store_url, EMOTION_CAPTURE__FPS="6")
    yield env
    client = connect(cluster.url, cluster=True)
    for key in list(client.scan_iter(match=f"{prefix}:*", count=1000)):
        client.delete(key)
    client.close()


def recorded_rows(store_url: str, session_id: str) -> int:
    import sqlalchemy as sa

    from shared.store import make_engine

    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(DISTINCT event_id) FROM events WHERE session_id = :s"),
                                    {"s": session_id}).scalar())
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_pipeline_runs_on_a_cluster_loses_nothing_and_spreads_its_shards(cluster, cluster_env, store_url,
                                                                             tmp_path):
    port = free_port()
    run = UpRun(["up", "--source", "demo", "--source", "demo", "--source", "demo", "--detectors", "2",
                 "--duration", "10", "--port", str(port), "--json"], cluster_env, tmp_path)
    try:
        # The dashboard answers readiness against the cluster while the pipeline runs.
        run.watch(until=lambda: "every process is running" in run.stderr)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["checks"]["redis"] == "ok"
        assert run.finish() == 0, run.stderr[-3000:]
    finally:
        run.kill_leftovers()
    summary = run.summary
    assert summary["shards"] == SHARDS and summary["stopped_by"] == "duration"
    assert summary["frames"] > 0 and summary["faces"] > 0, summary
    assert summary["lost"] == 0 and summary["events"] == summary["faces"] and summary["dead_letters"] == 0
    assert all(summary["drained"].values()), summary
    assert summary["recorded"] == summary["events"] == recorded_rows(store_url, summary["session_id"])

    client = connect(cluster.url, cluster=True)
    keys = Keys(cluster_env["EMOTION_PREFIX"], SHARDS)
    stats = stats_of(client, keys, ("capture", "detector"))
    assert stats["detector"]["entries_in"] == stats["capture"]["published"]  # every published frame processed
    ids = [decode(EmotionEvent, e.fields).event_id for e in entries_since(client, keys, "events")]
    assert len(ids) == len(set(ids)) == summary["events"]  # no face got two events
    # Camera i publishes to shard i: three shards with frames, on more than one master.
    masters = {cluster.master_of(shard.frames) for shard in keys.all_shards() if client.xlen(shard.frames)}
    assert len(masters) >= 2, masters
    per_shard = [int(client.hget(shard.stats("capture"), "published") or 0) for shard in keys.all_shards()]
    assert all(per_shard), per_shard
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_other_commands_work_against_a_cluster(cluster, cluster_env, tmp_path):
    def emotion(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "emotion", *args], env={**cluster_env, **extra},
                              capture_output=True, text=True, timeout=90, cwd=tmp_path)

    promoted = emotion("models", "promote", "default")
    assert promoted.returncode == 0, promoted.stderr
    listing = emotion("models", "list")
    assert listing.returncode == 0 and "* default" in listing.stdout, listing.stderr
    client = connect(cluster.url, cluster=True)
    assert client.get(Keys(cluster_env["EMOTION_PREFIX"]).model_current) == b"default"
    client.close()
    worker = emotion("worker", "--burst")
    assert worker.returncode == 2 and "EMOTION_QUEUE_REDIS_URL" in worker.stderr
    # A capture of its own, to a shard chosen by flag, then the detector's --check-config.
    capture = emotion("capture", "--source", "demo", "--camera-id", "solo", "--shard", "2", "--max-frames", "3",
                      "--json")
    assert capture.returncode == 0 and json.loads(capture.stdout.splitlines()[-1])["published"] == 3, capture.stderr
    client = connect(cluster.url, cluster=True)
    assert client.xlen(Keys(cluster_env["EMOTION_PREFIX"], SHARDS).of_shard(2).frames) == 3
    client.close()
    wrong = emotion("capture", "--source", "demo", "--camera-id", "solo", "--shard", "3", "--max-frames", "1")
    assert wrong.returncode == 2 and "capture.shard" in wrong.stderr


def test_live_readers_follow_every_shard_on_a_cluster(cluster):
    """The dashboard's event window and the API's live feed on a cluster, where one read cannot span
    the shards' slots: each shard is read on its own master, and nothing is missed."""
    from services.dashboard.api.stream import event_feed, start_id
    from services.dashboard.live import EventWindow
    from tests.test_dashboard_support import emotion_event
    from shared.schemas import encode

    client = connect(cluster.url, cluster=True)
    keys = Keys(f"cl{uuid.uuid4().hex[:6]}", SHARDS)
    try:
        window = EventWindow(client, keys)
        window.refresh()
        after = start_id(client, keys)
        for shard in keys.all_shards():
            client.xadd(shard.events, encode(emotion_event(f"cam{shard.shard}", 1)))
        assert sorted(e.event.camera_id for e in window.refresh()) == ["cam0", "cam1", "cam2"]
        text = "".join(event_feed(client, keys, after=after, camera=None, max_s=0.6, heartbeat_s=1))
        assert sum(1 for line in text.splitlines() if line == "event: emotion") == SHARDS
    finally:
        for key in list(client.scan_iter(match=f"{keys.prefix}:*")):
            client.delete(key)
        client.close()
