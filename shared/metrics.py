"""Prometheus metrics of one process, every definition in one place.

Each process has its own `ServiceMetrics` with its own registry (no global state: two workers in one
test process never share a counter). The shared loop (shared/worker.py), the processors (through
`Processor.metrics` and `Counters`) and capture feed it; `MetricsServer` serves it on the service's
metrics port, beside the probes Kubernetes uses. A replica serving several shards (shared/sharded.py)
runs one worker loop per shard on threads of one process: they all feed that process's one
`ServiceMetrics` and are covered by its one pair of probes.

- `GET /metrics`  the Prometheus text format (OpenMetrics when asked for);
- `GET /healthz`  liveness: 200 while every loop of the process (a replica's own and each of its shard
  loops) iterated within `metrics.liveness_s` (a Redis or database outage does not fail it: the
  loop still iterates, backing off);
- `GET /readyz`   readiness: 200 once the loops run, their last Redis call succeeded, (detector,
  classifier) a model is loaded and (detector) the replica has had its first chance to lease
  shards; 503 with `checks` saying which is not, and during a stop. A detector on standby (no
  lease) is alive and ready, and serves 0 shards. Both name the shards the process serves.

Names follow the Prometheus conventions: `emotion_` prefix, counters end in `_total`, durations are
histograms in `_seconds`, the model is an info metric (`emotion_model_info`). Stream labels carry the
stream's key, shard tag included (`emotion:{0}:faces`), so each shard has its series and two
deployments sharing a Prometheus stay apart; series without a stream label are the process's sum
over its shards. Lag and pending entries are per shard too: sum them over `stream` for a group's total.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Hashable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

# The metrics port of each service when `metrics.port` is not set (0 turns the server off). The
# dashboard serves /metrics on its own port instead (services/dashboard/app.py).
DEFAULT_PORTS = {"capture": 9181, "detector": 9182, "classifier": 9183, "recorder": 9184}

# Seconds: a face normally crosses a stage in milliseconds; the upper buckets show a backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

STAGES = ("capture_to_detect", "detect_to_classify", "classify_to_record", "end_to_end")
"""Values of the `stage` label of emotion_stage_latency_seconds: the detector observes the first, the
classifier the second, the recorder the last two (end to end = captured -> stored)."""


@dataclass(frozen=True)
class CounterDef:
    name: str
    help: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistogramDef:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]


COUNTERS: dict[str, CounterDef] = {
    # capture
    "frames": CounterDef("emotion_frames_total", "Frames published to the frames stream", ("camera",)),
    "frames_shed": CounterDef("emotion_frames_shed_total", "Frames capture dropped: the detector was shed_lag "
                                                           "behind, or Redis was away", ("camera",)),
    # what the loop publishes, by the stream's name in the table of streams (shared/streams.py)
    "faces": CounterDef("emotion_faces_total", "Faces published by the detector"),
    "events": CounterDef("emotion_events_total", "Emotion events published by the classifier"),
    # the loop (every stream service)
    "entries": CounterDef("emotion_entries_processed_total", "Stream entries handled and acknowledged "
                                                             "(dead letters excluded)", ("stream",)),
    "dead_letters": CounterDef("emotion_dead_letters_total", "Entries moved to <stream>:dead", ("stream",)),
    "reclaimed": CounterDef("emotion_entries_reclaimed_total", "Entries taken over from consumers that stopped "
                                                               "answering", ("stream",)),
    "redis_errors": CounterDef("emotion_redis_errors_total", "Redis outages met (each retried with backoff)"),
    "transient_errors": CounterDef("emotion_transient_errors_total", "Transient failures retried with backoff "
                                                                     "(a database away)"),
    # processors' own counters, by the name they give shared/processor.py Counters
    "frames_without_faces": CounterDef("emotion_frames_without_faces_total", "Frames in which no face was found"),
    "faces_over_limit": CounterDef("emotion_faces_over_limit_total", "Faces beyond detector.max_faces in a frame "
                                                                     "(counted, not published)"),
    "preprocess_mismatch": CounterDef("emotion_preprocess_mismatch_total", "Faces cropped for another model than "
                                                                           "the one serving"),
    "resized_crops": CounterDef("emotion_crops_resized_total", "Crops not at the model's input size (resized)"),
    "recorded": CounterDef("emotion_events_recorded_total", "Events inserted into the event store"),
    "duplicates": CounterDef("emotion_events_duplicate_total", "Redelivered events the store already had (skipped)"),
    "capped_unacknowledged": CounterDef("emotion_entries_capped_total", "Entries a safety cap removed before every "
                                                                        "group had acknowledged them (lost)"),
}

HISTOGRAMS: dict[str, HistogramDef] = {
    "stage_latency": HistogramDef("emotion_stage_latency_seconds", "Time a face took from one stage to the next, by "
                                  "stage: " + ", ".join(STAGES), ("stage",), LATENCY_BUCKETS),
    "batch_size": HistogramDef("emotion_batch_entries", "Entries per batch read by the loop", ("stream",),
                               BATCH_BUCKETS),
    "batch_duration": HistogramDef("emotion_batch_duration_seconds", "Time to handle and commit one batch",
                                   ("stream",), DURATION_BUCKETS),
    "inference": HistogramDef("emotion_inference_duration_seconds", "Model inference per micro-batch (classifier)",
                              (), DURATION_BUCKETS),
}

# Read when Prometheus scrapes (see _ScrapeTimeCollector): name -> help.
GAUGES: dict[str, str] = {
    "emotion_consumer_group_lag": "Entries of the stream not yet delivered to the group",
    "emotion_consumer_group_pending": "Entries delivered to the group's consumers and not yet acknowledged",
    "emotion_replicas": "Live processes per service (unexpired heartbeats; the dashboard's /metrics)",
    "emotion_shards_served": "Shards whose worker loop this process runs (0: a detector on standby)",
}
MODEL_INFO = ("emotion_model", "The model this process serves (classifier) or crops for (detector)")
"""An info metric: exposed as emotion_model_info{...} 1."""

LOOP_METRICS = ("entries", "dead_letters", "reclaimed", "redis_errors", "transient_errors", "capped_unacknowledged",
                "batch_size", "batch_duration")
SERVICE_METRICS: dict[str, tuple[str, ...]] = {
    "capture": ("frames", "frames_shed", "redis_errors"),
    "detector": (*LOOP_METRICS, "faces", "frames_without_faces", "faces_over_limit", "stage_latency"),
    "classifier": (*LOOP_METRICS, "events", "preprocess_mismatch", "resized_crops", "stage_latency", "inference"),
    "recorder": (*LOOP_METRICS, "recorded", "duplicates", "stage_latency"),
}
"""What each service exports from its start (unlabelled counters at 0, so `rate()` sees the first
increment); anything else a service counts appears at its first use."""

GroupReader = Callable[[], Iterable[tuple[str, str, int | None, int]]]
"""Yields (stream, group, lag, pending) when called: see `groups_from_state`."""


class Health:
    """What /healthz and /readyz answer from: each loop's last iteration, and named checks.

    A process may run several loops on threads (a sharded replica: its own loop of leases and
    heartbeats, and one worker loop per shard it serves), all reporting here by name. Liveness
    needs every loop to have iterated lately; a flag (its last Redis call succeeded) is kept per
    loop and is ok only while it is ok in every loop. A loop that ended for good (a shard handed
    back) is `forget`-ten, so it neither fails liveness nor lingers.
    """

    def __init__(self, liveness_s: float) -> None:
        self.liveness_s = liveness_s
        self._beats: dict[str, float] = {}
        self._checks: dict[str, Callable[[], bool]] = {}
        self._flags: dict[tuple[str, str], bool] = {}
        self._info: list[Callable[[], dict]] = []
        self._lock = threading.Lock()  # loops on several threads beat while a probe reads
        self.stopping = False

    def beat(self, loop: str) -> None:
        with self._lock:
            self._beats[loop] = time.monotonic()

    def flag(self, name: str, ok: bool, loop: str = "") -> None:
        """A check the loop itself knows the answer to (its last Redis call succeeded)."""
        with self._lock:
            self._flags[(name, loop)] = ok

    def forget(self, loop: str) -> None:
        """A loop that ended on purpose: its last iteration and its flags no longer count."""
        with self._lock:
            self._beats.pop(loop, None)
            for key in [key for key in self._flags if key[1] == loop]:
                del self._flags[key]

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def add_info(self, info: Callable[[], dict]) -> None:
        """Fields both probes add to their answer (the shards a replica serves)."""
        self._info.append(info)

    def live(self) -> tuple[bool, dict]:
        now = time.monotonic()
        with self._lock:
            ages = {loop: round(now - at, 3) for loop, at in self._beats.items()}
        return all(age <= self.liveness_s for age in ages.values()), {"last_iteration_s": ages, **self.info()}

    def ready(self) -> tuple[bool, dict]:
        with self._lock:
            started = bool(self._beats)
            flags: dict[str, bool] = {}
            for (name, _loop), ok in self._flags.items():
                flags[name] = flags.get(name, True) and ok
        checks = {"loop": "ok" if started else "not started"}
        if self.stopping:
            checks["loop"] = "stopping"
        for name, ok in flags.items():
            checks[name] = "ok" if ok else "unavailable"
        for name, check in list(self._checks.items()):
            try:
                checks[name] = "ok" if check() else "unavailable"
            except Exception as exc:  # noqa: BLE001 - a probe answers, it never raises
                checks[name] = f"unavailable ({type(exc).__name__})"
        return all(state == "ok" for state in checks.values()), {"checks": checks, **self.info()}

    def info(self) -> dict:
        fields: dict = {}
        for read in self._info:
            try:
                fields.update(read())
            except Exception:  # noqa: BLE001 - a probe answers, it never raises
                continue
        return fields


class ServiceMetrics:
    """The metrics of one process (one service), in a registry of its own."""

    def __init__(self, service: str, *, liveness_s: float = 60.0, process: bool = True) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        if process:  # CPU seconds, resident memory, open files of this process
            ProcessCollector(registry=self.registry)
        self.health = Health(liveness_s)
        self.port: int | None = None  # once served
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        # Keyed, so that a loop started again (a shard leased anew) replaces its entry: nothing grows.
        self._group_readers: dict[Hashable, GroupReader] = {}
        self._replicas: Callable[[], dict[str, int]] | None = None
        self._model_info: dict[str, Callable[[], dict | None]] = {}
        self._shards: Callable[[], int] | None = None
        self._unknown_keys: set[str] = set()
        self._lock = threading.Lock()
        self.registry.register(_ScrapeTimeCollector(self))
        for key in SERVICE_METRICS.get(service, ()):
            self._metric(key)

    # --- counting ----------------------------------------------------------------------------

    def _metric(self, key: str) -> Counter | Histogram | None:
        with self._lock:
            if key in self._counters:
                return self._counters[key]
            if key in self._histograms:
                return self._histograms[key]
            if key in COUNTERS:
                spec = COUNTERS[key]
                metric = self._counters[key] = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
                return metric
            if key in HISTOGRAMS:
                spec = HISTOGRAMS[key]
                metric = self._histograms[key] = Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets,
                                                           registry=self.registry)
                return metric
        return None

    def count(self, key: str, amount: float = 1, **labels: str) -> None:
        """Add to the counter `key` of COUNTERS. An unknown key is logged once and ignored: counting
        must never fail a batch."""
        if not amount:
            return
        metric = self._metric(key)
        if not isinstance(metric, Counter):
            self._unknown(key)
            return
        (metric.labels(**labels) if labels else metric).inc(amount)

    def observe(self, key: str, value: float, **labels: str) -> None:
        metric = self._metric(key)
        if not isinstance(metric, Histogram):
            self._unknown(key)
            return
        (metric.labels(**labels) if labels else metric).observe(value)

    def stage(self, stage: str, seconds: Iterable[float]) -> None:
        """One latency observation per face (negative values, from clocks of two hosts, count as 0)."""
        child = self._metric("stage_latency").labels(stage=stage)
        for value in seconds:
            child.observe(max(0.0, value))

    def touch(self, key: str, **labels: str) -> None:
        """Export a labelled counter at 0 before its first increment."""
        metric = self._metric(key)
        if metric is not None:
            metric.labels(**labels)

    def _unknown(self, key: str) -> None:
        if key not in self._unknown_keys:
            self._unknown_keys.add(key)
            log.warning("event=metric_unknown service=%s metric=%s", self.service, key)

    # --- what the shared loop reports --------------------------------------------------------

    def committed(self, stream: str, *, done: int, dead: int, published: dict[str, int]) -> None:
        """After a batch's transaction: entries acknowledged, dead letters, outputs by stream name."""
        self.count("entries", done, stream=stream)
        self.count("dead_letters", dead, stream=stream)
        for name, amount in published.items():
            if name in COUNTERS:
                self.count(name, amount)

    def watch_groups(self, reader: GroupReader, key: Hashable = None) -> None:
        """At scrape time: the lag and pending entries `reader` yields. A reader watched again under
        the same `key` replaces the earlier one."""
        self._group_readers[key if key is not None else len(self._group_readers)] = reader

    def watch_replicas(self, count: Callable[[], dict[str, int]]) -> None:
        """At scrape time: live processes per service (the dashboard, from the heartbeats)."""
        self._replicas = count

    def watch_model(self, info: Callable[[], dict | None], loop: str = "") -> None:
        """The model `loop` serves (None while none is loaded): `emotion_model_info`, and /readyz's
        `model` check, ok while every watched loop has one."""
        self._model_info[loop] = info
        self.health.add_check("model", lambda: all(read() is not None for read in list(self._model_info.values())))

    def watch_shards(self, served: Callable[[], int]) -> None:
        """At scrape time: how many shards this process serves (`emotion_shards_served`)."""
        self._shards = served

    def forget(self, loop: str) -> None:
        """A loop that ended on purpose (a shard handed back): its probes' state and its model go."""
        self.health.forget(loop)
        self._model_info.pop(loop, None)


