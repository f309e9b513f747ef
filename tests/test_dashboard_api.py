"""The dashboard's JSON API (/api/v1) on a populated store, on SQLite and on PostgreSQL: every
resource against the store queries the pages use, keyset pagination, validation errors, auth, JSON
404/405, and the OpenAPI document (validated, and matching the routes the server really has)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from services.dashboard.api.models import MAX_PAGE, decode_cursor, encode_cursor
from shared.emotions import EMOTIONS
from shared.registry import ModelRegistry
from shared.schemas import encode
from shared.store import make_engine, queries
from tests.test_dashboard_api_support import N_EVENTS, T0, api_settings, api_store_url  # noqa: F401
from tests.test_dashboard_support import emotion_event, face_png, served_model_dir  # noqa: F401

RANGE = {"start": "2025-12-31T23:00:00Z", "end": "2026-01-01T03:00:00Z"}


def _client(settings, **dashboard):
    from services.dashboard.app import create_app

    settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(update=dashboard)})
    return create_app(settings).server.test_client()


@pytest.fixture
def api(api_settings, redis_client):
    return _client(api_settings)


@pytest.fixture
def engine(api_store_url):
    engine = make_engine(api_store_url)
    yield engine
    engine.dispose()


def _get(client, path, status=200, **params):
    response = client.get(path, query_string=params)
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/json"
    return response.get_json()


# --- events and pagination ------------------------------------------------------------------------

def test_pages_walk_every_event_once_in_order(api, engine):
    """Keyset pages of 7 return every stored event exactly once, in (time, id) order, ties included,
    and the last page says there is no next one."""
    expected = list(queries.events_frame(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=3))["event_id"])
    assert len(expected) == N_EVENTS + N_EVENTS // 10
    seen, cursor, pages = [], None, 0
    while True:
        body = _get(api, "/api/v1/events", **RANGE, limit=7, **({"cursor": cursor} if cursor else {}))
        pages += 1
        assert len(body["events"]) <= 7 and body["limit"] == 7
        seen += [e["event_id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == -(-len(expected) // 7)


def test_event_fields_match_the_stored_row(api, engine):
    first = _get(api, "/api/v1/events", **RANGE, limit=1)["events"][0]
    row = queries.events_frame(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=3), limit=1).iloc[0]
    assert first["event_id"] == row["event_id"]
    assert datetime.fromisoformat(first["time"]) == row["time"].to_pydatetime()
    assert list(first["probabilities"]) == list(EMOTIONS)  # FER order
    assert first["probabilities"]["happy"] == pytest.approx(row["p_happy"])
    assert first["smoothed"]["neutral"] == pytest.approx(row["s_neutral"])
    assert first["bbox"] == {"x": 10, "y": 20, "w": 64, "h": 64}
    assert first["detection_confidence"] == pytest.approx(row["detection_confidence"])
    assert first["latency"] == {"detect_ms": 12, "classify_ms": 18, "total_ms": 30}
    assert first["recorded"] is not None


def test_filters_by_camera_session_and_label(api, engine):
    frame = queries.events_frame(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=3))
    label = frame["label"].mode()[0]
    want = frame[(frame.camera_id == "cam1") & (frame.session_id == "s2") & (frame.label == label)]
    assert len(want) > 0
    body = _get(api, "/api/v1/events", **RANGE, camera="cam1", session="s2", label=label, limit=MAX_PAGE)
    assert [e["event_id"] for e in body["events"]] == list(want["event_id"])
    assert body["next_cursor"] is None
    # The range is half-open and narrows the page too.
    inside = _get(api, "/api/v1/events", start=T0.isoformat(), end=(T0 + timedelta(seconds=36)).isoformat())
    assert [e["event_id"] for e in inside["events"]] == list(frame[frame.time < T0 + timedelta(seconds=36)]["event_id"])


def test_page_size_is_bounded(api):
    assert len(_get(api, "/api/v1/events", **RANGE, limit=MAX_PAGE)["events"]) == N_EVENTS + N_EVENTS // 10
    error = _get(api, "/api/v1/events", 400, **RANGE, limit=MAX_PAGE + 1)
    assert error["error"] == f"invalid parameter 'limit': Input should be less than or equal to {MAX_PAGE}"
    assert error["details"][0]["parameter"] == "limit"


def test_cursor_round_trip_and_garbage():
    at = datetime(2026, 1, 1, 0, 0, 7, 123456, tzinfo=timezone.utc)
    assert decode_cursor(encode_cursor(at, 42)) == (at, 42)
    with pytest.raises(ValueError, match="not a cursor"):
        decode_cursor("bm9wZQ")  # base64 of "nope"


@pytest.mark.parametrize("params, fragment", [
    ({"start": "yesterday"}, "invalid parameter 'start': expected an ISO 8601 date-time"),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "invalid parameters: `end` must be after `start`"),
    ({"cursor": "bm9wZQ"}, "not a cursor returned by this API"),
    ({"label": "bored"}, "invalid parameter 'label'"),
    ({"camera": "cam 0"}, "invalid parameter 'camera'"),
    ({"session": "s\x00"}, "invalid parameter 'session'"),
    ({"cameras": "cam0"}, "invalid parameter 'cameras': unknown parameter"),
    ({"start": "0001-01-01T00:00:00+01:00"}, "invalid parameter 'start': date-time out of range"),
])
def test_bad_parameters_are_one_line_400s(api, params, fragment):
    error = _get(api, "/api/v1/events", 400, **params)
    assert fragment in error["error"] and "\n" not in error["error"]


def test_a_repeated_parameter_is_refused(api):
    response = api.get("/api/v1/events?camera=cam0&camera=cam1")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid parameter 'camera': given 2 times, expected once"


# --- sessions, aggregates, cameras, models, health ---------------------------------------------

def test_sessions_and_one_report(api, engine):
    sessions = _get(api, "/api/v1/sessions")["sessions"]
    assert {s["session_id"] for s in sessions} == {"s0", "s1", "s2"}
    s0 = next(s for s in sessions if s["session_id"] == "s0")
    assert s0["source"] == "demo" and s0["camera_id"] == "cam0" and s0["ended"] is not None
    assert len(_get(api, "/api/v1/sessions", limit=1)["sessions"]) == 1

    report = _get(api, "/api/v1/sessions/s1")
    expected = queries.session_report(engine, "s1")
    assert report["total"] == expected.total == sum(report["counts"].values())
    assert report["bucket"] == expected.bucket == "minute"
    assert report["counts"] == {row.label: int(row.count) for row in expected.counts.itertuples()}
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert sum(b["total"] for b in report["timeline"]) == expected.total
    means = expected.mean_probabilities.set_index("bucket")
    for bucket in report["timeline"]:
        at = datetime.fromisoformat(bucket["bucket"])
        assert bucket["mean_probabilities"]["sad"] == pytest.approx(means.loc[at, "p_sad"])
        assert sum(bucket["mean_probabilities"].values()) == pytest.approx(1.0)

    missing = _get(api, "/api/v1/sessions/no-such-session", 404)
    assert "no session 'no-such-session'" in missing["error"]


@pytest.mark.parametrize("bucket", ["minute", "hour", "day"])
def test_aggregates_equal_the_history_queries(api, engine, bucket):
    start, end = T0 + timedelta(seconds=30), T0 + timedelta(hours=1, minutes=30, seconds=5)  # partial edges
    body = _get(api, "/api/v1/aggregates", start=start.isoformat(), end=end.isoformat(), bucket=bucket, camera="cam0")
    counts = queries.emotion_counts(engine, start, end, bucket, camera_id="cam0")
    means = queries.mean_probabilities(engine, start, end, bucket, camera_id="cam0").set_index("bucket")
    assert body["total"] == int(counts["count"].sum()) > 0
    assert body["camera"] == "cam0" and body["bucket"] == bucket
    assert len(body["timeline"]) == len(means)
    for entry in body["timeline"]:
        at = datetime.fromisoformat(entry["bucket"])
        rows = counts[counts.bucket == at]
        assert entry["counts"] == {e: int(rows[rows.label == e]["count"].sum()) for e in EMOTIONS}
        for emotion in EMOTIONS:
            assert entry["mean_probabilities"][emotion] == pytest.approx(means.loc[at, f"p_{emotion}"])


def test_aggregates_refuse_too_many_buckets(api):
    error = _get(api, "/api/v1/aggregates", 400, start="2020-01-01T00:00:00Z", end="2026-01-01T00:00:00Z",
                 bucket="minute")
    assert "more than 10,000" in error["error"]


def test_cameras_from_the_store_and_live_captures(api, redis_client, keys):
    redis_client.hset(keys.cameras, "cam9", '{"source": "demo", "session_id": "s9", "fps": 15.0, "started_ms": 1}')
    redis_client.hset(keys.cameras, "cam0", '{"source": "webcam 0", "session_id": "s0", "fps": 10.0}')
    cameras = {c["camera_id"]: c for c in _get(api, "/api/v1/cameras")["cameras"]}
    assert set(cameras) == {"cam0", "cam1", "cam9"}
    assert cameras["cam0"]["event_count"] + cameras["cam1"]["event_count"] == N_EVENTS + N_EVENTS // 10
    assert cameras["cam0"]["live"]["source"] == "webcam 0"
    assert cameras["cam1"]["live"] is None
    assert cameras["cam9"]["event_count"] == 0 and cameras["cam9"]["live"]["session_id"] == "s9"


def test_models_per_role_and_versions(api_settings, redis_client, keys, served_model_dir):  # noqa: F811
    registry = ModelRegistry(api_settings.registry_dir, redis_client, keys, served_model_dir)
    registry.register(served_model_dir, "v2")
    registry.promote("v2")
    body = _get(_client(api_settings), "/api/v1/models")
    roles = {r["role"]: r for r in body["roles"]}
    assert roles["fast"] == {"role": "fast", "current": "v2", "serving": "v2", "source": "registry", "error": None}
    assert roles["accurate"]["current"] is None and roles["accurate"]["source"] == "default"
    assert [v["version"] for v in body["versions"]] == ["v2"]
    assert body["versions"][0]["current_for"] == ["fast"]
    assert body["versions"][0]["metrics"]["PublicTest"]["top1"] > 0.5


def test_health_reports_stages_heartbeats_and_latency(api, redis_client, keys):
    redis_client.hset(keys.stats("classifier"), mapping={"entries_in": 10, "entries_out": 9})
    redis_client.set(keys.heartbeat("classifier", "c-1"), '{"service": "classifier", "consumer": "c-1", "entries": 9}')
    redis_client.set(keys.heartbeat("detector", "junk"), '"not an object"')
    redis_client.xadd(keys.events, encode(emotion_event("cam0", 1)))
    body = _get(api, "/api/v1/health")
    stages = {s["service"]: s for s in body["stages"]}
    assert stages["classifier"]["counters"] == {"entries_in": 10, "entries_out": 9}
    assert stages["classifier"]["replicas"] == 1 and stages["detector"]["replicas"] == 0
    assert stages["recorder"]["input_stream"] == keys.events and stages["recorder"]["length"] == 1
    assert body["latency"]["events"] == 1 and body["latency"]["p50_ms"] == 40
    assert [b["consumer"] for b in body["heartbeats"]] == ["c-1"]


def test_unreachable_redis_is_a_503_with_one_line(api_settings):
    down = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    error = _get(_client(down), "/api/v1/health", 503)
    assert error["error"].startswith("Redis at redis://127.0.0.1:1/0 is not answering")


# --- auth, unknown paths, methods ---------------------------------------------------------------

def test_token_guards_the_api(api_settings, redis_client):
    client = _client(api_settings, auth_token="s3cret")
    for path in ("/api/v1/events", "/api/v1/openapi.json", "/api/v1/events/stream", "/api/nope"):
        response = client.get(path)
        assert response.status_code == 401 and response.mimetype == "application/json", path
        assert response.get_json()["error"].startswith("authentication required")
    ok = client.get("/api/v1/sessions", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and len(ok.get_json()["sessions"]) == 3
    basic = base64.b64encode(b"me:s3cret").decode()
    assert client.get("/api/v1/cameras", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/api/v1/models?token=s3cret").status_code == 200  # the auth parameter is not an API one
    document = client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer s3cret"}).get_json()
    assert document["security"] and set(document["components"]["securitySchemes"]) == {"bearer", "basic", "token"}


@pytest.mark.parametrize("method, path, status, allow", [
    ("GET", "/api/nope", 404, None),
    ("GET", "/api", 404, None),
    ("GET", "/api/", 404, None),
    ("GET", "/api/v2/events", 404, None),
    ("POST", "/api/v1/nope/deeper", 404, None),
    ("OPTIONS", "/api/v1/nope", 404, None),
    ("POST", "/api/v1/events", 405, "GET, HEAD, OPTIONS"),
    ("DELETE", "/api/v1/sessions/s0", 405, "GET, HEAD, OPTIONS"),
    ("PUT", "/api/v1/openapi.json", 405, "GET, HEAD, OPTIONS"),
    ("GET", "/api/analyze", 405, "POST, OPTIONS"),
])
def test_unknown_paths_and_wrong_methods_answer_json(api, method, path, status, allow):
    """Not the dashboard's HTML page (which Dash serves for any other GET)."""
    response = api.open(path, method=method)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]
    assert response.headers.get("Allow") == allow


