"""Shared fixtures (a real Redis on a flushed database, settings pointing at it, paths to ../shared data,
`emotion up` runs, the Compose project directory) and the message builders more than one test module uses.

TEST_REDIS_URL picks the database (default db 15), so parallel runs can use different databases.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from shared.schemas import BBox, FaceMessage, FrameMessage, encode
from shared.settings import Settings
from shared.streams import Keys

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FER_DIR = SHARED_DATA / "fer2013"
FERPLUS_DIR = SHARED_DATA / "ferplus"


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def flushed_redis(url: str):
    """A client of a real Redis database, flushed before and after the test (yield from it in a fixture)."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"tests need a real Redis at {url} (.ci/run starts one): {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url):
    yield from flushed_redis(redis_url)


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
def served_model(tmp_path) -> Path:
    """A private copy of the served model, for tests that replace, corrupt or register it."""
    from tests.proc_utils import copy_model

    return copy_model(tmp_path / "model")


@pytest.fixture
def pipeline_settings(settings, model_dir) -> Settings:
    """Settings for driving real services in-process: the test model, quick reclaim, small batches."""
    return settings.model_copy(update={
        "default_model_dir": model_dir,
        "worker": settings.worker.model_copy(update={"block_ms": 50, "claim_idle_ms": 500, "claim_interval_s": 0.2}),
    })


# --- `emotion up` runs (tests/up_utils.py) and the Compose project --------------------------------

@pytest.fixture
def up_env(redis_url, redis_client, tmp_path, model_dir):
    from tests.proc_utils import clean_env

    prefix = f"up{uuid.uuid4().hex[:6]}"
    return clean_env(EMOTION_REDIS_URL=redis_url, EMOTION_PREFIX=prefix, EMOTION_DEFAULT_MODEL_DIR=str(model_dir),
                     EMOTION_REGISTRY_DIR=str(tmp_path / "registry"), EMOTION_DATA_DIR=str(tmp_path / "data"),
                     EMOTION_DATABASE_URL=f"sqlite:///{tmp_path / 'events.sqlite'}")


@pytest.fixture
def start_up(up_env, tmp_path):
    from tests.up_utils import UpRun

    runs: list[UpRun] = []

    def start(*args: str, env: dict[str, str] | None = None) -> UpRun:
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        run = UpRun(list(args), env or up_env, workdir)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        run.kill_leftovers()


@pytest.fixture(scope="module")
def compose_project_dir(tmp_path_factory) -> Path:
    """An empty project directory: a developer's own .env (env_file of the services) stays out."""
    return tmp_path_factory.mktemp("compose-project")


# --- messages -----------------------------------------------------------------------------------

def make_faces(n: int, camera: str = "cam0", session: str = "s1", side: int = 48, seed: int = 0) -> list[FaceMessage]:
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    return [FaceMessage(camera_id=camera, session_id=session, frame_id=i, face_index=0, faces_in_frame=1,
                        track_id=i % 5, bbox=BBox(x=10, y=10, w=60, h=60), side=side, preprocess="g48-raw-m0.00",
                        captured_ms=now + i, detected_ms=now + i + 1,
                        crop=rng.integers(0, 256, side * side, dtype=np.uint8).tobytes())
            for i in range(n)]


def fill_faces(client: redis.Redis, stream: str, faces: list[FaceMessage]) -> None:
    pipe = client.pipeline(transaction=False)
    for face in faces:
        pipe.xadd(stream, encode(face))
    pipe.execute()


def demo_frames(n: int, camera: str = "cam0", session: str = "s1") -> list[FrameMessage]:
    from services.capture.capture import encode_frame
    from services.capture.demo import AstronautDemo
    from shared.settings import CaptureSettings

    demo, capture = AstronautDemo(fps=15), CaptureSettings(jpeg_quality=80)
    frames = []
    for i in range(n):
        jpeg, width, height = encode_frame(demo.frame(), capture)
        frames.append(FrameMessage(camera_id=camera, session_id=session, frame_id=i,
                                   captured_ms=int(time.time() * 1000), width=width, height=height, jpeg=jpeg))
    return frames
