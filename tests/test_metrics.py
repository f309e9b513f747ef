"""shared/metrics.py: the definitions, the loop's and the processors' hooks against a real Redis, the
HTTP server with its probes, the port rules, and the dashboard's /metrics."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import redis

from shared.errors import StartupError
from shared.metrics import (COUNTERS, DEFAULT_PORTS, HISTOGRAMS, SERVICE_METRICS, MetricsServer, ServiceMetrics,
                            groups_from_state, render, serve_metrics)
from shared.settings import MetricsSettings
from shared.stream_state import group_state
from shared.streams import CLASSIFIER_GROUP
from tests.conftest import fill_faces, make_faces
from tests.metrics_utils import get, samples, value


def exposition(metrics: ServiceMetrics) -> str:
    return render(metrics, "")[0].decode()


# --- definitions ---------------------------------------------------------------------------------

def test_names_follow_the_prometheus_conventions():
    """Counters end in _total, durations in _seconds, every name has the emotion_ prefix and a help
    text; what each service exports exists; the exposition parses."""
    for spec in COUNTERS.values():
        assert spec.name.startswith("emotion_") and spec.name.endswith("_total") and spec.help
    for spec in HISTOGRAMS.values():
        assert spec.name.startswith("emotion_") and spec.name.endswith(("_seconds", "_entries")) and spec.help
        assert list(spec.buckets) == sorted(spec.buckets)
    for service, keys in SERVICE_METRICS.items():
        assert set(keys) <= set(COUNTERS) | set(HISTOGRAMS), service
        text = exposition(ServiceMetrics(service))
        assert samples(text), service
        assert "process_cpu_seconds_total" in text  # the per-replica CPU the Kubernetes requests come from


def test_a_counter_nobody_declared_is_ignored_never_raised():
    """Counting must never fail a batch (it runs inside `handle`)."""
    metrics = ServiceMetrics("classifier")
    metrics.count("no_such_counter", 3)
    metrics.observe("no_such_histogram", 1.0)
    assert "no_such" not in exposition(metrics)


# --- the loop and the processors, against a real Redis -----------------------------------------

def test_classifier_loop_metrics_equal_its_stats(pipeline_settings, redis_client, keys):
    """Events, entries, batches, inference timings, the detect->classify latency and the model info
    of a classifier drained in burst mode agree with the loop's own stats; a bad entry is a dead letter."""
    from services.classifier.run import build_worker

    faces = make_faces(40)
    fill_faces(redis_client, keys.faces, faces)
    redis_client.xadd(keys.faces, {b"schema_version": b"1", b"garbage": b"x"})
    worker = build_worker(pipeline_settings, redis_client)
    metrics = ServiceMetrics("classifier")
    worker.use_metrics(metrics)
    worker.run(burst=True)
    text = exposition(metrics)

    assert worker.stats.outputs == 40
    assert value(text, "emotion_events_total") == 40
    assert value(text, "emotion_entries_processed_total", stream=keys.faces) == 40
    assert value(text, "emotion_dead_letters_total", stream=keys.faces) == 1 == worker.stats.dead
    assert value(text, "emotion_batch_entries_count", stream=keys.faces) == worker.stats.batches
    assert value(text, "emotion_batch_entries_sum", stream=keys.faces) == 41
    assert value(text, "emotion_inference_duration_seconds_count") >= 1
    assert value(text, "emotion_stage_latency_seconds_count", stage="detect_to_classify") == 40
    # the faces were "detected" moments ago: every observation is in a finite bucket
    assert value(text, "emotion_stage_latency_seconds_bucket", stage="detect_to_classify", le="30.0") == 40
    info = [labels for name, labels, _ in samples(text) if name == "emotion_model_info"]
    assert info == [{"version": worker.processor.model.version, "preprocess": worker.processor.model.preprocess.id}]
    # the processor's own Counters reach Prometheus too (the test faces name another preprocessing)
    assert value(text, "emotion_preprocess_mismatch_total") == worker.processor.counters["preprocess_mismatch"] == 40
    assert metrics.health.ready()[0]


def test_recorder_observes_classify_to_record_and_end_to_end(pipeline_settings, redis_client, keys, tmp_path):
    from services.recorder.run import build_worker, open_store
    from services.classifier.run import build_worker as build_classifier

    fill_faces(redis_client, keys.faces, make_faces(12))
    build_classifier(pipeline_settings, redis_client).run(burst=True)
    engine = open_store(pipeline_settings)
    try:
        worker = build_worker(pipeline_settings, redis_client, engine)
        metrics = ServiceMetrics("recorder")
        worker.use_metrics(metrics)
        worker.run(burst=True)
    finally:
        engine.dispose()
    text = exposition(metrics)
    assert value(text, "emotion_events_recorded_total") == 12
    assert value(text, "emotion_events_duplicate_total") == 0
    for stage in ("classify_to_record", "end_to_end"):
        assert value(text, "emotion_stage_latency_seconds_count", stage=stage) == 12