@pytest.mark.parametrize("path, allow", [("/api/v1/events", "GET, HEAD, OPTIONS"),
                                         ("/api/v1/sessions/s0", "GET, HEAD, OPTIONS"),
                                         ("/api/analyze", "POST, OPTIONS")])
def test_options_lists_only_the_real_methods(api, path, allow):
    """Flask's own answer would also count the /api/<path> catch-all's methods (every one)."""
    response = api.options(path)
    assert response.status_code == 200 and response.headers["Allow"] == allow


def test_the_pages_still_get_html(api):
    response = api.get("/history")
    assert response.status_code == 200 and response.mimetype == "text/html"


def test_post_api_analyze_keeps_its_contract(api, face_png):  # noqa: F811
    response = api.post("/api/analyze", data={"image": (face_png.open("rb"), "face.png")},
                        content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["faces"]) == 1 and set(body["faces"][0]["probabilities"]) == set(EMOTIONS)
    bad = api.post("/api/analyze", data={"image": (__import__("io").BytesIO(b"hello"), "x.txt")},
                   content_type="multipart/form-data")
    assert bad.status_code == 415 and bad.mimetype == "application/json"


# --- the OpenAPI document --------------------------------------------------------------------------

def test_openapi_document_validates_and_matches_the_routes(api):
    from openapi_spec_validator import validate

    response = api.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    rules = api.application.url_map.iter_rules()
    served = {(r.rule.replace("<session_id>", "{session_id}"), m) for r in rules
              if r.rule.startswith("/api/") and r.endpoint != "api.unknown" for m in r.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    events = document["paths"]["/api/v1/events"]["get"]
    limit = next(p for p in events["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == MAX_PAGE
    analyze = document["paths"]["/api/analyze"]["post"]
    result = document["components"]["schemas"][analyze["responses"]["200"]["content"]["application/json"]["schema"]
                                                ["$ref"].rsplit("/", 1)[1]]
    assert "faces" in result["required"]


def test_the_committed_document_is_the_generated_one():
    """docs/openapi.json (linked from the README) is what the server serves with default settings.
    After an API change: python -m services.dashboard.api.openapi > docs/openapi.json"""
    import json
    from pathlib import Path

    from services.dashboard.api.openapi import openapi_document
    from services.dashboard.api.routes import OPERATIONS
    from shared.settings import DashboardSettings

    committed = json.loads((Path(__file__).resolve().parent.parent / "docs" / "openapi.json").read_text())
    assert committed == openapi_document(OPERATIONS, DashboardSettings())
