"""What every benchmark shares: run provenance, an isolated key prefix, real face crops, small statistics."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import redis

from shared.machine import describe_machine
from shared.model_runtime import Preprocess, crop_face, read_metadata
from shared.registry import ModelRegistry
from shared.schemas import BBox, FaceMessage, encode
from shared.settings import REPO_ROOT, Settings
from shared.streams import Keys

FER_DIR = REPO_ROOT.parent / "shared" / "data" / "fer2013"
FER_PUBLICTEST = FER_DIR / "fer2013_publictest.npz"
FER_TRAINING = FER_DIR / "fer2013_training.npz"


# --- provenance -------------------------------------------------------------------------------------

def git_commit() -> str | None:
    """Short commit of the checkout, with '+dirty' when tracked files differ (read-only git calls)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_info(argv: Sequence[str] | None = None, program: str = "emotion") -> dict:
    """Date, machine, commit and the exact command: what a results table needs to be reproducible."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "load_average": load_average(),
        "commit": git_commit(),
        "python": platform.python_version(),
        "command": program + " " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    }


# --- statistics -------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    if not len(values):
        return {f"p{p}": None for p in points}
    array = np.asarray(values, dtype=np.float64)
    return {f"p{p}": round(float(np.percentile(array, p)), 1) for p in points}


# --- an isolated corner of Redis ------------------------------------------------------------------

def new_prefix(base: str = "bench") -> str:
    return f"{base}-{uuid.uuid4().hex[:8]}"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


@contextmanager
def isolated(settings: Settings, client: redis.Redis) -> Iterator[Settings]:
    """Settings with a fresh key prefix (deleted afterwards), serving the same model as `settings`.

    A benchmark never touches the deployment's streams, so it can run beside a live pipeline; the
    current model version of the deployment is copied so the same model is measured.
    """
    prefix = new_prefix(f"{settings.prefix}-bench")
    current = client.get(Keys(settings.prefix).model_current)
    if current:
        client.set(Keys(prefix).model_current, current)
    try:
        yield settings.model_copy(update={"prefix": prefix})
    finally:
        delete_prefix(client, prefix)


def serving_model_dir(settings: Settings, client: redis.Redis | None) -> Path:
    """The model directory the classifier would serve (registry current version, else the default)."""
    return ModelRegistry(settings.registry_dir, client, Keys(settings.prefix), settings.default_model_dir).current_dir()


def serving_preprocess(settings: Settings, client: redis.Redis | None) -> Preprocess:
    return read_metadata(serving_model_dir(settings, client)).preprocess


# --- real face crops --------------------------------------------------------------------------------

def load_fer(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) of a FER-2013 archive, or None when the team data is not beside the repo."""
    path = Path(path)
    if not path.is_file():
        return None
    data = np.load(path, allow_pickle=False)
    return data["images"], data["labels"]


def demo_crops(count: int, preprocess: Preprocess, frames: int = 60) -> np.ndarray:
    """Face crops cut from the demo scene (the astronaut portrait) by the default detector, framed as the
    model expects, cycled to `count`."""
    import cv2

    from services.capture.demo import AstronautDemo
    from shared.faces import make_detector
    from shared.settings import DetectorSettings

    demo = AstronautDemo(fps=15.0)
    detector = make_detector(DetectorSettings())
    crops: list[np.ndarray] = []
    for _ in range(frames):
        gray = cv2.cvtColor(demo.frame(), cv2.COLOR_BGR2GRAY)
        crops.extend(crop_face(gray, face.box, preprocess, landmarks=face.landmarks, backend=detector.name)
                     for face in detector.detect(gray))
        for _ in range(3):  # skip ahead so consecutive crops differ
            demo.frame_index += 1
    if not crops:
        raise RuntimeError(f"the {detector.name} detector found no face in the demo scene")
    return np.stack([crops[i % len(crops)] for i in range(count)])


