"""Dashboard without a browser: auth, the /api/analyze route, live readers on a real Redis, time ranges,
and never hanging on an unreachable Redis or a slow store."""

from __future__ import annotations

import json
import base64
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.bootstrap import registry_from
from shared.model_runtime import read_metadata

from services.dashboard.auth import AuthConfigError, check_auth_config
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.live import (EventWindow, camera_views, events_after, find_frame, latest_frames,
                                     pipeline_snapshot)
from services.dashboard.pages.history import resolve_range
from shared.store.queries import auto_bucket
from shared.schemas import encode
from shared.streams import DETECTOR_GROUP, Keys
from tests.images import png_bomb
from tests.test_dashboard_support import emotion_event, face_png, frame_message, served_model_dir  # noqa: F401
from tests.test_store_support import PG_URL, create_pg_database


STRONG_TOKEN = "Zq3-strong-token-0123456789"


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database (dropped afterwards)."""
    name, drop = create_pg_database()
    try:
        yield PG_URL.format(name=name)
    finally:
        drop()


@pytest.fixture
def dash_settings(settings, served_model_dir):  # noqa: F811
    return settings.model_copy(update={"default_model_dir": served_model_dir})


def _app(settings, **dashboard):
    from services.dashboard.app import create_app

    settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update=dashboard)})
    return create_app(settings)


# --- authentication ------------------------------------------------------------------------------

def test_public_host_requires_a_token(settings):
    """Listening beyond localhost without a token is refused, by create_app and by the CLI."""
    from emotion.cli import main

    public = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update={"host": "0.0.0.0"})})
    with pytest.raises(AuthConfigError):
        check_auth_config(public)
    with pytest.raises(AuthConfigError):
        _app(settings, host="0.0.0.0")
    check_auth_config(settings)  # 127.0.0.1: fine without
    check_auth_config(public.model_copy(update={"dashboard": public.dashboard.model_copy(
        update={"auth_token": STRONG_TOKEN})}))
    assert main(["dashboard", "--host", "0.0.0.0", "--check-config"]) == 2
    assert main(["dashboard", "--check-config"]) == 0


@pytest.mark.parametrize("token", ["x9!", "change-me-please", "only15charsxxxx", "admin:short-password",
                                   "admin:change-me-please"])
def test_weak_tokens_are_refused_on_a_public_address(settings, token, capsys, monkeypatch):
    """Short tokens (under 16 characters of secret) and the example's placeholder protect nothing."""
    from emotion.cli import main

    public = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
        update={"host": "0.0.0.0", "auth_token": token})})
    with pytest.raises(AuthConfigError) as refused:
        check_auth_config(public)
    assert token not in str(refused.value)  # the message never repeats the token
    monkeypatch.setenv("EMOTION_DASHBOARD__AUTH_TOKEN", token)
    assert main(["dashboard", "--host", "0.0.0.0", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "EMOTION_DASHBOARD__AUTH_TOKEN" in err and token not in err
    local = public.model_copy(update={"dashboard": public.dashboard.model_copy(update={"host": "127.0.0.1"})})
    check_auth_config(local)  # on this machine alone any token will do


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_token_is_no_token(blank):
    from shared.settings import DashboardSettings

    assert DashboardSettings(auth_token=blank).auth_token is None


def test_token_file_is_generated_once_and_kept(settings, tmp_path):
    """Without a token, `token_file` gives the dashboard a strong one of its own (0600), the same on every start."""
    from services.dashboard.auth import resolve_token, token_problem

    path = tmp_path / "volume" / "dashboard-token"
    public = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
        update={"host": "0.0.0.0", "token_file": path})})
    check_auth_config(public)  # a token file is as good as a token
    first, generated = resolve_token(public)
    assert generated and path.is_file() and oct(path.stat().st_mode & 0o777) == "0o600"
    token = first.dashboard.auth_token
    assert token and token_problem(token) is None and path.read_text().strip() == token
    again, generated = resolve_token(public)
    assert not generated and again.dashboard.auth_token == token
    configured = public.model_copy(update={"dashboard": public.dashboard.model_copy(
        update={"auth_token": STRONG_TOKEN})})
    assert resolve_token(configured)[0].dashboard.auth_token == STRONG_TOKEN  # a configured token wins
    path.write_text("short\n")
    with pytest.raises(AuthConfigError, match="too short"):
        resolve_token(public)