def pipeline_metrics(client, keys) -> ServiceMetrics:
    """The dashboard's /metrics: the whole pipeline seen from Redis at scrape time (every declared
    group's lag and pending entries, live replicas per service), with the dashboard process's own."""
    from shared.heartbeats import read_heartbeats
    from shared.streams import StreamTable

    metrics = ServiceMetrics("dashboard")
    metrics.watch_groups(groups_from_state(client, [(spec.key, group.name) for spec in StreamTable(keys)
                                                    for group in spec.groups if not group.optional]))

    def replicas() -> dict[str, int]:
        counts: dict[str, int] = {}
        for beat in read_heartbeats(client, keys):
            service = str(beat.get("service", "unknown"))
            counts[service] = counts.get(service, 0) + 1
        return counts

    metrics.watch_replicas(replicas)
    return metrics


def render(metrics: ServiceMetrics, accept: str) -> tuple[bytes, str]:
    """The exposition of `metrics` in the format the scraper asked for (Accept), and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(metrics.registry), content_type


def groups_from_state(client, pairs: Iterable[tuple[str, str]]) -> GroupReader:
    """A GroupReader for (stream, group) pairs, through the one reading of XINFO GROUPS (shared/stream_state.py)."""
    from shared.stream_state import group_state

    pairs = list(pairs)

    def read():
        for stream, group in pairs:
            state = group_state(client, stream, group)
            yield stream, group, state.lag, state.pending

    return read


class _ScrapeTimeCollector:
    """Values read when Prometheus scrapes: consumer-group lag and pending entries, the model served.
    Redis away at that moment: those series are left out of this scrape (readiness says why)."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        from shared.redis_conn import REDIS_DOWN_ERRORS

        lag = GaugeMetricFamily("emotion_consumer_group_lag", GAUGES["emotion_consumer_group_lag"],
                                labels=("stream", "group"))
        pending = GaugeMetricFamily("emotion_consumer_group_pending", GAUGES["emotion_consumer_group_pending"],
                                    labels=("stream", "group"))
        seen = set()
        for reader in list(self.metrics._group_readers.values()):
            try:
                for stream, group, lag_value, pending_value in reader():
                    if (stream, group) in seen:
                        continue
                    seen.add((stream, group))
                    if lag_value is not None:
                        lag.add_metric((stream, group), lag_value)
                    pending.add_metric((stream, group), pending_value)
            except REDIS_DOWN_ERRORS as exc:
                log.debug("event=metrics_groups_unavailable error=%r", exc)
        if seen:
            yield lag
            yield pending
        if self.metrics._replicas is not None:
            try:
                counts = self.metrics._replicas()
            except REDIS_DOWN_ERRORS:
                counts = None
            if counts is not None:
                replicas = GaugeMetricFamily("emotion_replicas", GAUGES["emotion_replicas"], labels=("service",))
                for service in dict.fromkeys(("capture", "detector", "classifier", "recorder", *sorted(counts))):
                    replicas.add_metric((service,), counts.get(service, 0))  # 0 is a fact worth a series too
                yield replicas
        if self.metrics._shards is not None:
            served = GaugeMetricFamily("emotion_shards_served", GAUGES["emotion_shards_served"])
            served.add_metric((), self.metrics._shards())
            yield served
        # One series per distinct model: the shards' loops normally serve the same one, and during
        # a swap (each loop swaps between its own batches) both show for a moment.
        models = {}
        for read in list(self.metrics._model_info.values()):
            info = read()
            if info:
                labels = {k: str(v) for k, v in info.items()}
                models[tuple(sorted(labels.items()))] = labels
        if models:
            family = InfoMetricFamily(*MODEL_INFO)
            for labels in models.values():
                family.add_metric([], labels)
            yield family


