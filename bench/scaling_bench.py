"""Classifier scaling: time for R replica processes (`emotion classifier`, one consumer group) to drain N faces.

(`emotion bench scaling --shards N`, the whole stream pipeline over several shards, is bench/shard_scaling_bench.py.)

Per run: the faces stream of an isolated prefix is pre-filled with N faces and the classifier group
is created at the end of the stream ("$"), so replicas that start see nothing; once every replica
has written its heartbeat (model loaded, loop running) the group is moved back to "0" and the clock
starts; it stops when the group has nothing unread and nothing pending. Process start-up and model
loading are therefore not in the measurement, and the classifier is the only stage working.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import (face_crops, face_entries, format_table, isolated, median, serving_model_dir, stop_processes,
                          wait_until, xadd_all)
from shared.model_runtime import read_metadata
from shared.settings import Settings
from shared.stream_state import group_state
from shared.streams import CLASSIFIER_GROUP, Keys

READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0


def _drain_once(settings: Settings, client: redis.Redis, entries: list[dict[str, bytes]], replicas: int,
                log_dir: Path) -> float:
    keys = Keys.of(settings)  # the faces go to shard 0; the replicas serve every shard
    client.delete(keys.faces, keys.events, keys.dead(keys.faces), keys.stats("classifier"))
    for pattern in (keys.heartbeat_pattern("classifier"), f"{keys.prefix}:{keys.tag}:track:*"):
        for key in client.scan_iter(match=pattern):
            client.delete(key)
    client.xgroup_create(keys.faces, CLASSIFIER_GROUP, id="$", mkstream=True)
    env = dict(os.environ, EMOTION_PREFIX=settings.prefix, EMOTION_REDIS_URL=settings.redis_url,
               EMOTION_LOG_LEVEL="WARNING")
    env.pop("REDIS_URL", None)
    procs = []
    try:
        for index in range(replicas):
            log = open(log_dir / f"classifier-{replicas}-{index}.log", "ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "emotion", "classifier"], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(list(client.scan_iter(match=keys.heartbeat_pattern("classifier")))) < replicas:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a classifier process exited at start; see {log_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"classifier replicas not ready after {READY_TIMEOUT_S:.0f} s; see {log_dir}")
            time.sleep(0.05)
        started = time.perf_counter()
        xadd_all(client, keys.faces, entries)
        wait_until(lambda: client.xlen(keys.events) >= len(entries)
                   and not group_state(client, keys.faces, CLASSIFIER_GROUP).backlog,
                   DRAIN_TIMEOUT_S, f"faces not drained (see {log_dir})")
        elapsed = time.perf_counter() - started
    finally:
        stop_processes(procs)
    events, dead = client.xlen(keys.events), client.xlen(keys.dead(keys.faces))
    if events != len(entries) or dead:
        raise RuntimeError(f"scaling run with {replicas} replicas: {len(entries)} faces in, {events} events out, "
                           f"{dead} dead letters")
    return elapsed


def run_scaling_bench(settings: Settings, client: redis.Redis, *, replicas: list[int], faces: int = 4000,
                      repeats: int = 3, fer_path: Path | None = None) -> dict:
    rows = []
    with isolated(settings, client) as bench_settings, tempfile.TemporaryDirectory(prefix="emotion-scaling-") as tmp:
        metadata = read_metadata(serving_model_dir(bench_settings, client))
        batch = settings.classifier.batch_size
        faces = -(-faces // batch) * batch  # whole batches only
        crops, crop_source = face_crops(faces, metadata.preprocess, fer_path)
        entries = face_entries(crops, metadata.preprocess)
        seconds: dict[int, list[float]] = {n: [] for n in replicas}
        for _ in range(repeats):  # interleaved, so a burst of machine load hits every replica count alike
            for n in replicas:
                seconds[n].append(_drain_once(bench_settings, client, entries, n, Path(tmp)))
        for n in replicas:
            rate = faces / median(seconds[n])
            rows.append({"replicas": n, "faces": faces, "repeats": repeats, "drain_s": round(median(seconds[n]), 3),
                         "faces_per_s": round(rate, 1), "runs_drain_s": [round(s, 3) for s in seconds[n]],
                         "events": faces, "lost": 0})
    base = rows[0]["faces_per_s"]
    for row in rows:
        row["speedup"] = round(row["faces_per_s"] / base, 3)
    return {
        "benchmark": "scaling",
        "model_version": metadata.version,
        "crops": crop_source,
        "faces": faces,
        "classifier_batch_size": settings.classifier.batch_size,
        "classifier_threads": settings.classifier.threads,
        "cpu_count": os.cpu_count(),
        "speedup": rows[-1]["speedup"],
        "events": faces,
        "lost": 0,
        "table": rows,
    }


def table(result: dict) -> str:
    rows = [(r["replicas"], r["drain_s"], r["faces_per_s"], f"{r['speedup']:.2f}") for r in result["table"]]
    head = (f"classifier scaling: {result['faces']} pre-filled faces, batch {result['classifier_batch_size']}, "
            f"{result['classifier_threads']} thread(s) per replica, {result['cpu_count']} CPUs; medians of "
            f"{result['table'][0]['repeats']} runs")
    return head + "\n" + format_table(("replicas", "drain s", "faces/s", "speedup"), rows)