def test_token_in_header_query_cookie_or_basic_auth(dash_settings, redis_client):
    app = _app(dash_settings, auth_token="s3cret-token")
    client = app.server.test_client()
    assert client.get("/live").status_code == 401
    assert client.get("/_dash-layout").status_code == 401
    assert client.get("/live", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/live", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    basic = base64.b64encode(b"anyone:s3cret-token").decode()
    assert client.get("/live", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    page = client.get("/live?token=s3cret-token")
    assert page.status_code == 200
    assert b"s3cret-token" not in page.data  # no secret in the page
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "s3cret-token" not in cookie
    assert client.get("/_dash-layout").status_code == 200  # the cookie now carries the session
    assert b"s3cret-token" not in client.get("/_dash-layout").data


def test_user_password_token_needs_both(dash_settings, redis_client):
    client = _app(dash_settings, auth_token="admin:pw").server.test_client()
    good = base64.b64encode(b"admin:pw").decode()
    bad = base64.b64encode(b"other:pw").decode()
    assert client.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401


# --- POST /api/analyze ----------------------------------------------------------------------------

def _post(client, data: bytes, name: str = "upload.bin"):
    import io

    return client.post("/api/analyze", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_api_analyze_face_and_bad_inputs(dash_settings, redis_client, face_png):  # noqa: F811
    """200 with faces for a photo; 415 non-image, 400 zero-byte/corrupt/missing, 413 too big, 422 bomb."""
    client = _app(dash_settings, max_upload_bytes=2 * 1024 * 1024).server.test_client()
    ok = _post(client, face_png.read_bytes(), "astronaut.png")
    assert ok.status_code == 200, ok.get_json()
    body = ok.get_json()
    answering = read_metadata(registry_from(dash_settings, None, dash_settings.analyze.model_role).current_dir())
    assert body["model_version"] == answering.version and len(body["faces"]) == 1
    assert set(body["faces"][0]) >= {"box", "label", "probabilities"}
    assert set(body["faces"][0]["box"]) == {"x", "y", "w", "h"}
    assert _post(client, b"just text").status_code == 415
    assert _post(client, b"").status_code == 400
    assert _post(client, face_png.read_bytes()[:500]).status_code == 400
    assert client.post("/api/analyze", data={}, content_type="multipart/form-data").status_code == 400
    assert _post(client, b"\xff\xd8\xff" + bytes(2 * 1024 * 1024)).status_code == 413  # over the limit
    assert _post(client, b"\xff\xd8\xff" + bytes(6 * 1024 * 1024)).status_code == 413  # over the request cap
    bomb = _post(client, png_bomb())
    assert bomb.status_code == 422 and "pixels" in bomb.get_json()["error"]


def test_api_analyze_group_photo_returns_every_face(dash_settings, redis_client):
    """POST /api/analyze on a 2x2 tile of a two-person photo returns its 8 faces, each with the
    detector's confidence."""
    from tests.images import group_photo_jpeg

    client = _app(dash_settings).server.test_client()
    response = _post(client, group_photo_jpeg(2), "group.jpg")
    assert response.status_code == 200, response.get_json()
    faces = response.get_json()["faces"]
    assert len(faces) == 8
    from shared.faces import make_detector

    if make_detector(dash_settings.detector).name == "yunet":  # the cascade gives no score
        assert all(0.5 <= face["detection_confidence"] <= 1 for face in faces)


@pytest.mark.parametrize("tta", ["none", "flip", "ten-crop"])
def test_analyze_answers_with_the_analyze_role_and_its_tta(dash_settings, redis_client, tmp_path, face_png, tta):  # noqa: F811
    """Photos are answered by the accurate role's model (EMOTION_ANALYZE__MODEL_ROLE) with
    EMOTION_ANALYZE__TTA, and the API says which model, role and TTA answered."""
    import shutil

    import numpy as np

    from shared.model_runtime import EmotionModel

    accurate = shutil.copytree(dash_settings.default_model_dir, tmp_path / "accurate")
    meta = json.loads((accurate / "metadata.json").read_text())
    meta["version"] = "accurate-test"
    (accurate / "metadata.json").write_text(json.dumps(meta))
    settings = dash_settings.model_copy(update={
        "accurate_model_dir": accurate, "analyze": dash_settings.analyze.model_copy(update={"tta": tta})})
    crops = np.random.default_rng(5).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    bare = EmotionModel(accurate)
    expected = bare.predict_tta(crops, tta)
    if tta != "none":
        assert not np.allclose(expected, bare.predict(crops), atol=1e-3)
    ctx = DashboardContext(settings)
    try:
        np.testing.assert_allclose(ctx.model().predict(crops), expected, atol=1e-6)
    finally:
        ctx.close()
    answer = _post(_app(settings).server.test_client(), face_png.read_bytes()).get_json()
    # Ten-crop needs a network window smaller than the crop; a model that sees its whole crop runs flip.
    sees_window = bare.preprocess.network_side < bare.preprocess.input_size
    ran = "flip" if tta == "ten-crop" and not sees_window else tta
    assert bare.effective_tta(tta) == ran
    assert (answer["model_version"], answer["model_role"], answer["tta"]) == ("accurate-test", "accurate", ran)
    assert answer["faces"]


def test_analyze_says_the_fast_model_answered_while_no_accurate_model_is_installed(dash_settings, redis_client,
                                                                                    tmp_path, face_png):  # noqa: F811
    settings = dash_settings.model_copy(update={"accurate_model_dir": tmp_path / "not installed"})
    answer = _post(_app(settings).server.test_client(), face_png.read_bytes()).get_json()
    assert answer["model_role"] == "fast" and answer["model_version"] == read_metadata(
        settings.default_model_dir).version


def test_api_analyze_without_a_model_is_503(settings, redis_client, tmp_path, face_png):  # noqa: F811
    bare = settings.model_copy(update={"default_model_dir": tmp_path / "nothing", "accurate_model_dir": tmp_path / "none"})
    response = _post(_app(bare).server.test_client(), face_png.read_bytes())
    assert response.status_code == 503 and "no current model" in response.get_json()["error"]


def test_every_page_route_serves_the_app(dash_settings, redis_client):
    client = _app(dash_settings).server.test_client()
    for path in ("/", "/live", "/history", "/sessions?session=x", "/analyze", "/training", "/health"):
        assert client.get(path).status_code == 200
    assert client.get("/healthz").get_json() == {"ok": True, "pid": os.getpid()}


# --- live readers on a real Redis ------------------------------------------------------------------

def test_event_window_reads_only_new_entries(redis_client, keys):
    window = EventWindow(redis_client, keys)
    assert window.refresh() == []
    for i in range(3):
        redis_client.xadd(keys.events, encode(emotion_event("cam1", i)))
    redis_client.xadd(keys.events, {"meta": b"{not json"})
    first = window.refresh()
    assert [e.event.frame_id for e in first] == [0, 1, 2] and window.undecodable == 1
    redis_client.xadd(keys.events, encode(emotion_event("cam1", 3)))
    assert [e.event.frame_id for e in window.refresh()] == [0, 1, 2, 3]


def test_camera_views_match_frames_to_their_events(redis_client, keys):
    """Each camera shows the frame its newest event came from, with that frame's boxes; a camera without
    events shows its newest frame without boxes."""
    now = int(time.time() * 1000)
    for frame_id in range(3):
        for camera in ("a", "b"):
            redis_client.xadd(keys.frames, encode(frame_message(camera, frame_id, captured_ms=now + frame_id)))
    redis_client.xadd(keys.events, encode(emotion_event("a", 1, captured_ms=now + 1)))
    redis_client.xadd(keys.events, encode(emotion_event("a", 1, captured_ms=now + 1, face_index=1, track_id=2)))
    events = EventWindow(redis_client, keys).refresh()
    assert find_frame(redis_client, keys, "a", 1, now + 1).frame_id == 1
    assert find_frame(redis_client, keys, "a", 9, now + 1) is None
    assert {c: f.frame_id for c, f in latest_frames(redis_client, keys, ["a", "b"]).items()} == {"a": 2, "b": 2}
    views = {v.camera_id: v for v in camera_views(redis_client, keys, ["a", "b", "c"], events)}
    assert views["a"].frame.frame_id == 1 and len(views["a"].boxes) == 2
    assert views["b"].frame.frame_id == 2 and views["b"].boxes == []
    assert views["c"].frame is None


def test_pipeline_snapshot(redis_client, keys):
    redis_client.xadd(keys.frames, encode(frame_message("a", 0)))
    redis_client.xgroup_create(keys.frames, DETECTOR_GROUP, id="0")
    redis_client.hincrby(keys.stats("capture"), "shed", 4)
    redis_client.xadd(keys.dead(keys.faces), {"reason": "bad"})
    redis_client.set(keys.heartbeat("detector", "d1"), '{"service": "detector", "consumer": "d1"}', ex=10)
    snap = pipeline_snapshot(redis_client, keys)
    assert snap["lengths"]["frames"] == 1 and snap["dead"]["faces"] == 1
    assert snap["groups"]["detector"]["lag"] == 1 and snap["groups"]["detector"]["pending"] == 0
    assert snap["stats"]["capture"]["shed"] == 4
    assert [b["consumer"] for b in snap["heartbeats"]] == ["d1"]


def test_live_readers_see_every_shard(redis_client):
    """With EMOTION_SHARDS=2 the live views read both shards: events merged in order, each camera's
    frame found in its own shard (the cameras hash says which), counters and backlogs summed."""
    keys = Keys("t", 2)
    now = int(time.time() * 1000)
    for shard, camera in ((0, "a"), (1, "b")):
        shard_keys = keys.of_shard(shard)
        redis_client.hset(keys.cameras, camera, json.dumps({"shard": shard, "started_ms": now}))
        for frame_id in range(2):
            redis_client.xadd(shard_keys.frames, encode(frame_message(camera, frame_id, captured_ms=now + frame_id)))
        redis_client.hincrby(shard_keys.stats("capture"), "published", 2)
    redis_client.xadd(keys.of_shard(1).events, encode(emotion_event("b", 1, captured_ms=now + 1)))
    redis_client.xadd(keys.of_shard(0).events, encode(emotion_event("a", 0, captured_ms=now)))
    window = EventWindow(redis_client, keys)
    events = window.refresh()
    assert sorted((e.shard, e.event.camera_id) for e in events) == [(0, "a"), (1, "b")]
    assert [e.position for e in events] == sorted(e.position for e in events)
    assert events_after(events, events[0].stream_id) == events[1:]
    redis_client.xadd(keys.of_shard(1).events, encode(emotion_event("b", 2, captured_ms=now + 2)))
    assert [e.event.frame_id for e in window.refresh() if e.event.camera_id == "b"] == [1, 2]
    views = {v.camera_id: v for v in camera_views(redis_client, keys, ["a", "b"], window.refresh())}
    assert views["a"].frame.frame_id == 0 and views["b"].frame.frame_id == 1  # b's newest event is frame 2: gone
    assert {c: f.frame_id for c, f in latest_frames(redis_client, keys, ["a", "b"]).items()} == {"a": 1, "b": 1}
    snap = pipeline_snapshot(redis_client, keys)
    assert snap["shards"] == 2 and snap["lengths"]["frames"] == 4 and snap["stats"]["capture"]["published"] == 4


# --- never hang ------------------------------------------------------------------------------------

def test_unreachable_redis_fails_fast(settings):
    ctx = DashboardContext(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="not answering"):
        ctx.redis_call(lambda c: c.ping())
    assert time.monotonic() - started < 3


def test_slow_store_times_out_with_a_message(settings, postgres_url):
    """A store query that does not return (a table locked by another transaction, on a real PostgreSQL)
    is abandoned after the timeout, as a one-line error for the banner."""
    import sqlalchemy as sa

    from shared.store import make_engine, migrate

    migrate(postgres_url)
    ctx = DashboardContext(settings.model_copy(update={"database_url": postgres_url}), query_timeout_s=0.3)
    locker = make_engine(postgres_url)
    try:
        ctx.query("ping")  # opened and migrated before the lock
        with locker.connect() as conn:
            conn.execute(sa.text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(SourceUnavailable, match="did not answer"):
                ctx.query("emotion_shares", datetime.now(timezone.utc) - timedelta(hours=1),
                          datetime.now(timezone.utc))
            assert time.monotonic() - started < 2
            conn.rollback()
    finally:
        locker.dispose()
        ctx.close()


def test_unmigrated_store_is_an_empty_history_not_sql(settings, tmp_path):
    """The dashboard migrates a store the recorder has not prepared yet (it used to show
    `OperationalError ... no such table: rollups_minute [SQL: ...]`), and a broken store is one line."""
    fresh = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'fresh.sqlite'}"})
    ctx = DashboardContext(fresh)
    try:
        now = datetime.now(timezone.utc)
        assert ctx.query("emotion_shares", now - timedelta(hours=1), now).empty
        assert ctx.query("list_sessions").empty
    finally:
        ctx.close()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    ctx = DashboardContext(settings.model_copy(update={"database_url": f"sqlite:///{garbage}"}))
    try:
        with pytest.raises(SourceUnavailable) as broken:
            ctx.query("list_sessions")
        message = str(broken.value)
        assert "not a database" in message and "[SQL" not in message and "\n" not in message
    finally:
        ctx.close()


def test_describe_db_error_drops_the_statement(tmp_path):
    import sqlalchemy as sa

    from shared.store import describe_db_error

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with pytest.raises(sa.exc.OperationalError) as raised, engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM rollups_minute WHERE minute > :m"), {"m": 1})
    assert "[SQL" in str(raised.value)
    assert describe_db_error(raised.value) == "OperationalError: no such table: rollups_minute"


# --- history ranges -------------------------------------------------------------------------------

def test_ranges_and_buckets():
    now = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    assert resolve_range("1h", None, None, now) == (now - timedelta(hours=1), now)
    start, end = resolve_range("custom", "2026-01-01T10:00", "2026-01-01T11:30")
    assert (end - start) == timedelta(minutes=90) and start.tzinfo is timezone.utc
    with pytest.raises(ValueError):
        resolve_range("custom", "2026-01-01T11:00", "2026-01-01T10:00")
    with pytest.raises(ValueError):
        resolve_range("custom", "", None)
    assert [auto_bucket(timedelta(minutes=m)) for m in (5, 60, 60 * 48, 60 * 24 * 30)] == \
        ["second", "minute", "hour", "day"]


# --- probes, Host allow-list, headers, access log ----------------------------------------------------

def test_readyz_is_503_while_redis_is_stopped_and_healthz_stays_up(dash_settings, tmp_path):
    """/healthz is liveness only; /readyz checks Redis, the store and the model (503 naming what is down)."""
    from tests.proc_utils import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    settings = dash_settings.model_copy(update={"redis_url": server.url})
    client = _app(settings).server.test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.get_json()
        assert ready.get_json() == {"ready": True, "checks": {"redis": "ok", "store": "ok", "model": "ok"}}
    finally:
        server.stop()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["checks"] == {"redis": "unavailable", "store": "ok", "model": "ok"}
    assert client.get("/healthz").status_code == 200


def test_probes_need_no_token_but_say_nothing_secret(dash_settings, redis_client):
    client = _app(dash_settings, auth_token=STRONG_TOKEN).server.test_client()
    assert client.get("/healthz").status_code == 200
    body = client.get("/readyz").get_data(as_text=True)
    assert "redis://" not in body and "sqlite" not in body


@pytest.mark.parametrize("host,allowed", [("localhost", True), ("localhost:8050", True), ("127.0.0.1:8050", True),
                                          ("[::1]:8050", True), ("evil.example", False),
                                          ("evil.example:8050", False), ("127.0.0.1.evil.example", False)])
def test_without_a_token_only_local_host_headers_are_served(dash_settings, redis_client, host, allowed):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the dashboard."""
    client = _app(dash_settings).server.test_client()
    response = client.get("/live", headers={"Host": host})
    assert response.status_code == (200 if allowed else 400), response.get_data(as_text=True)


def test_allowed_hosts_extend_the_list_and_a_token_replaces_it(dash_settings, redis_client):
    client = _app(dash_settings, allowed_hosts="emotion.lan, kiosk").server.test_client()
    assert client.get("/live", headers={"Host": "emotion.lan:8050"}).status_code == 200
    assert client.get("/live", headers={"Host": "other.lan"}).status_code == 400
    client = _app(dash_settings, auth_token=STRONG_TOKEN).server.test_client()
    assert client.get("/live", headers={"Host": "anything.example",
                                        "Authorization": f"Bearer {STRONG_TOKEN}"}).status_code == 200


def test_security_headers_on_every_response(dash_settings, redis_client):
    client = _app(dash_settings, auth_token=STRONG_TOKEN).server.test_client()
    for response in (client.get("/live"), client.get("/live", headers={"Authorization": f"Bearer {STRONG_TOKEN}"}),
                     client.get("/healthz")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_every_4xx_is_logged_without_the_token(dash_settings, redis_client, caplog):
    client = _app(dash_settings, auth_token=STRONG_TOKEN).server.test_client()
    with caplog.at_level("WARNING", logger="services.dashboard.auth"):
        assert client.get("/live?token=wrong-guess-0123456789").status_code == 401
        assert _post(client, b"hello").status_code == 401
        assert client.get(f"/assets/missing.css?token={STRONG_TOKEN}").status_code == 404
        assert client.post("/api/analyze", headers={"Authorization": f"Bearer {STRONG_TOKEN}"}, data={},
                           content_type="multipart/form-data").status_code == 400
    lines = [r.getMessage() for r in caplog.records if "event=http_error" in r.getMessage()]
    assert [line.split()[1] for line in lines] == ["status=401", "status=401", "status=404", "status=400"]
    assert "path=/live" in lines[0] and "path=/assets/missing.css" in lines[2]
    assert not any(STRONG_TOKEN in line or "wrong-guess" in line for line in lines)


# --- Analyze without Redis; no "retrying" in the API -------------------------------------------------

def test_analyze_works_without_redis(dash_settings, face_png):  # noqa: F811
    """The model is local: with Redis unreachable the API still answers (the CURRENT file or the default)."""
    settings = dash_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    response = _post(_app(settings).server.test_client(), face_png.read_bytes(), "astronaut.png")
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["faces"]) == 1


def test_api_errors_never_say_retrying(settings, tmp_path, face_png):  # noqa: F811
    bare = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "default_model_dir": tmp_path / "none",
                                       "accurate_model_dir": tmp_path / "none"})
    response = _post(_app(bare).server.test_client(), face_png.read_bytes())
    assert response.status_code == 503
    assert "retrying" not in response.get_json()["error"] and "no current model" in response.get_json()["error"]


# --- figures and defaults that must not mislead -------------------------------------------------------

def test_health_chart_without_readings_has_no_date_axis():
    """An empty date axis renders as January 2000: without two readings the chart says it is waiting."""
    from services.dashboard.pages.health import RATE_SERIES, rates_figure

    empty = rates_figure([])
    assert empty.layout.xaxis.visible is False and "Waiting" in empty.layout.annotations[0].text
    points = [{"t": "2026-12-01 10:00:00", "y": [1.0] * len(RATE_SERIES)},
              {"t": "2026-12-01 10:00:02", "y": [2.0] * len(RATE_SERIES)}]
    drawn = rates_figure(points)
    assert drawn.layout.xaxis.type == "date" and list(drawn.data[0].x) == [p["t"] for p in points]


def test_live_timeline_is_drawn_whole_with_its_first_events_then_extended(redis_client, keys):
    from dash import no_update

    from services.dashboard.pages.live import _timeline_update

    assert _timeline_update([], drawn=False) == (no_update, no_update)
    for i in range(3):
        redis_client.xadd(keys.events, encode(emotion_event("cam1", i, label="sad")))
    events = EventWindow(redis_client, keys).refresh()
    figure, extension = _timeline_update(events, drawn=False)
    assert extension is no_update and sum(len(trace.x) for trace in figure.data) == 3
    figure, extension = _timeline_update(events[-1:], drawn=True)
    assert figure is no_update and sum(len(xs) for xs in extension[0]["x"]) == 1


def test_stopped_cameras_are_told_apart_from_capturing_ones(redis_client, keys):
    from services.dashboard.live import capturing_cameras

    redis_client.set(keys.heartbeat("capture", "capture-a-host-1"), '{"service": "capture", "camera_id": "a"}', ex=10)
    redis_client.set(keys.heartbeat("detector", "d1"), '{"service": "detector"}', ex=10)
    assert capturing_cameras(redis_client, keys) == {"a"}


def test_sessions_page_opens_the_newest_session_with_faces(settings, tmp_path):
    """A run that failed at once (no events) is listed but not opened by default; a two-camera run of
    `emotion up` is labelled with both cameras."""
    from services.dashboard.pages.sessions import session_options
    from shared.store import make_engine, migrate, open_session, record_events

    url = f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    migrate(url)
    engine = make_engine(url)
    now = int(time.time() * 1000)
    open_session(engine, "s-good", source="cam0=demo, cam1=demo",
                 started=datetime.now(timezone.utc) - timedelta(minutes=5))
    record_events(engine, [emotion_event(cam, i, session_id="s-good", captured_ms=now - 200_000 + i)
                           for i in range(3) for cam in ("cam0", "cam1")])
    open_session(engine, "s-failed", source="cam0=/nope.mp4", started=datetime.now(timezone.utc))
    engine.dispose()
    ctx = DashboardContext(settings.model_copy(update={"database_url": url}))
    try:
        options, default, error = session_options(ctx)
        assert error is None and [o["value"] for o in options] == ["s-failed", "s-good"]
        assert default == "s-good"
        assert "cam0=demo, cam1=demo" in options[1]["label"] and "6 faces" in options[1]["label"]
        report = ctx.query("session_report", "s-good")
        assert report.cameras == {"cam0": 3, "cam1": 3}
    finally:
        ctx.close()


# --- Training: the dataset path, the worker, the default model ---------------------------------------

@pytest.mark.parametrize("path,problem", [("/etc", "does not look like a FER-2013 dataset"),
                                          ("/etc/passwd", "neither a .npz archive nor a .csv"),
                                          ("/nonexistent/fer", "does not exist")])
def test_dataset_paths_that_cannot_be_fer2013_are_refused(path, problem):
    from shared.training import dataset_problem

    assert problem in dataset_problem(Path(path))


def test_dataset_layouts_that_can_be_fer2013_pass(tmp_path):
    from shared.training import dataset_problem

    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "fer2013_training.npz").write_bytes(b"")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    (tmp_path / "images" / "train" / "happy").mkdir(parents=True)
    for folder in ("npz", "csv", "images"):
        assert dataset_problem(tmp_path / folder) is None, folder
    assert dataset_problem(tmp_path / "npz" / "fer2013_training.npz") is None


def test_training_page_says_whether_a_worker_listens(redis_client, keys):
    from services.dashboard.pages.training import listening_workers, workers_notice

    assert listening_workers(redis_client, keys) == 0
    notice = workers_notice(0, 2, keys.training_queue)
    assert "No worker is listening on queue 't:training'" in notice.children and "2 queued job(s)" in notice.children
    assert "1 worker(s) listening" in workers_notice(1, 0, keys.training_queue).children


def test_default_model_is_listed_among_versions_and_served(dash_settings, redis_client):
    from services.dashboard.pages.training import _versions

    ctx = DashboardContext(dash_settings)
    try:
        versions, served = _versions(ctx)
    finally:
        ctx.close()
    assert served == "default"
    assert [name for name, _ in versions] == ["default"]
    assert versions[0][1].version == read_metadata(dash_settings.default_model_dir).version
