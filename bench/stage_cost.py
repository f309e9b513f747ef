"""Cost per stage of a running pipeline, the figures docs/scaling.md sizes deployments with.

`emotion up --source demo ×N` against a private redis-server; every process's CPU seconds and
resident memory are read from its own /metrics (process_cpu_seconds_total,
process_resident_memory_bytes) once every process runs and on its last answer
(`EMOTION_METRICS__LINGER_S` keeps it answering after the drain); the CPU between the two, divided
by what the process handled meanwhile (its own counters), is the steady-state cost without start-up
(imports, model loading): core-ms per frame (capture, detector), per face (classifiers), per event
(recorder). Redis: CPU, commands and bytes in/out per frame from INFO over the same span (a private
server, so nothing else is counted).

    python -m bench.stage_cost --cameras 2 --duration 20 [--fps 15] [--shards 1 --detectors 1] [--database-url URL] [--json]

With `--shards N` the streams are split into N shards (camera i in shard i mod N) and `--detectors R`
replicas split them; each process's figures are its sum over the shard loops it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.common import add_soak_arguments, emit, format_table, run_info, soak_setup

LINE = re.compile(r"([^,]+?) (http://\S+/metrics)")


def scrape(url: str) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def redis_counters(client: redis.Redis) -> dict[str, float]:
    info = client.info("all")
    return {"cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "commands": float(info["total_commands_processed"]), "in_bytes": float(info["total_net_input_bytes"]),
            "out_bytes": float(info["total_net_output_bytes"]), "memory_bytes": float(info["used_memory"])}


def run(args) -> dict:
    setup = soak_setup(args, "stage-cost")
    if setup is None:
        raise SystemExit(2)
    model, workdir, url, _server = setup
    client = redis.Redis.from_url(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(EMOTION_REDIS_URL=url, EMOTION_DEFAULT_MODEL_DIR=str(model), EMOTION_REGISTRY_DIR=str(workdir / "registry"),
               EMOTION_DATA_DIR=str(workdir / "data"), EMOTION_METRICS__LINGER_S="2", EMOTION_CAPTURE__FPS=str(args.fps),
               EMOTION_SHARDS=str(args.shards),
               EMOTION_DATABASE_URL=args.database_url or f"sqlite:///{workdir / 'events.sqlite'}")
    command = [sys.executable, "-m", "emotion", "up", "--no-dashboard", "--json", "--duration", str(args.duration),
               *[arg for _ in range(args.cameras) for arg in ("--source", "demo")], "--classifiers", str(args.classifiers),
               "--detectors", str(args.detectors)]
    handled = {"capture": "emotion_frames_total", "detector": "emotion_entries_processed_total",
               "classifier": "emotion_events_total", "recorder": "emotion_events_recorded_total"}
    before: dict[str, float] | None = None
    stderr_path = workdir / "up.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr, cwd=workdir)
        first: dict[str, dict[str, float]] = {}
        last: dict[str, dict[str, float]] = {}
        urls: dict[str, str] = {}
        while proc.poll() is None:
            lines = stderr_path.read_text().splitlines()
            if not urls:
                line = next((l for l in lines if l.startswith("emotion up: metrics: ")), "")
                urls = {name.strip(): where for name, where in LINE.findall(line.removeprefix("emotion up: metrics: "))}
            running = any("every process is running" in line for line in lines)
            if running and before is None:
                before = redis_counters(client)
            for name, where in urls.items():
                values = scrape(where)
                if values:
                    last[name] = values
                    if running:
                        first.setdefault(name, values)
            time.sleep(0.2)
        summary = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    after = redis_counters(client)

    def role(name: str) -> str:
        return name.split()[0]

    cpu: dict[str, float] = {}
    counts: dict[str, float] = {}
    rss: dict[str, list[float]] = {}
    for name, values in last.items():
        start = first.get(name, {})
        cpu[role(name)] = cpu.get(role(name), 0.0) + values.get("process_cpu_seconds_total", 0.0) - \
            start.get("process_cpu_seconds_total", 0.0)
        counts[role(name)] = counts.get(role(name), 0.0) + values.get(handled[role(name)], 0.0) - \
            start.get(handled[role(name)], 0.0)
        rss.setdefault(role(name), []).append(values.get("process_resident_memory_bytes", 0.0) / 2**20)
    frames, faces, events = summary["frames"], summary["faces"], summary["events"]
    recorded = summary.get("recorded") or events
    per = {"capture": "frame", "detector": "frame", "classifier": "face", "recorder": "event"}
    stages = {}
    for name, unit in per.items():
        count = int(counts.get(name, 0))
        if name in cpu and count:
            stages[name] = {"unit": unit, "count": count, "cpu_s": round(cpu[name], 3),
                            "core_ms_per_unit": round(1000 * cpu[name] / count, 3),
                            "rss_mb_per_replica": round(max(rss[name]), 1)}
    frames_measured = int(counts.get("capture", 0))
    before = before or after
    redis_delta = {key: after[key] - before[key] for key in ("cpu_s", "commands", "in_bytes", "out_bytes")}
    per_frame = (lambda total: round(total / frames_measured, 3)) if frames_measured else (lambda total: None)
    redis_per_frame = {"core_ms": per_frame(1000 * redis_delta["cpu_s"]),
                       "commands": per_frame(redis_delta["commands"]),
                       "kb_in": per_frame(redis_delta["in_bytes"] / 1024),
                       "kb_out": per_frame(redis_delta["out_bytes"] / 1024),
                       "used_memory_mb_at_end": round(after["memory_bytes"] / 2**20, 1)}
    return {"cameras": args.cameras, "fps": args.fps, "duration_s": args.duration, "classifiers": args.classifiers,
            "shards": args.shards, "detectors": args.detectors,
            "frames": frames, "faces": faces, "events": events, "recorded": recorded, "lost": summary["lost"],
            "faces_per_frame": round(faces / frames, 3) if frames else None,
            "stages": stages, "redis_per_frame": redis_per_frame, "run": run_info()}


def table(result: dict) -> str:
    rows = [(name, s["unit"], s["count"], s["cpu_s"], s["core_ms_per_unit"], s["rss_mb_per_replica"])
            for name, s in result["stages"].items()]
    redis_row = result["redis_per_frame"]
    text = format_table(("stage", "per", "count", "CPU s", "core-ms per", "RSS MB/replica"), rows)
    return (f"{text}\nRedis per frame: {redis_row['core_ms']} core-ms, {redis_row['commands']} commands, "
            f"{redis_row['kb_in']} kB in, {redis_row['kb_out']} kB out; {result['faces_per_frame']} faces per frame")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--classifiers", type=int, default=1)
    parser.add_argument("--shards", type=int, default=1, help="EMOTION_SHARDS of the run")
    parser.add_argument("--detectors", type=int, default=1, help="detector replicas (they split the shards)")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds once every process runs")
    parser.add_argument("--database-url", default=None, help="event store (default: SQLite in the work folder)")
    add_soak_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, table(result), as_json=bool(args.json))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