def test_group_lag_and_pending_are_read_at_scrape_time(redis_client, keys):
    """The gauges are group_state's numbers at the moment of the scrape, not a copy from earlier."""
    fill_faces(redis_client, keys.faces, make_faces(10))
    redis_client.xgroup_create(keys.faces, CLASSIFIER_GROUP, id="0")
    redis_client.xreadgroup(CLASSIFIER_GROUP, "c1", {keys.faces: ">"}, count=4)
    metrics = ServiceMetrics("classifier")
    metrics.watch_groups(groups_from_state(redis_client, [(keys.faces, CLASSIFIER_GROUP)]))
    text = exposition(metrics)
    state = group_state(redis_client, keys.faces, CLASSIFIER_GROUP)
    assert (state.lag, state.pending) == (6, 4)
    assert value(text, "emotion_consumer_group_lag", stream=keys.faces, group=CLASSIFIER_GROUP) == 6
    assert value(text, "emotion_consumer_group_pending", stream=keys.faces, group=CLASSIFIER_GROUP) == 4
    fill_faces(redis_client, keys.faces, make_faces(5))
    assert value(exposition(metrics), "emotion_consumer_group_lag", stream=keys.faces, group=CLASSIFIER_GROUP) == 11


def test_a_scrape_while_redis_is_away_still_answers():
    """The lag series are left out of that scrape; the rest (counters, process) still comes."""
    dead = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    metrics = ServiceMetrics("classifier")
    metrics.watch_groups(groups_from_state(dead, [("t:faces", CLASSIFIER_GROUP)]))
    text = exposition(metrics)
    assert "emotion_consumer_group_lag" not in text
    assert value(text, "emotion_events_total") == 0


def test_capture_counts_published_and_shed_frames(redis_client, keys):
    import threading

    from services.capture.capture import run_capture
    from services.capture.sources import open_source
    from shared.settings import CaptureSettings

    metrics = ServiceMetrics("capture")
    stats = run_capture(redis_client, keys, CaptureSettings(fps=200), open_source("demo", fps=200), camera_id="cam7",
                        session_id="s", stop=threading.Event(), max_frames=12, metrics=metrics)
    text = exposition(metrics)
    assert stats.published + stats.shed == 12
    assert value(text, "emotion_frames_total", camera="cam7") == stats.published > 0
    assert value(text, "emotion_frames_shed_total", camera="cam7") == stats.shed


# --- the server and its probes ------------------------------------------------------------------

@pytest.fixture
def served():
    metrics = ServiceMetrics("detector", liveness_s=0.5)
    server = MetricsServer(metrics, "127.0.0.1", 0).start()
    yield metrics, f"http://127.0.0.1:{server.port}"
    server.close()


