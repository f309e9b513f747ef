"""Shared fixtures: a real Redis on a flushed database, settings pointing at it, paths to ../shared data.

TEST_REDIS_URL picks the database (default db 15), so parallel runs can use different databases.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from shared.settings import Settings
from shared.streams import Keys

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FER_DIR = SHARED_DATA / "fer2013"
FERPLUS_DIR = SHARED_DATA / "ferplus"


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need a real Redis at {redis_url} (.ci/run starts one): {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(redis_url, tmp_path) -> Settings:
    return Settings(redis_url=redis_url, prefix="t", registry_dir=tmp_path / "registry",
                    database_url=f"sqlite:///{tmp_path / 'events.sqlite'}")


@pytest.fixture
def keys(settings) -> Keys:
    return Keys(settings.prefix)


@pytest.fixture
def fer_publictest() -> Path:
    path = FER_DIR / "fer2013_publictest.npz"
    if not path.exists():
        pytest.skip(f"FER-2013 archive not present at {path}")
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model the services serve: the shipped default (TEST_MODEL_DIR overrides)."""
    path = Path(os.environ.get("TEST_MODEL_DIR", REPO_ROOT / "models" / "default"))
    if not (path / "model.tflite").exists():
        pytest.fail(f"no exported model at {path}: the repository ships models/default")
    return path


@pytest.fixture
def pipeline_settings(settings, model_dir) -> Settings:
    """Settings for driving real services in-process: the test model, quick reclaim, small batches."""
    return settings.model_copy(update={
        "default_model_dir": model_dir,
        "worker": settings.worker.model_copy(update={"block_ms": 50, "claim_idle_ms": 500, "claim_interval_s": 0.2}),
    })
