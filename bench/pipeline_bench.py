"""End to end: `emotion up` as a subprocess per camera count, latency from the events it produced.

Each run gets its own key prefix (so a live deployment on the same Redis is untouched), its own
SQLite file and log folder, and `EMOTION_CAPTURE__FPS` for the frame rate. Latency is
classified_ms - captured_ms of every event of the run's session, read back from the events stream;
p50/p95/p99 are given over the whole run and over the steady state (frames captured after the
first `warmup_s` seconds, when every service has loaded). Shed frames are counted the same two
ways (the capture stats hash is sampled when the warm-up ends).

The fps sweep repeats the run at increasing frame rates and reports the highest one with no frame
shed and no face lost in the steady state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from emotion.up import session_events

from bench.common import format_table, isolated, percentiles
from shared.schemas import EmotionEvent
from shared.settings import Settings
from shared.shards import service_stats
from shared.streams import Keys

STARTUP_GRACE_S = 90.0  # `emotion up` start + drain + stop may take this long beyond the capture duration


def _camera_start_ms(client: redis.Redis, keys: Keys) -> int | None:
    starts = []
    for raw in client.hgetall(keys.cameras).values():
        try:
            starts.append(int(json.loads(raw)["started_ms"]))
        except (ValueError, KeyError, TypeError):
            continue
    return min(starts) if starts else None


def _stage_summary(events: list[EmotionEvent]) -> dict:
    total = [e.times.classified_ms - e.times.captured_ms for e in events]
    detect = [e.times.detected_ms - e.times.captured_ms for e in events]
    classify = [e.times.classified_ms - e.times.detected_ms for e in events]
    return {"n": len(events), "latency_ms": percentiles(total),
            "capture_to_detected_ms": percentiles(detect, (50, 95)),
            "detected_to_classified_ms": percentiles(classify, (50, 95))}


def run_up(settings: Settings, client: redis.Redis, *, cameras: int, fps: float, duration_s: float, warmup_s: float,
           classifiers: int = 1, detectors: int = 1, source: str = "demo") -> dict:
    """One `emotion up --json --no-dashboard` run in an isolated prefix; its summary plus our measurements.
    With `detectors` > 1 the frames are split into as many shards (one per replica, by camera)."""
    if detectors > 1:
        settings = settings.model_copy(update={"shards": detectors})
    with isolated(settings, client) as run_settings, tempfile.TemporaryDirectory(prefix="emotion-bench-") as tmp:
        keys = Keys.of(run_settings)  # EMOTION_SHARDS from the environment, as `emotion up` will see it
        env = dict(os.environ, EMOTION_PREFIX=run_settings.prefix, EMOTION_REDIS_URL=settings.redis_url,
                   EMOTION_CAPTURE__FPS=str(fps), EMOTION_DATABASE_URL=f"sqlite:///{tmp}/events.sqlite",
                   EMOTION_DATA_DIR=str(Path(tmp) / "data"), EMOTION_SHARDS=str(run_settings.shards),
                   PYTHONUNBUFFERED="1")
        env.pop("REDIS_URL", None)
        env.pop("DATABASE_URL", None)
        command = [sys.executable, "-m", "emotion", "up", "--duration", str(duration_s), "--json", "--no-dashboard",
                   "--classifiers", str(classifiers), "--detectors", str(detectors)]
        for _ in range(cameras):
            command += ["--source", source]
        stderr_path = Path(tmp) / "up.stderr"
        started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                    start_new_session=True)
            shed_at_warmup = None
            try:
                deadline = started + duration_s + STARTUP_GRACE_S
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"`emotion up` did not finish within {duration_s + STARTUP_GRACE_S:.0f} s")
                    if shed_at_warmup is None:
                        camera_start = _camera_start_ms(client, keys)
                        if camera_start and time.time() * 1000 >= camera_start + warmup_s * 1000:
                            shed_at_warmup = service_stats(client, keys, "capture").get("shed", 0)
                    time.sleep(0.1)
                stdout = proc.stdout.read().decode() if proc.stdout else ""
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    proc.wait(20)
        wall_s = time.monotonic() - started
        lines = [line for line in stdout.splitlines() if line.strip()]
        try:
            summary = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            tail = stderr_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"`emotion up` exited {proc.returncode} without a JSON summary:\n{tail}") from None
        events = session_events(client, keys, summary["session_id"])
        camera_start = _camera_start_ms(client, keys) or (min((e.times.captured_ms for e in events), default=0))
        steady_from = camera_start + int(warmup_s * 1000)
        steady = [e for e in events if e.times.captured_ms >= steady_from]
        whole, steady_stats = _stage_summary(events), _stage_summary(steady)
        shed_total = int(summary.get("shed_frames") or 0)
        shed_steady = shed_total - (shed_at_warmup if shed_at_warmup is not None else 0)
        return {
            "cameras": cameras, "fps": fps, "duration_s": duration_s, "warmup_s": warmup_s, "classifiers": classifiers,
            "detectors": detectors, "shards": run_settings.shards,
            "source": source, "exit_code": proc.returncode, "wall_s": round(wall_s, 1),
            "frames": summary.get("frames"), "faces": summary.get("faces"), "events": summary.get("events"),
            "lost": summary.get("lost"), "dead_letters": summary.get("dead_letters"),
            "shed_frames": shed_total, "shed_frames_steady": shed_steady if shed_at_warmup is not None else None,
            "frames_without_faces": summary.get("frames_without_faces"), "drained": summary.get("drained"),
            "up_latency_ms_p50": summary.get("latency_ms_p50"), "up_latency_ms_p95": summary.get("latency_ms_p95"),
            "latency_ms": whole["latency_ms"], "steady": steady_stats,
            "stages": {"capture_to_detected_ms": whole["capture_to_detected_ms"],
                       "detected_to_classified_ms": whole["detected_to_classified_ms"]},
            "session_id": summary["session_id"],
        }


def run_pipeline_bench(settings: Settings, client: redis.Redis, *, cameras: list[int], fps: float = 15.0,
                       duration_s: float = 15.0, warmup_s: float = 3.0, classifiers: int = 1, detectors: int = 1,
                       sweep_fps: list[float] | None = None, sweep_cameras: int = 2, source: str = "demo") -> dict:
    runs = [run_up(settings, client, cameras=n, fps=fps, duration_s=duration_s, warmup_s=warmup_s,
                   classifiers=classifiers, detectors=detectors, source=source) for n in cameras]
    sweep, highest = [], None
    for rate in sorted(sweep_fps or []):
        run = next((r for r in runs if r["cameras"] == sweep_cameras and r["fps"] == rate), None) or \
            run_up(settings, client, cameras=sweep_cameras, fps=rate, duration_s=duration_s, warmup_s=warmup_s,
                   classifiers=classifiers, detectors=detectors, source=source)
        sustained = run["lost"] == 0 and (run["shed_frames_steady"] or 0) == 0
        sweep.append({"fps": rate, "cameras": sweep_cameras, "sustained": sustained,
                      "shed_frames_steady": run["shed_frames_steady"], "shed_frames": run["shed_frames"],
                      "lost": run["lost"], "steady_latency_ms": run["steady"]["latency_ms"]})
        if not sustained:
            break
        highest = rate
    headline = next((r for r in runs if r["cameras"] == 2), runs[0])
    return {
        "benchmark": "pipeline",
        "headline": {"cameras": headline["cameras"], "fps": headline["fps"]},
        "latency_ms_p50": headline["latency_ms"]["p50"],
        "latency_ms_p95": headline["latency_ms"]["p95"],
        "latency_ms_p99": headline["latency_ms"]["p99"],
        "steady_latency_ms_p95": headline["steady"]["latency_ms"]["p95"],
        "events": headline["events"],
        "faces": headline["faces"],
        "lost": sum(r["lost"] or 0 for r in runs),
        "shed_frames": headline["shed_frames"],
        "target_latency_ms_p95": 100,
        "highest_sustained_fps": highest,
        "sweep_cameras": sweep_cameras if sweep else None,
        "runs": runs,
        "sweep": sweep,
    }


def table(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        whole, steady = r["latency_ms"], r["steady"]["latency_ms"]
        rows.append((r["cameras"], r["fps"], r["frames"], r["events"], r["lost"], r["shed_frames"],
                     r["shed_frames_steady"], whole["p50"], whole["p95"], whole["p99"], steady["p50"], steady["p95"],
                     steady["p99"], r["stages"]["capture_to_detected_ms"]["p50"],
                     r["stages"]["detected_to_classified_ms"]["p50"]))
    text = format_table(("cams", "fps", "frames", "events", "lost", "shed", "shed(steady)", "p50", "p95", "p99",
                         "steady p50", "steady p95", "steady p99", "detect p50", "classify p50"), rows)
    if result["sweep"]:
        text += "\nfps sweep ({} cameras): ".format(result["sweep_cameras"]) + ", ".join(
            f"{s['fps']:g} fps {'ok' if s['sustained'] else 'shed ' + str(s['shed_frames_steady'])}"
            for s in result["sweep"])
        text += f"; highest sustained: {result['highest_sustained_fps']}"
    return "end-to-end latency (ms, capture -> event) per `emotion up` run\n" + text
