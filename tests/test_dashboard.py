"""Dashboard without a browser: auth, the /api/analyze route, live readers on a real Redis, time ranges,
and never hanging on an unreachable Redis or a slow store."""

from __future__ import annotations

import base64
import sys
import time
import types
from datetime import datetime, timedelta, timezone

import pytest

from shared.model_runtime import read_metadata

from services.dashboard.auth import AuthConfigError, check_auth_config
from services.dashboard.context import DashboardContext, SourceUnavailable
from services.dashboard.live import EventWindow, camera_views, find_frame, latest_frames, pipeline_snapshot
from services.dashboard.pages.history import resolve_range
from shared.store.queries import auto_bucket
from shared.schemas import encode
from shared.streams import DETECTOR_GROUP
from tests.test_analyze import png_bomb
from tests.test_dashboard_support import emotion_event, face_png, frame_message, served_model_dir  # noqa: F401


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
    check_auth_config(public.model_copy(update={"dashboard": public.dashboard.model_copy(update={"auth_token": "t"})}))
    assert main(["dashboard", "--host", "0.0.0.0", "--check-config"]) == 2
    assert main(["dashboard", "--check-config"]) == 0


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
    assert body["model_version"] == read_metadata(dash_settings.default_model_dir).version and len(body["faces"]) == 1
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
    from tests.test_analyze import group_photo_jpeg

    client = _app(dash_settings).server.test_client()
    response = _post(client, group_photo_jpeg(2), "group.jpg")
    assert response.status_code == 200, response.get_json()
    faces = response.get_json()["faces"]
    assert len(faces) == 8
    from shared.faces import make_detector

    if make_detector(dash_settings.detector).name == "yunet":  # the cascade gives no score
        assert all(0.5 <= face["detection_confidence"] <= 1 for face in faces)


@pytest.mark.parametrize("flip_tta", [False, True])
def test_analyze_classifies_as_the_live_classifier_is_set_to(dash_settings, redis_client, flip_tta):
    """With EMOTION_CLASSIFIER__FLIP_TTA the Analyze page and API average each face with its mirror, as
    the classifier replicas do; without it, they do not."""
    import numpy as np

    from shared.model_runtime import EmotionModel

    settings = dash_settings.model_copy(update={
        "classifier": dash_settings.classifier.model_copy(update={"flip_tta": flip_tta})})
    crops = np.random.default_rng(5).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    bare = EmotionModel(settings.default_model_dir)
    expected = bare.predict_tta(crops) if flip_tta else bare.predict(crops)
    other = bare.predict(crops) if flip_tta else bare.predict_tta(crops)
    assert not np.allclose(expected, other, atol=1e-3)
    ctx = DashboardContext(settings)
    try:
        np.testing.assert_allclose(ctx.model().predict(crops), expected, atol=1e-6)
    finally:
        ctx.close()


def test_api_analyze_without_a_model_is_503(settings, redis_client, tmp_path, face_png):  # noqa: F811
    bare = settings.model_copy(update={"default_model_dir": tmp_path / "nothing"})
    response = _post(_app(bare).server.test_client(), face_png.read_bytes())
    assert response.status_code == 503 and "no current model" in response.get_json()["error"]


def test_every_page_route_serves_the_app(dash_settings, redis_client):
    client = _app(dash_settings).server.test_client()
    for path in ("/", "/live", "/history", "/sessions?session=x", "/analyze", "/training", "/health"):
        assert client.get(path).status_code == 200
    assert client.get("/healthz").get_json() == {"ok": True}


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


# --- never hang ------------------------------------------------------------------------------------

def test_unreachable_redis_fails_fast(settings):
    ctx = DashboardContext(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="not answering"):
        ctx.redis_call(lambda c: c.ping())
    assert time.monotonic() - started < 3


def test_slow_store_times_out_with_a_message(settings, monkeypatch):
    """A store query that does not return is abandoned after the timeout, as an error for the banner."""
    queries = types.SimpleNamespace(emotion_shares=lambda engine, *a, **k: time.sleep(5))
    store = types.ModuleType("shared.store")
    store.make_engine = lambda url: object()
    store.queries = queries
    monkeypatch.setitem(sys.modules, "shared.store", store)
    ctx = DashboardContext(settings, query_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match="did not answer"):
        ctx.query("emotion_shares", None, None)
    assert time.monotonic() - started < 2
    ctx.close()


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
