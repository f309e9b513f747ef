"""Failure drills against real processes: a replica killed with -9, Redis restarted, the database away,
a corrupt model promoted, a message that crashes its process, and overload at the capture end.

Each test bounds its own time and stops the processes it started by pid (tests/proc_utils.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from shared.schemas import EmotionEvent, FaceMessage, decode, encode
from shared.stream_state import group_state
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, RECORDER_GROUP, Keys, StreamTable
from tests.conftest import demo_frames, fill_faces, make_faces
from tests.proc_utils import (RedisServer, TcpProxy, emotion_proc, find_model_dir, service_env,
                              stop_all, wait_for)

pytestmark = pytest.mark.skipif(find_model_dir() is None,
                                reason="no exported model: neither models/default nor /tmp/model-tmp exists")


# --- helpers ------------------------------------------------------------------------------------

def event_ids(client: redis.Redis, stream: str) -> list[str]:
    ids, start = [], "-"
    while True:
        chunk = client.xrange(stream, min=start, count=2000)
        ids += [decode(EmotionEvent, fields).event_id for _, fields in chunk]
        if len(chunk) < 2000:
            return ids
        start = "(" + chunk[-1][0].decode()


def group_done(client: redis.Redis, stream: str, group: str) -> bool:
    state = group_state(client, stream, group)
    return state.exists and state.backlog == 0


@pytest.fixture
def prefix() -> str:
    return f"rel{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cleanup_prefix(redis_url):
    prefixes: list[str] = []
    yield prefixes
    client = redis.Redis.from_url(redis_url)
    for p in prefixes:
        for key in client.scan_iter(f"{p}:*", count=1000):
            client.delete(key)


# --- 1. kill -9 of a classifier replica ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill9_of_a_replica_loses_and_duplicates_no_face(redis_client, redis_url, prefix, served_model, tmp_path,
                                                         cleanup_prefix):
    cleanup_prefix.append(prefix)
    keys = Keys(prefix)
    total = 1200
    fill_faces(redis_client, keys.faces, make_faces(total))
    env = service_env(redis_url, prefix, served_model, tmp_path / "registry",
                      EMOTION_WORKER__CLAIM_IDLE_MS="1000", EMOTION_WORKER__CLAIM_INTERVAL_S="0.5",
                      EMOTION_CLASSIFIER__BATCH_SIZE="4", EMOTION_CLASSIFIER__BATCH_WAIT_MS="0", EMOTION_LOG_LEVEL="INFO")
    replicas = [emotion_proc(["classifier"], env, tmp_path / f"classifier-{i}.log") for i in range(3)]
    try:
        wait_for(lambda: redis_client.xlen(keys.events) >= total // 5, 40, what="a fifth of the events")
        victim = replicas[0]
        victim.kill9()
        assert not victim.alive()
        held = {c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(keys.faces, CLASSIFIER_GROUP)}
        victim_pending = sum(n for name, n in held.items() if f"-{victim.pid}-" in name)
        pending_before = sum(held.values())
        wait_for(lambda: group_done(redis_client, keys.faces, CLASSIFIER_GROUP), 45, interval=0.25,
                 what="the classifier group to finish every face")
        ids = event_ids(redis_client, keys.events)
        assert len(set(ids)) == total, f"lost {total - len(set(ids))} faces"
        assert len(ids) == total, f"{len(ids) - total} duplicate events (pending at kill: {pending_before})"
        assert redis_client.xlen(keys.dead(keys.faces)) == 0
        assert all(r.alive() for r in replicas[1:])
        if victim_pending:  # what the victim held when it died was taken over by a survivor
            assert any("event=reclaimed" in r.output() for r in replicas[1:])
    finally:
        stop_all(replicas)
    print(f"kill -9 drill: {total} faces, victim held {victim_pending} pending entries at the kill")


# --- 2. Redis restarted under the pipeline ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
def test_services_survive_a_redis_restart(prefix, served_model, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    keys = Keys(prefix)
    procs = []
    try:
        client = server.client()
        frames = demo_frames(150)
        pipe = client.pipeline(transaction=False)
        for frame in frames:
            pipe.xadd(keys.frames, encode(frame))
        pipe.execute()
        env = service_env(server.url, prefix, served_model, tmp_path / "registry",
                          EMOTION_WORKER__CLAIM_IDLE_MS="1000", EMOTION_WORKER__CLAIM_INTERVAL_S="0.5",
                          EMOTION_WORKER__BACKOFF_MAX_S="1", EMOTION_WORKER__BATCH_SIZE="2",
                          EMOTION_CLASSIFIER__BATCH_SIZE="4", EMOTION_LOG_LEVEL="INFO")
        procs = [emotion_proc(["detector"], env, tmp_path / "detector.log"),
                 emotion_proc(["classifier"], env, tmp_path / "classifier.log")]
        # Both services up and working (the classifier loads its model first) before Redis goes away.
        wait_for(lambda: client.xlen(keys.faces) >= 15 and client.xlen(keys.events) >= 5, 40,
                 what="faces and events before the restart")
        server.kill()  # the harshest stop: SIGKILL (appendfsync always keeps every acknowledged write)
        time.sleep(2.0)
        assert all(p.alive() for p in procs), "a service died while Redis was away"
        server.start()
        client = server.client()
        wait_for(lambda: group_done(client, keys.frames, DETECTOR_GROUP), 60, interval=0.3, what="detector to finish")
        wait_for(lambda: group_done(client, keys.faces, CLASSIFIER_GROUP), 30, interval=0.3, what="classifier to finish")
        # Classified faces are trimmed a few seconds after acknowledgement: those left must have their
        # events, and there is one event per face the detector published (its count commits with them).
        faces = {decode(FaceMessage, f).event_id for _, f in client.xrange(keys.faces)}
        ids = event_ids(client, keys.events)
        assert faces <= set(ids), f"faces without events: {len(faces - set(ids))}"
        assert len(ids) == len(set(ids)) == int(client.hget(keys.stats("detector"), "entries_out"))
        assert all(p.alive() for p in procs)
        logs = [p.output() for p in procs]
        assert all("event=redis_down" in text for text in logs), "services did not notice the outage"
    finally:
        stop_all(procs)
        server.stop()


# --- 3. PostgreSQL away for ~10 s under the recorder ---------------------------------------------

def _recorder_available() -> str | None:
    try:
        import shared.store  # noqa: F401
        import services.recorder.run  # noqa: F401
    except ImportError as exc:
        return f"recorder/store not built yet ({exc})"
    probe = subprocess.run([sys.executable, "-m", "emotion", "recorder", "--help"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return "`emotion recorder` is not a command yet"
    return None


def _postgres_database() -> tuple[str, callable]:
    psycopg = pytest.importorskip("psycopg")
    name = f"rel_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True,
                             connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")

    def drop() -> None:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return name, drop


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recorder_rides_out_ten_seconds_without_postgres(redis_client, redis_url, prefix, served_model, tmp_path,
                                                         cleanup_prefix):
    reason = _recorder_available()
    if reason:
        pytest.skip(reason)
    import sqlalchemy as sa

    cleanup_prefix.append(prefix)
    keys = Keys(prefix)
    database, drop = _postgres_database()
    proxy = TcpProxy("127.0.0.1", 5432)
    procs = []
    try:
        env = service_env(redis_url, prefix, served_model, tmp_path / "registry",
                          EMOTION_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{database}",
                          EMOTION_WORKER__BACKOFF_MAX_S="1", EMOTION_WORKER__CLAIM_IDLE_MS="1000",
                          EMOTION_WORKER__CLAIM_INTERVAL_S="0.5", EMOTION_WORKER__BATCH_SIZE="8")
        total = 300
        fill_faces(redis_client, keys.faces, make_faces(total))
        procs = [emotion_proc(["classifier"], env, tmp_path / "classifier.log")]
        wait_for(lambda: redis_client.xlen(keys.events) >= 50, 30, what="first events")
        procs.append(emotion_proc(["recorder"], env, tmp_path / "recorder.log"))
        wait_for(lambda: redis_client.hget(keys.stats("recorder"), "entries_in"), 30, what="first rows recorded")
        proxy.down()
        time.sleep(10)
        assert all(p.alive() for p in procs), "a service died while PostgreSQL was away"
        proxy.up()
        wait_for(lambda: group_done(redis_client, keys.faces, CLASSIFIER_GROUP), 30, what="classifier done")
        wait_for(lambda: group_done(redis_client, keys.events, RECORDER_GROUP), 40, interval=0.3, what="recorder done")
        engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events")).one()
        engine.dispose()
        events = event_ids(redis_client, keys.events)
        assert rows[0] == rows[1] == len(set(events)) == total
        assert redis_client.xlen(keys.dead(keys.events)) == 0
        assert proxy.refused > 0 or proxy.accepted > 1, "the outage was never felt by the recorder"
    finally:
        stop_all(procs)
        proxy.close()
        drop()


# --- 4. a corrupt model promoted ------------------------------------------------------------------

def _corrupt_copy(good: Path, target: Path, version: str, keep_checksum: bool) -> Path:
    shutil.copytree(good, target)
    data = json.loads((target / "metadata.json").read_text())
    data["version"] = version
    if not keep_checksum:
        data["sha256"] = None
    (target / "metadata.json").write_text(json.dumps(data))
    blob = (target / "model.tflite").read_bytes()
    (target / "model.tflite").write_bytes(blob[: len(blob) // 3])
    return target


@pytest.mark.timeout(60)
def test_corrupt_model_is_refused_and_running_classifier_keeps_serving(redis_client, settings, keys, served_model,
                                                                        tmp_path):
    from services.classifier.run import build_worker
    from shared.model_runtime import ModelError
    from shared.registry import ModelRegistry

    registry = ModelRegistry(settings.registry_dir, redis_client, keys, served_model)
    registry.register(served_model, version="good1")
    registry.promote("good1")
    settings.registry_dir.mkdir(parents=True, exist_ok=True)
    _corrupt_copy(served_model, settings.registry_dir / "badsum", "badsum", keep_checksum=True)
    _corrupt_copy(served_model, settings.registry_dir / "badfile", "badfile", keep_checksum=False)
    with pytest.raises(ModelError, match="checksum does not match"):
        registry.promote("badsum")
    with pytest.raises(ModelError, match="LiteRT cannot load it|no model.tflite|cannot"):
        registry.promote("badfile")
    with pytest.raises(ModelError, match="not in the registry"):
        registry.promote("missing")
    assert registry.current_version() == "good1"

    s = settings.model_copy(update={
        "default_model_dir": served_model,
        "worker": settings.worker.model_copy(update={"block_ms": 50}),
        "model_check_s": 0.05, "classifier": settings.classifier.model_copy(update={"batch_size": 8,
                                                                                    "batch_wait_ms": 0})})
    worker = build_worker(s, redis_client)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        fill_faces(redis_client, keys.faces, make_faces(40, session="before"))
        wait_for(lambda: redis_client.xlen(keys.events) >= 40, 20, what="events before the bad swap")
        for bad in ("badsum", "badfile"):
            redis_client.set(keys.model_current, bad)  # bypass promote: what a tampered key would do
            time.sleep(0.3)
            fill_faces(redis_client, keys.faces, make_faces(40, session=f"after-{bad}"))
            wait_for(lambda: worker.processor.follower.error, 10, what="model_error")

            def heartbeat():
                raw = redis_client.get(keys.heartbeat("classifier", worker.consumer))
                beat = json.loads(raw) if raw else {}
                return beat if beat.get("model_error") and bad in beat["model_error"] else None

            beat = wait_for(heartbeat, 10, what="heartbeat reporting the refused model")
            assert beat["model_version"] == "good1"
        wait_for(lambda: redis_client.xlen(keys.events) >= 120, 20, what="events after the bad swaps")
        events = [decode(EmotionEvent, f) for _, f in redis_client.xrange(keys.events)]
        assert len(events) == len({e.event_id for e in events}) == 120
        assert {e.model_version for e in events} == {"good1"}
        assert worker.processor.follower.swaps == 0
    finally:
        worker.stop_event.set()
        thread.join(10)
    assert not thread.is_alive()


# --- 5. a message that crashes its process --------------------------------------------------------

POISON_WORKER = textwrap.dedent("""
    import os, sys, time
    import redis
    from shared.schemas import FaceMessage
    from shared.settings import WorkerSettings
    from shared.streams import Keys
    from shared.worker import Outbound, Processor, StreamWorker

    url, prefix, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    keys = Keys(prefix)

    class Crashy(Processor):
        input_model = FaceMessage
        def handle(self, batch):
            out = []
            for face in batch:
                if face.camera_id == "poison":
                    os._exit(3)  # a segfault in a native library looks like this to the loop
                out.append(Outbound(prefix + ":out", {"id": face.event_id.encode()}))
            return out

    settings = WorkerSettings(batch_size=batch, block_ms=50, claim_idle_ms=100, claim_interval_s=0.1,
                              max_deliveries=3)
    time.sleep(0.25)  # let the previous incarnation's entries become idle enough to reclaim
    worker = StreamWorker(redis.Redis.from_url(url), Crashy(), service="crashy", stream=keys.faces, group="g",
                          keys=keys, settings=settings)
    sys.exit(worker.run(burst=True))
