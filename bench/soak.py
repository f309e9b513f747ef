"""Soak run: the whole pipeline for minutes with demo cameras, a classifier replica killed with -9 and
restarted every --kill-every seconds; reports memory growth, lost events and duplicates.

    python bench/soak.py --minutes 10 --cameras 2 --kill-every 120
    python bench/soak.py --minutes 5 --cameras 4 --shards 2 --detectors 2

Every face published on the faces streams is collected by tailing them (one tail per shard; they are
trimmed a few seconds after classification), every event by tailing the events streams (trimmed once
recorded and a minute old); after the cameras stop, the groups are drained in every shard and:
lost = faces without an event, duplicates = events beyond one per face (both must be 0).
Exit code 0 when both are 0.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from shared.schemas import EmotionEvent, FaceMessage, MessageError, decode  # noqa: E402
from shared.shards import backlog, stats_of  # noqa: E402
from shared.streams import CLASSIFIER_GROUP, DETECTOR_GROUP, RECORDER_GROUP, Keys  # noqa: E402
from bench.common import add_soak_arguments, soak_setup  # noqa: E402
from tests.proc_utils import Proc, emotion_proc, service_env, stop_all  # noqa: E402


class Tail(threading.Thread):
    """Reads a stream from its start with XREAD (no group), keeping what `extract` returns per entry."""

    def __init__(self, client: redis.Redis, stream: str, extract) -> None:
        super().__init__(daemon=True)
        self.client, self.stream, self.extract = client, stream, extract
        self.last = "0-0"
        self.values: list = []
        self.bad = 0
        self.stop = threading.Event()

    def poll(self, block_ms: int | None = None) -> int:
        reply = self.client.xread({self.stream: self.last}, count=2000, block=block_ms)
        got = 0
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last = entry_id.decode()
                try:
                    self.values.append(self.extract(fields))
                except MessageError:
                    self.bad += 1
                got += 1
        return got

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll(block_ms=500)
            except redis.ConnectionError:
                time.sleep(0.5)

    def finish(self) -> None:
        self.stop.set()
        self.join(5)
        while self.poll():
            pass


def event_fields(fields):
    event = decode(EmotionEvent, fields)
    return event.event_id, event.times.classified_ms - event.times.captured_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--classifiers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between kill -9 of a classifier")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second per demo camera")
    parser.add_argument("--shards", type=int, default=1, help="EMOTION_SHARDS of the run (camera i in shard i mod N)")
    parser.add_argument("--detectors", type=int, default=1, help="detector replicas (each leases its share of shards)")
    add_soak_arguments(parser, redis_env="SOAK_REDIS_URL")
    parser.add_argument("--keep-keys", action="store_true", help="leave the run's Redis keys in place")
    args = parser.parse_args(argv)

    setup = soak_setup(args, "soak")
    if setup is None:
        return 2
    model, workdir, args.redis_url, server = setup
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix, args.shards)
    client = redis.Redis.from_url(args.redis_url)
    client.ping()
    recorder = importlib.util.find_spec("services.recorder.run") is not None
    env = service_env(args.redis_url, prefix, model, workdir / "registry",
                      EMOTION_DATABASE_URL=f"sqlite:///{workdir / 'events.sqlite'}", EMOTION_LOG_LEVEL="INFO",
                      EMOTION_WORKER__CLAIM_IDLE_MS="2000", EMOTION_WORKER__CLAIM_INTERVAL_S="1",
                      EMOTION_SHARDS=str(args.shards))
    session = f"soak-{uuid.uuid4().hex[:6]}"
    logs = workdir / "logs"
    procs: dict[str, Proc] = {}
    retired: list[Proc] = []
    kills: list[dict] = []

    def start(role: str, *cli: str) -> Proc:
        procs[role] = emotion_proc(list(cli), env, logs / f"{role}-{len(kills)}.log")
        return procs[role]

    faces = [Tail(client, shard.faces, lambda f: decode(FaceMessage, f).event_id) for shard in keys.all_shards()]
    events = [Tail(client, shard.events, event_fields) for shard in keys.all_shards()]
    started = time.monotonic()
    report: dict = {"prefix": prefix, "workdir": str(workdir), "minutes": args.minutes, "cameras": args.cameras,
                    "classifiers": args.classifiers, "kill_every_s": args.kill_every, "fps": args.fps,
                    "shards": args.shards, "detectors": args.detectors,
                    "recorder": recorder, "model": str(model)}
    try:
        if recorder:
            start("recorder", "recorder")
        for i in range(args.detectors):
            start(f"detector{i}" if i else "detector", "detector")
        for i in range(args.classifiers):
            start(f"classifier{i}", "classifier")
        for i in range(args.cameras):
            start(f"capture{i}", "capture", "--source", "demo", "--camera-id", f"cam{i}", "--session", session,
                  "--fps", str(args.fps), "--shard", str(i % args.shards))
        for tail in faces + events:
            tail.start()
        end = started + args.minutes * 60
        time.sleep(min(15.0, args.minutes * 60 / 4))  # warm-up: imports, model load, first batches
        rss_start = {role: proc.rss_kb() for role, proc in procs.items()}
        next_kill = time.monotonic() + args.kill_every
        victim = 0
        while time.monotonic() < end:
            time.sleep(0.5)
            for role, proc in procs.items():
                if not proc.alive():
                    raise RuntimeError(f"{role} exited on its own (code {proc.popen.returncode}); see {proc.log_path}")
            if args.kill_every > 0 and time.monotonic() >= next_kill and args.classifiers > 1:
                # Kill replicas 0..N-2 in turn; the last one is never killed (its RSS shows long-run growth).
                role = f"classifier{victim % (args.classifiers - 1)}"
                victim += 1
                old = procs[role]
                rss_at_kill = old.rss_kb()
                old.kill9()
                retired.append(old)
                kills.append({"at_s": round(time.monotonic() - started, 1), "role": role, "pid": old.pid,
                              "rss_kb_at_kill": rss_at_kill})
                start(role, "classifier")
                next_kill += args.kill_every
        rss_end = {role: proc.rss_kb() for role, proc in procs.items()}
        for role in [r for r in procs if r.startswith("capture")]:
            procs[role].stop()
        drain_started = time.monotonic()
        drained = {}
        for stream, group, needed in (("frames", DETECTOR_GROUP, True), ("faces", CLASSIFIER_GROUP, True),
                                      ("events", RECORDER_GROUP, recorder)):
            if not needed:
                continue
            deadline = time.monotonic() + 180
            while backlog(client, keys, stream, group) and time.monotonic() < deadline:
                time.sleep(0.5)
            drained[group] = backlog(client, keys, stream, group) == 0
        report["drain_s"] = round(time.monotonic() - drain_started, 1)
        report["drained"] = drained
    finally:
        stop_all(procs.values())
        stop_all(retired)
        for tail in faces + events:
            tail.finish()

    face_ids = [face for tail in faces for face in tail.values]
    event_values = [value for tail in events for value in tail.values]
    event_ids = [e for e, _ in event_values]
    counts = collections.Counter(event_ids)
    latencies = sorted(latency for _, latency in event_values)
    stats = stats_of(client, keys, ("capture", "detector", "classifier", "recorder"))
    report.update({
        "duration_s": round(time.monotonic() - started, 1),
        "frames_published": stats["capture"].get("published", 0),
        "frames_shed": stats["capture"].get("shed", 0),
        "faces": len(face_ids),
        "events": len(event_ids),
        "unique_events": len(counts),
        "lost": len(set(face_ids) - set(counts)),
        "duplicates": len(event_ids) - len(counts),
        "events_without_face": len(set(counts) - set(face_ids)),
        "dead_letters": {getattr(shard, name) + ":dead": client.xlen(keys.dead(getattr(shard, name)))
                         for shard in keys.all_shards() for name in ("frames", "faces", "events")},
        "latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
        "latency_ms_p95": latencies[int(len(latencies) * 0.95)] if latencies else None,
        "kills": kills,
        "reclaimed_by_survivors": sum(p.output().count("event=reclaimed") for p in list(procs.values()) + retired
                                      if "classifier" in str(p.log_path)),
        "rss_kb": {role: {"start": rss_start.get(role), "end": rss_end.get(role),
                          "growth": (rss_end[role] - rss_start[role]) if rss_start.get(role) and rss_end.get(role)
                          and not any(k["role"] == role for k in kills) else None}
                   for role in rss_end},
        "stats": stats,
    })
    if recorder:
        try:
            import sqlalchemy as sa

            engine = sa.create_engine(f"sqlite:///{workdir / 'events.sqlite'}")
            with engine.connect() as conn:
                report["recorded_rows"] = int(conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar())
        except Exception as exc:  # the report must still print
            report["recorded_rows"] = f"unavailable: {exc}"
    if not args.keep_keys:
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            client.delete(key)
    if server is not None:
        server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if report["lost"] == 0 and report["duplicates"] == 0 and report["faces"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