# --- the HTTP server -----------------------------------------------------------------------------

class MetricsServer:
    """/metrics, /healthz and /readyz of one process on its own port, served by a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self.httpd = server_class((host, port), _handler_for(metrics))  # OSError when the port is taken
        self.host, self.port = host, self.httpd.server_address[1]
        metrics.port = self.port
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"


def _handler_for(metrics: ServiceMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "emotion-metrics"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, *render(metrics, self.headers.get("Accept", "")))
            elif path in ("/healthz", "/readyz"):
                ok, body = metrics.health.live() if path == "/healthz" else metrics.health.ready()
                payload = json.dumps({"ok": ok, "service": metrics.service, **body}).encode()
                self._send(200 if ok else 503, payload, "application/json")
            else:
                self._send(404, b"not found: /metrics, /healthz or /readyz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes are not worth a log line each
            return

    return Handler


def serve_metrics(settings, service: str) -> "MetricsContext":
    """The process's metrics, served as `settings.metrics` says (see MetricsContext)."""
    return MetricsContext(settings.metrics, service)


class MetricsContext:
    """`with serve_metrics(settings, "detector") as metrics:` around a service's run.

    Port: `metrics.port`, else the service's default (DEFAULT_PORTS); 0 serves nothing. An explicitly
    set port that is taken stops the service (StartupError); a taken *default* port (a second
    replica on one host) falls back to a free port, logged, and named in the heartbeat.
    On exit: /readyz turns 503, and /metrics stays up `metrics.linger_s` so a last scrape sees the
    final counts (counters incremented after the last scrape would otherwise never be seen).
    """

    def __init__(self, settings, service: str) -> None:
        self.settings, self.service = settings, service
        self.metrics = ServiceMetrics(service, liveness_s=settings.liveness_s)
        self.server: MetricsServer | None = None

    def __enter__(self) -> ServiceMetrics:
        from shared.errors import StartupError

        port = self.settings.port if self.settings.port is not None else DEFAULT_PORTS.get(self.service, 0)
        if port == 0:
            return self.metrics
        try:
            self.server = MetricsServer(self.metrics, self.settings.host, port)
        except OSError as exc:
            if self.settings.port is not None:
                raise StartupError(f"cannot listen on {self.settings.host}:{port} for metrics "
                                   f"(EMOTION_METRICS__PORT): {exc.strerror or exc}") from None
            try:
                self.server = MetricsServer(self.metrics, self.settings.host, 0)
            except OSError as again:
                raise StartupError(f"cannot listen on {self.settings.host} for metrics: "
                                   f"{again.strerror or again}") from None
            log.warning("event=metrics_port_taken service=%s wanted=%d using=%d", self.service, port, self.server.port)
        self.server.start()
        log.info("event=metrics_serving service=%s url=%s", self.service, self.server.url)
        return self.metrics

    def __exit__(self, *exc) -> None:
        self.metrics.health.stopping = True
        if self.server is None:
            return
        if self.settings.linger_s and exc[0] is None:
            time.sleep(self.settings.linger_s)
        self.server.close()


def exported_names() -> set[str]:
    """Every sample name this platform exports (what dashboards and alerts may refer to)."""
    names = {spec.name for spec in COUNTERS.values()} | set(GAUGES) | {MODEL_INFO[0] + "_info"}
    for spec in HISTOGRAMS.values():
        names |= {spec.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names