def face_crops(count: int, preprocess: Preprocess, fer_path: Path | None = None) -> tuple[np.ndarray, str]:
    """`count` real uint8 crops at the model's input size: FER-2013 PublicTest faces, else demo crops."""
    import cv2

    fer_path = fer_path or FER_PUBLICTEST
    fer = load_fer(fer_path)
    if fer is not None:
        images = fer[0]
        picked = images[np.arange(count) % len(images)]
        size = preprocess.input_size
        if picked.shape[1:] != (size, size) or preprocess.equalize_hist:
            resized = [cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR) for img in picked]
            picked = np.stack([cv2.equalizeHist(c) if preprocess.equalize_hist else c for c in resized])
        return np.ascontiguousarray(picked, dtype=np.uint8), f"FER-2013 PublicTest ({Path(fer_path).name})"
    return demo_crops(count, preprocess), "demo scene crops (FER-2013 archive not found)"


def face_entries(crops: np.ndarray, preprocess: Preprocess, *, camera_id: str = "bench0",
                 session_id: str = "bench", faces_per_track: int = 30) -> list[dict[str, bytes]]:
    """Encoded FaceMessages, one per crop, as the detector would publish them (tracks of 30 faces)."""
    now = int(time.time() * 1000)
    entries = []
    for index, crop in enumerate(crops):
        message = FaceMessage(camera_id=camera_id, session_id=session_id, frame_id=index, face_index=0,
                              faces_in_frame=1, track_id=1 + index // faces_per_track,
                              bbox=BBox(x=100, y=100, w=160, h=160), side=int(crop.shape[0]),
                              preprocess=preprocess.id, captured_ms=now, detected_ms=now, crop=crop.tobytes())
        entries.append(encode(message))
    return entries


def frame_entries(count: int, *, camera_id: str, session_id: str = "bench", fps: float = 15.0,
                  seed: int = 0) -> list[dict[str, bytes]]:
    """Encoded FrameMessages of the demo scene (640x480 JPEG, two faces coming and going), as a camera
    would publish them."""
    from services.capture.capture import encode_frame
    from services.capture.demo import AstronautDemo
    from shared.schemas import FrameMessage
    from shared.settings import CaptureSettings

    demo, capture = AstronautDemo(fps=fps, seed=seed), CaptureSettings()
    entries = []
    for index in range(count):
        jpeg, width, height = encode_frame(demo.frame(), capture)
        entries.append(encode(FrameMessage(camera_id=camera_id, session_id=session_id, frame_id=index,
                                           captured_ms=int(time.time() * 1000), width=width, height=height,
                                           jpeg=jpeg)))
    return entries


def xadd_all(client: redis.Redis, stream: str, entries: list[dict[str, bytes]], chunk: int = 500) -> None:
    for start in range(0, len(entries), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in entries[start:start + chunk]:
            pipe.xadd(stream, fields)
        pipe.execute()


def wait_until(done, timeout_s: float, what: str, interval_s: float = 0.005) -> None:
    """Poll `done()` until it is true; RuntimeError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout_s:.0f} s")
        time.sleep(interval_s)


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 20.0) -> None:
    """SIGTERM every process group (a warm stop), SIGKILL those still there after `timeout_s`."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- soak runs --------------------------------------------------------------------------------------

def add_soak_arguments(parser, redis_env: str | None = None) -> None:
    """--redis-url, --workdir and --json, as every soak script takes them."""
    parser.add_argument("--redis-url", default=os.environ.get(redis_env) if redis_env else None,
                        help="an existing Redis (default: a private redis-server started for the run)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs, registry and SQLite file (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")


def soak_setup(args, name: str) -> tuple[Path, Path, str, object | None] | None:
    """(model, work folder, Redis URL, the private redis-server or None) for a soak, or None without a model.

    The private server (no AOF: a soak measures the pipeline, not the disk) is stopped at exit too.
    """
    import atexit
    import tempfile

    from tests.proc_utils import RedisServer, find_model_dir

    model = find_model_dir()
    if model is None:
        print(f"{name}: no exported model (models/default or /tmp/model-tmp)", file=sys.stderr)
        return None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"emotion-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    url = args.redis_url
    if not url:
        server = RedisServer(workdir / "redis", appendonly=False).start()
        atexit.register(server.stop)  # even when the run fails
        url = server.url
    return model, workdir, url, server


# --- output -----------------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(value.rjust(widths[i]) for i, value in enumerate(row)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(result: dict, table: str, as_json: bool) -> None:
    """People get the table; with --json the last stdout line is the one JSON object."""
    print(table, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(result), flush=True)
