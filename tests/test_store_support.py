"""Helpers for the store and recorder tests: valid EmotionEvents, and a fresh database per test on
each backend (a temporary SQLite file, and a new PostgreSQL database at 127.0.0.1:5432 dropped after)."""

from __future__ import annotations

import os
import random
import uuid

import pytest

from shared.emotions import EMOTIONS
from shared.schemas import BBox, EmotionEvent, StageTimes

PG_ADMIN = os.environ.get("TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_event(i: int, camera_id: str = "cam0", session_id: str = "s1", captured_ms: int | None = None,
               seed: int | None = None) -> EmotionEvent:
    """Event number `i`: random but reproducible probabilities (they sum to 1), a unique event_id."""
    rng = random.Random(i if seed is None else seed)
    weights = [rng.random() ** 3 for _ in EMOTIONS]
    total = sum(weights)
    probs = [w / total for w in weights]
    probs[-1] = 1.0 - sum(probs[:-1])
    order = sorted(range(len(EMOTIONS)), key=lambda k: -probs[k])
    smoothed = list(reversed(probs))
    captured = captured_ms if captured_ms is not None else T0_MS + i * 100
    return EmotionEvent(event_id=f"{camera_id}:{session_id}:{i}:0", camera_id=camera_id, session_id=session_id,
                        frame_id=i, face_index=0, track_id=i % 3, bbox=BBox(x=10, y=20, w=64, h=64),
                        detection_confidence=round(0.5 + rng.random() / 2, 3), label=EMOTIONS[order[0]], confidence=probs[order[0]], probabilities=probs,
                        top2=(EMOTIONS[order[0]], EMOTIONS[order[1]]), smoothed=smoothed,
                        smoothed_label=EMOTIONS[max(range(len(EMOTIONS)), key=lambda k: smoothed[k])],
                        model_version="test-v1",
                        times=StageTimes(captured_ms=captured, detected_ms=captured + 12, classified_ms=captured + 30))


def create_pg_database(prefix: str = "store") -> tuple[str, callable]:
    psycopg = pytest.importorskip("psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable ({PG_ADMIN}): {exc}")

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return name, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A migrated, empty store on each backend."""
    from shared.store import migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        migrate(url)
        yield url
        return
    name, drop = create_pg_database()
    url = PG_URL.format(name=name)
    try:
        migrate(url)
        yield url
    finally:
        drop()


@pytest.fixture
def store(store_url):
    from shared.store import make_engine

    engine = make_engine(store_url)
    yield engine
    engine.dispose()
