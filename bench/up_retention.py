"""`emotion up --duration D`, then the events stream held to the table of streams' rule.

    python bench/up_retention.py --duration 60
    python bench/up_retention.py --duration 100 --source demo --source demo

Runs the whole pipeline as `emotion up` does (no dashboard) on a fresh key prefix of REDIS_URL (or
--redis-url), with its own SQLite file; after it has stopped and drained, reads the events stream:
no entry may be older than the newest by more than the live window plus one retention interval
(the recorder trims every interval until it stops, after the last event), unless the recorder has
not stored it. Exit code 0 when that holds
and nothing was lost; the prefix's keys are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.common import delete_prefix, new_prefix, run_info  # noqa: E402
from shared.retention import first_needed  # noqa: E402
from shared.settings import WorkerSettings  # noqa: E402
from shared.stream_state import parse_id  # noqa: E402
from shared.streams import Keys, StreamTable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of capture (default 60)")
    parser.add_argument("--source", action="append", help="as `emotion up --source` (default: one demo camera)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    prefix = new_prefix("upret")
    keys = Keys(prefix, int(os.environ.get("EMOTION_SHARDS", "1")))  # the layout `emotion up` will use
    spec = StreamTable(keys).events
    client = redis.Redis.from_url(args.redis_url)
    with tempfile.TemporaryDirectory(prefix="emotion-up-retention-") as tmp:
        env = dict(os.environ, EMOTION_REDIS_URL=args.redis_url, EMOTION_PREFIX=prefix,
                   EMOTION_DATABASE_URL=f"sqlite:///{tmp}/events.sqlite", EMOTION_DATA_DIR=f"{tmp}/data")
        env.pop("REDIS_URL", None)
        env.pop("DATABASE_URL", None)
        command = [sys.executable, "-m", "emotion", "up", "--duration", str(args.duration), "--no-dashboard", "--json"]
        for source in args.source or ["demo"]:
            command += ["--source", source]
        try:
            run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT,
                                 timeout=args.duration + 300)
            exit_ms = int(time.time() * 1000)
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            allowed_ms = spec.retention.keep_ms + 1000 * WorkerSettings().claim_interval_s
            oldest_ms, span_ms, held_for_recorder = None, 0, False
            for shard in keys.all_shards():  # the rule holds in every shard; report the widest
                shard_spec = StreamTable(shard).events
                first = client.xrange(shard.events, count=1)
                last = client.xrevrange(shard.events, count=1)
                if not first:
                    continue
                needed = first_needed(client, shard_spec)
                held = bool(needed and needed[0] <= parse_id(first[0][0]))
                first_ms = parse_id(first[0][0])[0]
                span = parse_id(last[0][0])[0] - first_ms
                if not held and span > span_ms:
                    span_ms = span
                held_for_recorder = held_for_recorder or held
                oldest_ms = first_ms if oldest_ms is None else min(oldest_ms, first_ms)
            report = {"run": run_info(argv, "python bench/up_retention.py"), "shards": keys.shards,
                      "events": summary["events"], "recorded": summary.get("recorded"), "lost": summary["lost"],
                      "drained": summary["drained"],
                      "xlen_events": sum(client.xlen(s.events) for s in keys.all_shards()),
                      "xlen_faces": sum(client.xlen(s.faces) for s in keys.all_shards()),
                      "xlen_frames": sum(client.xlen(s.frames) for s in keys.all_shards()),
                      "oldest_entry_age_at_exit_s": None if oldest_ms is None else round((exit_ms - oldest_ms) / 1000, 1),
                      "entries_span_s": round(span_ms / 1000, 1), "allowed_span_s": allowed_ms / 1000,
                      "oldest_held_for_the_recorder": held_for_recorder}
        finally:
            delete_prefix(client, prefix)
    ok = report["lost"] == 0 and span_ms <= allowed_ms
    report["within_rule"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