""")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_message_that_kills_its_process_is_dead_lettered_after_max_deliveries(redis_client, redis_url, prefix,
                                                                               tmp_path, cleanup_prefix):
    cleanup_prefix.append(prefix)
    keys = Keys(prefix)
    good_before = make_faces(10, camera="good", session="a")
    poison = make_faces(1, camera="poison", session="p")
    good_after = make_faces(10, camera="good", session="b")
    fill_faces(redis_client, keys.faces, good_before + poison + good_after)
    script = tmp_path / "crashy.py"
    script.write_text(POISON_WORKER)
    exits = []
    for _ in range(8):
        run = subprocess.run([sys.executable, str(script), redis_url, prefix, "1"], capture_output=True, text=True,
                             timeout=30, start_new_session=True, cwd=str(Path(__file__).resolve().parent.parent))
        exits.append(run.returncode)
        if run.returncode == 0:
            break
    assert exits == [3, 3, 3, 0], exits  # crashed on deliveries 1..3, dead-lettered on the 4th
    dead = redis_client.xrange(keys.dead(keys.faces))
    assert len(dead) == 1
    letter = dead[0][1]
    assert b"delivered 4 times" in letter[b"reason"] and b"max_deliveries=3" in letter[b"reason"]
    assert decode(FaceMessage, {k[5:]: v for k, v in letter.items() if k.startswith(b"orig:")}).camera_id == "poison"
    out = [f[b"id"].decode() for _, f in redis_client.xrange(f"{prefix}:out")]
    assert sorted(set(out)) == sorted(f.event_id for f in good_before + good_after)
    assert redis_client.xpending(keys.faces, "g")["pending"] == 0


# --- 9. overload at the capture end ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(90)
def test_overload_sheds_frames_keeps_frames_bounded_and_never_trims_faces(redis_client, redis_url, prefix,
                                                                          served_model, tmp_path, cleanup_prefix):
    from services.detector.run import build_worker as build_detector
    from shared.settings import Settings

    cleanup_prefix.append(prefix)
    keys = Keys(prefix)
    base = dict(EMOTION_LOG_LEVEL="WARNING")
    cap = StreamTable(keys).frames.retention.cap
    env = service_env(redis_url, prefix, served_model, tmp_path / "registry", **base)

    # (a) no detector at all and no lag limit: the frames stream is capped by MAXLEN ~ (the table's rule).
    capped = emotion_proc(["capture", "--source", "demo", "--camera-id", "over0", "--fps", "120", "--max-frames",
                           str(cap + 200), "--json"], dict(env, EMOTION_CAPTURE__SHED_LAG="100000"), tmp_path / "capture-a.log")
    try:
        capped.popen.wait(60)
    finally:
        capped.stop()
    assert capped.popen.returncode == 0, capped.output()
    assert redis_client.xlen(keys.frames) <= cap + 100  # approximate trimming: within one stream node
    assert int(redis_client.hget(keys.stats("capture"), "published")) == cap + 200

    # (b) a detector group that does not keep up (nobody reading): capture sheds instead of queueing.
    redis_client.delete(keys.frames)
    redis_client.xgroup_create(keys.frames, DETECTOR_GROUP, id="0", mkstream=True)
    shed = emotion_proc(["capture", "--source", "demo", "--camera-id", "over1", "--fps", "120", "--max-frames",
                         "200", "--json"], dict(env, EMOTION_CAPTURE__SHED_LAG="15"), tmp_path / "capture-b.log")
    try:
        shed.popen.wait(60)
    finally:
        shed.stop()
    assert shed.popen.returncode == 0, shed.output()
    stats = json.loads([line for line in shed.output().splitlines() if line.startswith("{")][-1])
    assert stats["shed"] >= 150 and stats["published"] <= 30, stats
    assert int(redis_client.hget(keys.stats("capture"), "shed")) == stats["shed"]
    assert 15 <= redis_client.xlen(keys.frames) <= 30

    # (c) the detector catches up with no classifier running: every face stays on the faces stream.
    settings = Settings(redis_url=redis_url, prefix=prefix, registry_dir=tmp_path / "registry",
                        default_model_dir=served_model)
    detector = build_detector(settings, redis_client)
    detector.run(burst=True)
    faces_out = int(redis_client.hget(keys.stats("detector"), "entries_out"))
    assert faces_out >= 15 and redis_client.xlen(keys.faces) == faces_out


# --- 10. kill -9 of a detector replica: its shard moves to another ------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(150)
def test_kill9_of_a_detector_replica_moves_its_shard_and_loses_no_frame(redis_client, redis_url, prefix, served_model,
                                                                        tmp_path, cleanup_prefix):
    """Guards the detector's lease hand-over: the shard of a replica killed with -9 is taken by the
    other once its lease expires, with the frames the victim held pending; every frame that reached a
    frames stream is processed (or dead-lettered), the rest were shed and counted by capture, and no
    face gets two events."""
    from shared.leases import ShardLeases
    from shared.shards import backlog, stats_of
    from shared.heartbeats import read_heartbeats

    cleanup_prefix.append(prefix)
    keys = Keys(prefix, 2)
    env = service_env(redis_url, prefix, served_model, tmp_path / "registry", EMOTION_SHARDS="2",
                      EMOTION_DETECTOR__LEASE_TTL_MS="2000", EMOTION_WORKER__BATCH_SIZE="4",
                      EMOTION_CLASSIFIER__BATCH_SIZE="8", EMOTION_LOG_LEVEL="INFO")
    leases = ShardLeases(redis_client, keys, "detector", "observer", 1000)
    detectors = [emotion_proc(["detector"], env, tmp_path / f"detector-{i}.log") for i in range(2)]
    classifier = emotion_proc(["classifier"], env, tmp_path / "classifier.log")
    captures = []
    try:
        wait_for(lambda: len(set(leases.holders().values()) - {None}) == 2, 60, what="one shard per detector")
        captures = [emotion_proc(["capture", "--source", "demo", "--camera-id", f"cam{k}", "--shard", str(k),
                                  "--fps", "8", "--session", "drill"], env, tmp_path / f"capture-{k}.log")
                    for k in range(2)]
        wait_for(lambda: all(int(redis_client.hget(s.stats("classifier"), "entries_out") or 0) >= 10
                             for s in keys.all_shards()), 60, what="events from both shards")
        owner = leases.holders()[0]
        victim = next(d for d in detectors if f"-{d.pid}-" in owner)
        survivor = next(d for d in detectors if d is not victim)
        victim.kill9()
        held = {c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(keys.frames, DETECTOR_GROUP)}
        victim_pending = held.get(owner, 0)
        wait_for(lambda: leases.holders()[0] not in (None, owner), 30, what="shard 0 taken by the survivor")
        survivor_name = leases.holders()[0]
        assert f"-{survivor.pid}-" in survivor_name
        wait_for(lambda: any(b.get("shards") == [0, 1] for b in read_heartbeats(redis_client, keys, "detector")), 10,
                 what="the survivor's heartbeat naming both shards")
        time.sleep(2.0)  # the survivor serves both cameras for a while
        for capture in captures:
            capture.stop()
        wait_for(lambda: backlog(redis_client, keys, "frames", DETECTOR_GROUP) == 0, 60, interval=0.3,
                 what="every frame processed")
        wait_for(lambda: backlog(redis_client, keys, "faces", CLASSIFIER_GROUP) == 0, 60, interval=0.3,
                 what="every face classified")
        stats = stats_of(redis_client, keys, ("capture", "detector", "classifier"))
        dead = sum(redis_client.xlen(keys.dead(s.frames)) for s in keys.all_shards())
        assert stats["detector"]["entries_in"] + dead == stats["capture"]["published"], stats
        ids = []
        for shard in keys.all_shards():
            ids += event_ids(redis_client, shard.events)
        assert len(ids) == len(set(ids)) == stats["detector"]["entries_out"], "a face got two events, or none"
        assert survivor.alive() and classifier.alive()
        taken = [line for line in survivor.output().splitlines() if "event=lease_acquired" in line and "shard=0" in line]
        assert taken, survivor.output()[-2000:]
        assert f"taken_over={victim_pending}" in taken[-1] or victim_pending == 0
        # The survivor's tracks of cam0 come from a fresh block of ids: none reuses the victim's.
        tracks = {decode(EmotionEvent, f).track_id for _, f in redis_client.xrange(keys.events)}
        assert max(tracks) > 1000, sorted(tracks)
    finally:
        stop_all(captures + detectors + [classifier])
    print(f"detector kill -9 drill: {stats['capture']['published']} frames published, {stats['capture'].get('shed', 0)} "
          f"shed during the hand-over, victim held {victim_pending} pending frames, taken over: {taken[-1][-40:]}")
