"""Helpers for the API tests: a populated store on each backend, and the dashboard as a real
`emotion dashboard` subprocess (waitress, as in production) serving it."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from shared.store import close_session, make_engine, migrate, open_session, record_events
from tests.proc_utils import Proc, free_port, service_env
from tests.test_store_support import PG_URL, T0_MS, create_pg_database, make_event

T0 = datetime.fromtimestamp(T0_MS / 1000, tz=timezone.utc)
N_EVENTS = 240


def stored_events() -> list:
    """Two cameras, three sessions, about two hours; every tenth frame has a second face at the same
    instant, so pages must break ties on the row id."""
    out = []
    for i in range(N_EVENTS):
        captured = T0_MS + 7_000 + i * 29_000
        camera, session = f"cam{i % 2}", f"s{i % 3}"
        out.append(make_event(i, camera_id=camera, session_id=session, captured_ms=captured))
        if i % 10 == 0:
            twin = make_event(100_000 + i, camera_id=camera, session_id=session, captured_ms=captured)
            out.append(twin.model_copy(update={"face_index": 1, "frame_id": i,
                                               "event_id": f"{camera}:{session}:{i}:1"}))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def api_store_url(request, tmp_path):
    """A migrated store on each backend holding `stored_events()` and one opened-and-closed session."""
    if request.param == "sqlite":
        url, drop = f"sqlite:///{tmp_path / 'api.sqlite'}", None
    else:
        name, drop = create_pg_database(prefix="api")
        url = PG_URL.format(name=name)
    try:
        migrate(url)
        engine = make_engine(url)
        open_session(engine, "s0", camera_id="cam0", source="demo", started=T0)
        record_events(engine, stored_events())
        close_session(engine, "s0", ended=T0 + timedelta(hours=2))
        engine.dispose()
        yield url
    finally:
        if drop:
            drop()


@pytest.fixture
def api_settings(settings, api_store_url, served_model_dir):
    return settings.model_copy(update={"database_url": api_store_url, "default_model_dir": served_model_dir})


def start_dashboard(settings, work: Path, **dashboard: str) -> tuple[Proc, str]:
    """`emotion dashboard` on a free port with `settings`' Redis, prefix, store and model, plus
    EMOTION_DASHBOARD__<NAME> for each keyword; returns the process and its base URL once it answers."""
    port = free_port()
    extra = {f"EMOTION_DASHBOARD__{name.upper()}": str(value) for name, value in dashboard.items()}
    env = service_env(settings.redis_url, settings.prefix, settings.default_model_dir, settings.registry_dir,
                      EMOTION_DATABASE_URL=settings.database_url, **extra)
    proc = Proc([sys.executable, "-m", "emotion", "dashboard", "--port", str(port)], env, work / "dashboard.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(base + "/healthz", timeout=1).ok:
                return proc, base
        except requests.RequestException:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"the dashboard did not start:\n{proc.output()[-3000:]}")
        time.sleep(0.3)
