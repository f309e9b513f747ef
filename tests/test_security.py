"""Security: TLS and ACL-user Redis URLs, passwords kept out of logs and errors, nothing ever unpickled."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from shared.redis_conn import connect, redact
from shared.schemas import EmotionEvent, FaceMessage, decode, encode
from shared.settings import Settings
from shared.streams import Keys
from tests.proc_utils import RedisServer, clean_env, copy_model, emotion_proc, find_model_dir, service_env, wait_for

PASSWORD = "s3cr3t-Pa55"
ACL_PASSWORD = "alice-Pa55-xyz"


@pytest.mark.parametrize("url", ["rediss://alice:pw@cache.example.com:6380/0", "redis://:pw@127.0.0.1:6379/3",
                                 "redis://alice:pw@127.0.0.1/0", "unix:///tmp/redis.sock?db=2"])
def test_settings_accept_tls_and_credential_urls(url, monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("EMOTION_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    assert Settings(redis_url=url).redis_url == url
    monkeypatch.setenv("EMOTION_REDIS_URL", url)
    assert Settings().redis_url == url


def test_credentials_and_tls_are_passed_to_redis_py():
    client = connect("rediss://alice:pw%40x@cache.example.com:6380/2")
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert (kwargs["username"], kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == \
        ("alice", "pw@x", "cache.example.com", 6380, 2)
    plain = connect("redis://:pw@127.0.0.1:6379/0")
    assert plain.connection_pool.connection_class is redis.Connection
    assert plain.connection_pool.connection_kwargs["password"] == "pw"


@pytest.mark.parametrize("url,expected", [
    ("redis://alice:pw@h:1/0", "redis://alice:***@h:1/0"),
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("rediss://alice:p@ss:w@rd@h/0", "rediss://alice:***@h/0"),
    ("redis://alice@h/0", "redis://alice@h/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("postgresql+psycopg://u:pw@db:5432/x", "postgresql+psycopg://u:***@db:5432/x"),
])
def test_redact_hides_every_password(url, expected):
    assert redact(url) == expected


@pytest.fixture
def protected_redis(tmp_path):
    server = RedisServer(tmp_path / "redis", "--user", "default", "on", f">{PASSWORD}", "~*", "&*", "+@all",
                         "--user", "alice", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
                         appendonly=False, password=PASSWORD).start()
    yield server
    server.stop()


def _faces(n: int) -> list[FaceMessage]:
    rng = np.random.default_rng(1)
    now = int(time.time() * 1000)
    return [FaceMessage(camera_id="sec", session_id="s", frame_id=i, face_index=0, faces_in_frame=1, track_id=0,
                        bbox={"x": 0, "y": 0, "w": 9, "h": 9}, side=48, preprocess="g48-raw-m0.00", captured_ms=now,
                        detected_ms=now, crop=rng.integers(0, 256, 48 * 48, dtype=np.uint8).tobytes())
            for i in range(n)]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.skipif(find_model_dir() is None, reason="no exported model: neither models/default nor /tmp/model-tmp")
def test_password_protected_redis_works_and_no_password_reaches_the_logs(protected_redis, tmp_path):
    server = protected_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port).ping()  # really protected
    model = copy_model(tmp_path / "model")
    keys = Keys("sec")
    admin = server.client()
    for i, (user, password) in enumerate([("", PASSWORD), ("alice", ACL_PASSWORD)]):
        admin.delete(keys.faces, keys.events)
        for face in _faces(20):
            admin.xadd(keys.faces, encode(face))
        url = f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
        env = service_env(url, "sec", model, tmp_path / "registry", EMOTION_LOG_LEVEL="DEBUG")
        proc = emotion_proc(["classifier"], env, tmp_path / f"classifier-{i}.log")
        try:
            wait_for(lambda: admin.xlen(keys.events) >= 20, 30, what=f"events through {redact(url)}")
        finally:
            proc.stop()
        assert proc.popen.returncode == 0
        log_text = proc.output()
        assert "event=start" in log_text and password not in log_text
    # A capture with the password in its URL, logging at DEBUG: the password never appears.
    env = clean_env(EMOTION_REDIS_URL=f"redis://alice:{ACL_PASSWORD}@127.0.0.1:{server.port}/0", EMOTION_PREFIX="sec",
                    EMOTION_LOG_LEVEL="DEBUG")
    run = subprocess.run([sys.executable, "-m", "emotion", "capture", "--source", "demo", "--camera-id", "sec",
                          "--max-frames", "3", "--json"], env=env, capture_output=True, text=True, timeout=60,
                         start_new_session=True)
    assert run.returncode == 0, run.stderr
    assert ACL_PASSWORD not in run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_wrong_password_is_one_clear_line_without_the_password(protected_redis):
    wrong = "not-the-Pa55word"
    env = clean_env(EMOTION_REDIS_URL=f"redis://alice:{wrong}@127.0.0.1:{protected_redis.port}/0",
                    EMOTION_PREFIX="sec")
    run = subprocess.run([sys.executable, "-m", "emotion", "capture", "--source", "demo", "--camera-id", "sec",
                          "--max-frames", "1"], env=env, capture_output=True, text=True, timeout=40,
                         start_new_session=True)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and wrong not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("emotion capture:")]
    assert len(lines) == 1 and "alice:***@" in lines[0], run.stderr


class _Payload:
    marker = f"/tmp/emotion-unpickled-{uuid.uuid4().hex}"

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.timeout(60)
@pytest.mark.skipif(find_model_dir() is None, reason="no exported model: neither models/default nor /tmp/model-tmp")
def test_pickled_payloads_are_dead_lettered_never_unpickled(redis_client, settings, keys, tmp_path):
    from services.classifier.run import build_worker

    model = copy_model(tmp_path / "model")
    good = _faces(3)
    redis_client.xadd(keys.faces, encode(good[0]))
    redis_client.xadd(keys.faces, {"meta": pickle.dumps(_Payload()), "crop": good[1].crop})
    redis_client.xadd(keys.faces, {"meta": pickle.dumps({"camera_id": "x"}, protocol=0), "crop": good[1].crop})
    redis_client.xadd(keys.faces, {"meta": encode(good[2])["meta"], "crop": pickle.dumps(_Payload())})
    redis_client.xadd(keys.faces, encode(good[2]))
    s = settings.model_copy(update={"default_model_dir": model,
                                    "worker": settings.worker.model_copy(update={"block_ms": 20})})
    build_worker(s, redis_client).run(burst=True)
    dead = redis_client.xrange(keys.dead(keys.faces))
    assert len(dead) == 3 and all(f[b"reason"] for _, f in dead)
    events = [decode(EmotionEvent, f) for _, f in redis_client.xrange(keys.events)]
    assert sorted(e.frame_id for e in events) == [0, 2]
    assert not Path(_Payload.marker).exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_wrong_password_is_reported_as_refused_credentials_at_once(protected_redis):
    env = clean_env(EMOTION_REDIS_URL=f"redis://alice:wrong@127.0.0.1:{protected_redis.port}/0", EMOTION_PREFIX="sec")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "emotion", "capture", "--source", "demo", "--camera-id", "sec",
                          "--max-frames", "1"], env=env, capture_output=True, text=True, timeout=40,
                         start_new_session=True)
    assert "refused the credentials" in run.stderr and time.monotonic() - started < 8