def test_server_serves_metrics_and_openmetrics(served):
    metrics, base = served
    metrics.count("faces", 7)
    status, body = get(base + "/metrics")
    assert status == 200 and value(body.decode(), "emotion_faces_total") == 7
    request = urllib.request.Request(base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.read().rstrip().endswith(b"# EOF")
    assert get(base + "/nothing")[0] == 404


def test_readiness_needs_the_loop_redis_and_the_model(served):
    metrics, base = served
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["loop"] == "not started"
    metrics.health.beat("detector")
    metrics.health.flag("redis", True)
    model = {"preprocess": "g48-x"}
    metrics.watch_model(lambda: model or None)
    assert get(base + "/readyz")[0] == 200
    metrics.health.flag("redis", False)
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["redis"] == "unavailable"
    metrics.health.flag("redis", True)
    model.clear()
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["checks"]["model"] == "unavailable"
    model["preprocess"] = "g48-x"
    metrics.health.stopping = True
    assert get(base + "/readyz")[0] == 503


def test_liveness_fails_once_the_loop_stops_iterating(served):
    metrics, base = served
    assert get(base + "/healthz")[0] == 200  # no loop yet (loading the model): alive
    metrics.health.beat("detector")
    assert get(base + "/healthz")[0] == 200
    time.sleep(0.7)  # liveness_s is 0.5 here
    status, body = get(base + "/healthz")
    assert status == 503 and json.loads(body)["last_iteration_s"]["detector"] > 0.5
    metrics.health.beat("detector")
    assert get(base + "/healthz")[0] == 200


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Settings:
    def __init__(self, **metrics) -> None:
        self.metrics = MetricsSettings(**metrics)


def test_port_rules():
    """0 is off; an explicit port that is taken stops the service with one line; a taken default
    port (a second replica on one host) falls back to a free one."""
    with serve_metrics(_Settings(port=0), "detector") as metrics:
        assert metrics.port is None
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        with pytest.raises(StartupError, match=rf"cannot listen on 127.0.0.1:{taken} for metrics \(EMOTION_METRICS__PORT\)"):
            with serve_metrics(_Settings(port=taken), "detector"):
                pass
    default = DEFAULT_PORTS["classifier"]
    with serve_metrics(_Settings(), "classifier") as first, serve_metrics(_Settings(), "classifier") as second:
        assert first.port and second.port and first.port != second.port
        assert default in (first.port, second.port) or not _free(default)
        assert get(f"http://127.0.0.1:{second.port}/metrics")[0] == 200


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_linger_keeps_the_final_counts_scrapeable():
    """After the service's run returns, /metrics answers `linger_s` more, with /readyz at 503."""
    import threading

    seen: dict[str, int] = {}
    context = serve_metrics(_Settings(port=_closed_port(), linger_s=1.0), "recorder")
    metrics = context.__enter__()
    metrics.count("recorded", 5)
    closer = threading.Thread(target=context.__exit__, args=(None, None, None))
    started = time.monotonic()
    closer.start()
    time.sleep(0.3)
    status, body = get(f"http://127.0.0.1:{metrics.port}/metrics")
    seen["metrics"], seen["ready"] = status, get(f"http://127.0.0.1:{metrics.port}/readyz")[0]
    assert value(body.decode(), "emotion_events_recorded_total") == 5
    closer.join()
    assert seen == {"metrics": 200, "ready": 503}
    assert time.monotonic() - started >= 1.0


# --- the dashboard --------------------------------------------------------------------------------

def test_dashboard_metrics_show_the_pipeline_without_a_token(settings, redis_client, keys, model_dir):
    """Every declared group's lag, live replicas per service; no token needed (Prometheus), while
    the pages still need one."""
    from services.dashboard.app import create_app

    fill_faces(redis_client, keys.faces, make_faces(3))
    redis_client.set(keys.heartbeat("classifier", "c1"), json.dumps({"service": "classifier", "pid": 1}), ex=30)
    app_settings = settings.model_copy(update={"default_model_dir": model_dir, "dashboard": settings.dashboard.model_copy(
        update={"auth_token": "a-long-enough-secret-token-for-tests"})})
    client = create_app(app_settings).server.test_client()
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert value(text, "emotion_consumer_group_lag", stream=keys.faces, group=CLASSIFIER_GROUP) == 3
    assert value(text, "emotion_consumer_group_lag", stream=keys.events, group="recorder") == 0
    assert value(text, "emotion_replicas", service="classifier") == 1
    assert value(text, "emotion_replicas", service="detector") == 0
    assert client.get("/").status_code == 401


def test_dashboard_metrics_cover_every_shard(settings, redis_client, model_dir):
    """With EMOTION_SHARDS=2 the pipeline's lag and pending are one series per shard's stream (the
    hash tag in the stream label), so a backlog in shard 1 is not hidden behind an idle shard 0."""
    from services.dashboard.app import create_app
    from shared.streams import Keys

    keys = Keys(settings.prefix, 2)
    fill_faces(redis_client, keys.of_shard(1).faces, make_faces(4, camera="cam1"))
    redis_client.xgroup_create(keys.of_shard(1).faces, CLASSIFIER_GROUP, id="0")
    redis_client.xreadgroup(CLASSIFIER_GROUP, "c1", {keys.of_shard(1).faces: ">"}, count=1)
    app_settings = settings.model_copy(update={"shards": 2, "default_model_dir": model_dir,
                                               "dashboard": settings.dashboard.model_copy(
                                                   update={"auth_token": "a-long-enough-secret-token-for-tests"})})
    text = create_app(app_settings).server.test_client().get("/metrics").get_data(as_text=True)
    faces = [shard.faces for shard in keys.all_shards()]
    assert value(text, "emotion_consumer_group_lag", stream=faces[1], group=CLASSIFIER_GROUP) == 3
    assert value(text, "emotion_consumer_group_pending", stream=faces[1], group=CLASSIFIER_GROUP) == 1
    assert value(text, "emotion_consumer_group_lag", stream=faces[0], group=CLASSIFIER_GROUP) == 0
    streams = {labels["stream"] for name, labels, _ in samples(text) if name == "emotion_consumer_group_pending"}
    assert streams == {getattr(shard, name) for shard in keys.all_shards() for name in ("frames", "faces", "events")}
