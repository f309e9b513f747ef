"""Sharded scaling: frames of N shards through R detector and R classifier processes, for each R.

`emotion bench scaling --shards N [--replicas 1,2,4]`. Per run, on an isolated prefix laid out in N
shards: R `emotion detector` and R `emotion classifier` processes start (the detectors split the
shards by lease, the classifiers serve every shard) with the frames groups created at the end of
their streams, so nothing is read before every replica is ready (its heartbeat written, every
shard leased). Then the same synthetic frames (the demo scene, 640x480 JPEG, one camera per shard)
are appended to every shard's frames stream and the clock runs until every frame is processed and
every face classified. Start-up and model loading are not in the measurement; both stages are.

Throughput should grow with R until the replicas outnumber the cores (or R exceeds N: the
detectors beyond one per shard stand by). A frame that is not processed, or a face without its
event, fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import format_table, frame_entries, isolated, median, stop_processes, wait_until, xadd_all
from shared.heartbeats import read_heartbeats
from shared.settings import Settings
from shared.shards import backlog, service_stats, stats_of
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, FRAMES_RETENTION, Keys

READY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 300.0
MAX_FRAMES_PER_SHARD = FRAMES_RETENTION.cap - 50  # more would be trimmed from the live stream before it is read


def _ready(client: redis.Redis, keys: Keys, replicas: int) -> bool:
    beats = read_heartbeats(client, keys)
    detectors = [b for b in beats if b.get("service") == "detector" and not b.get("starting")]
    classifiers = [b for b in beats if b.get("service") == "classifier"]
    leased = sum(len(b.get("shards") or []) for b in detectors)
    return len(detectors) == replicas and len(classifiers) == replicas and leased == keys.shards


def _reset(client: redis.Redis, keys: Keys) -> None:
    for pattern in [f"{shard.prefix}:{shard.tag}:*" for shard in keys.all_shards()] + [keys.heartbeat_pattern()]:
        for key in list(client.scan_iter(match=pattern, count=1000)):
            client.delete(key)
    client.delete(keys.layout)
    for shard in keys.all_shards():  # at the end of the (empty) streams: what is appended later is the work
        client.xgroup_create(shard.frames, DETECTOR_GROUP, id="$", mkstream=True)
        client.xgroup_create(shard.faces, CLASSIFIER_GROUP, id="$", mkstream=True)


def _run_once(settings: Settings, client: redis.Redis, keys: Keys, frames: dict[int, list[dict[str, bytes]]],
              replicas: int, log_dir: Path) -> dict:
    _reset(client, keys)
    env = dict(os.environ, EMOTION_PREFIX=settings.prefix, EMOTION_REDIS_URL=settings.redis_url,
               EMOTION_SHARDS=str(keys.shards), EMOTION_LOG_LEVEL="WARNING")
    env.pop("REDIS_URL", None)
    procs = []
    try:
        for role in ("detector", "classifier"):
            for index in range(replicas):
                with open(log_dir / f"{role}-{replicas}-{index}.log", "ab") as log:
                    procs.append(subprocess.Popen([sys.executable, "-m", "emotion", role], env=env, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(client, keys, replicas):
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a replica exited at start; see {log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not ready after {READY_TIMEOUT_S:.0f} s; see {log_dir}")
            time.sleep(0.1)
        total = sum(len(entries) for entries in frames.values())
        started = time.perf_counter()
        for shard, entries in frames.items():
            xadd_all(client, keys.of_shard(shard).frames, entries, chunk=50)
        def drained() -> bool:
            detector = service_stats(client, keys, "detector")
            return (detector.get("entries_in", 0) + detector.get("dead", 0) >= total
                    and backlog(client, keys, "faces", CLASSIFIER_GROUP) == 0
                    and backlog(client, keys, "frames", DETECTOR_GROUP) == 0)

        wait_until(drained, DRAIN_TIMEOUT_S, f"frames not drained (see {log_dir})", interval_s=0.01)
        elapsed = time.perf_counter() - started
    finally:
        stop_processes(procs)
    stats = stats_of(client, keys, ("detector", "classifier"))
    faces, events = stats["detector"].get("entries_out", 0), stats["classifier"].get("entries_out", 0)
    processed = stats["detector"].get("entries_in", 0)
    if processed != total or events != faces or stats["detector"].get("dead") or stats["classifier"].get("dead"):
        raise RuntimeError(f"sharded scaling run with {replicas} replicas: {total} frames in, {processed} processed, "
                           f"{faces} faces, {events} events")
    return {"seconds": elapsed, "frames": total, "faces": faces}


def run_shard_scaling_bench(settings: Settings, client: redis.Redis, *, shards: int, replicas: list[int],
                            frames_per_shard: int = 120, repeats: int = 1) -> dict:
    frames_per_shard = min(frames_per_shard, MAX_FRAMES_PER_SHARD)
    rows = []
    with isolated(settings, client) as bench_settings, tempfile.TemporaryDirectory(prefix="emotion-shards-") as tmp:
        keys = Keys(bench_settings.prefix, shards)
        frames = {shard: frame_entries(frames_per_shard, camera_id=f"shard{shard}-cam", seed=shard)
                  for shard in range(shards)}
        runs: dict[int, list[dict]] = {n: [] for n in replicas}
        for _ in range(repeats):  # interleaved, so a burst of machine load hits every replica count alike
            for n in replicas:
                runs[n].append(_run_once(bench_settings, client, keys, frames, n, Path(tmp)))
        for n in replicas:
            seconds = median([r["seconds"] for r in runs[n]])
            first = runs[n][0]
            rows.append({"replicas": n, "shards": shards, "frames": first["frames"], "faces": first["faces"],
                         "repeats": repeats, "drain_s": round(seconds, 3),
                         "frames_per_s": round(first["frames"] / seconds, 1),
                         "faces_per_s": round(first["faces"] / seconds, 1),
                         "runs_drain_s": [round(r["seconds"], 3) for r in runs[n]], "lost": 0})
    base = rows[0]["frames_per_s"]
    for row in rows:
        row["speedup"] = round(row["frames_per_s"] / base, 3)
    return {"benchmark": "scaling", "mode": "shards", "shards": shards, "frames_per_shard": frames_per_shard,
            "cpu_count": os.cpu_count(), "speedup": rows[-1]["speedup"], "lost": 0, "table": rows}


def table(result: dict) -> str:
    rows = [(r["replicas"], r["frames"], r["faces"], r["drain_s"], r["frames_per_s"], r["faces_per_s"],
             f"{r['speedup']:.2f}") for r in result["table"]]
    head = (f"sharded scaling: {result['shards']} shards x {result['frames_per_shard']} demo frames, R detector + "
            f"R classifier processes, {result['cpu_count']} CPUs; medians of {result['table'][0]['repeats']} run(s)")
    return head + "\n" + format_table(("replicas", "frames", "faces", "drain s", "frames/s", "faces/s", "speedup"), rows)
