"""Day-equivalent soak of stream retention: a day's worth of events through the real classifier and
recorder at an accelerated rate, sampling Redis memory. It must stay flat once warmed up, and every
event must be stored exactly once.

    python bench/soak_day.py                                  # a day at 2 cameras: 45 events/s x 86,400 s
    python bench/soak_day.py --events 300000 --json out.json  # a shorter validation
    python bench/soak_day.py --from events                    # events straight in, recorder only (faster)

By default synthetic faces (FER-2013 crops when the archive is beside the repository, else the demo
scene's) are fed to `emotion classifier` replicas, whose events an `emotion recorder` stores in
SQLite, all against a private redis-server. Faces are topped up while the classifier group is less
than --backlog behind, so the rate is whatever the pipeline takes. With --recorder-outage S the
recorder is killed with -9 halfway and restarted S seconds later: memory rises while events wait
for it, and falls back once they are stored. Exit code 0 when every event is stored once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from bench.common import add_soak_arguments, face_crops, run_info, soak_setup  # noqa: E402
from shared.model_runtime import read_metadata  # noqa: E402
from shared.schemas import BBox, EmotionEvent, FaceMessage, StageTimes, encode  # noqa: E402
from shared.stream_state import group_state  # noqa: E402
from shared.streams import CLASSIFIER_GROUP, LIVE_WINDOW_MS, RECORDER_GROUP, Keys, StreamTable  # noqa: E402
from tests.proc_utils import Proc, emotion_proc, service_env, stop_all  # noqa: E402

DAY_EVENTS = 45 * 86_400  # two cameras make about 45 events per second
CHUNK = 500
PROBS = [0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.1]


class Producer:
    """Synthetic faces (for the classifier) or events (for the recorder), each with a unique event id."""

    def __init__(self, client: redis.Redis, keys: Keys, kind: str, model_dir: Path) -> None:
        self.client, self.keys, self.kind = client, keys, kind
        self.produced = 0
        if kind == "faces":
            preprocess = read_metadata(model_dir).preprocess
            crops, self.crop_source = face_crops(2000, preprocess)
            self.crops = [np.ascontiguousarray(c).tobytes() for c in crops]
            self.side, self.preprocess = int(crops.shape[1]), preprocess.id
        else:
            self.crop_source = None

    def message(self, index: int, now: int):
        frame, track = index, 1 + index // 30
        if self.kind == "faces":
            return FaceMessage(camera_id="day0", session_id="day", frame_id=frame, face_index=0, faces_in_frame=1,
                               track_id=track, bbox=BBox(x=100, y=100, w=160, h=160), side=self.side,
                               preprocess=self.preprocess, captured_ms=now, detected_ms=now,
                               crop=self.crops[index % len(self.crops)])
        return EmotionEvent(event_id=f"day0:day:{frame}:0", camera_id="day0", session_id="day", frame_id=frame,
                            face_index=0, track_id=track, bbox=BBox(x=100, y=100, w=160, h=160), label="happy",
                            confidence=0.5, probabilities=PROBS, top2=("happy", "fear"), smoothed=PROBS,
                            smoothed_label="happy", model_version="soak",
                            times=StageTimes(captured_ms=now, detected_ms=now, classified_ms=now))

    def push(self, count: int) -> None:
        stream = self.keys.faces if self.kind == "faces" else self.keys.events
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        for index in range(self.produced, self.produced + count):
            pipe.xadd(stream, encode(self.message(index, now)))
        pipe.execute()
        self.produced += count


def sample(client: redis.Redis, keys: Keys, started: float, producer: Producer) -> dict:
    memory = client.info("memory")
    recorder = group_state(client, keys.events, RECORDER_GROUP)
    return {"t_s": round(time.monotonic() - started, 1), "produced": producer.produced,
            "recorded": int(client.hget(keys.stats("recorder"), "recorded") or 0),
            "xlen_faces": client.xlen(keys.faces), "xlen_events": client.xlen(keys.events),
            "recorder_backlog": recorder.backlog, "used_memory_mb": round(memory["used_memory"] / 2**20, 2)}


def flatness(samples: list[dict], warmup_s: float, outage: dict) -> dict:
    """Memory once warmed up, without the outage and the live window after it (the events held for
    the recorder go once it is back, and the window takes that long to fill again): its range, the
    drift between the first and last thirds, and a least-squares slope (MB per hour of run, and per
    day of events; only meaningful over many minutes)."""
    settle_s = LIVE_WINDOW_MS / 1000 + 10
    after = [s for s in samples if s["t_s"] >= warmup_s and not (
        outage and outage["killed_s"] <= s["t_s"] < outage.get("restarted_s", float("inf")) + settle_s)]
    if len(after) < 3:
        return {"samples_after_warmup": len(after)}
    t = np.array([s["t_s"] for s in after])
    mb = np.array([s["used_memory_mb"] for s in after])
    slope = float(np.polyfit(t, mb, 1)[0])
    produced = after[-1]["produced"] - after[0]["produced"]
    per_day = float(slope * (t[-1] - t[0]) * DAY_EVENTS / produced) if produced else None
    third = max(1, len(mb) // 3)
    return {"samples_after_warmup": len(after), "min_mb": float(mb.min()), "max_mb": float(mb.max()),
            "first_mb": float(mb[0]), "last_mb": float(mb[-1]),
            "drift_mb": round(float(mb[-third:].mean() - mb[:third].mean()), 2),  # last third vs first third
            "slope_mb_per_hour": round(slope * 3600, 2),
            "slope_mb_per_day_of_events": None if per_day is None else round(per_day, 2)}


def count_rows(database_url: str) -> tuple[int, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events")).one())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=DAY_EVENTS, help=f"events to push (default {DAY_EVENTS:,}: a day)")
    parser.add_argument("--from", dest="kind", choices=("faces", "events"), default="faces",
                        help="feed faces to the classifier (default) or events straight to the recorder")
    parser.add_argument("--classifiers", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=4000, help="top up while the first group is less behind")
    parser.add_argument("--rate", type=float, default=3000.0,
                        help="at most this many per second (default 3,000: a day in 22 minutes, and the events "
                             "kept for the live window stay well under the stream's safety cap)")
    parser.add_argument("--recorder-outage", type=float, default=0.0, metavar="S",
                        help="kill -9 the recorder halfway and restart it S seconds later")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=LIVE_WINDOW_MS / 1000 + 30,
                        help="seconds before memory must be flat (default: the events window + 30 s)")
    add_soak_arguments(parser)
    args = parser.parse_args(argv)

    setup = soak_setup(args, "soak-day")
    if setup is None:
        return 2
    model, workdir, args.redis_url, _server = setup
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"day{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix)
    database_url = f"sqlite:///{workdir / 'events.sqlite'}"
    env = service_env(args.redis_url, prefix, model, workdir / "registry", EMOTION_DATABASE_URL=database_url,
                      EMOTION_LOG_LEVEL="INFO", EMOTION_WORKER__BATCH_SIZE="256")
    logs = workdir / "logs"
    procs: list[Proc] = []
    recorders: list[Proc] = []

    def start_recorder() -> None:
        recorders.append(emotion_proc(["recorder"], env, logs / f"recorder-{len(recorders)}.log"))

    producer = Producer(client, keys, args.kind, model)
    first_stream, first_group = ((keys.faces, CLASSIFIER_GROUP) if args.kind == "faces"
                                 else (keys.events, RECORDER_GROUP))
    report: dict = {"run": run_info(argv, "python bench/soak_day.py"), "events": args.events, "from": args.kind,
                    "classifiers": args.classifiers if args.kind == "faces" else 0, "crops": producer.crop_source,
                    "events_retention": vars(StreamTable(keys).events.retention), "workdir": str(workdir)}
    samples: list[dict] = []
    outage: dict = {}
    started = time.monotonic()
    try:
        start_recorder()
        if args.kind == "faces":
            procs += [emotion_proc(["classifier"], env, logs / f"classifier-{i}.log") for i in range(args.classifiers)]
        next_sample = started
        while producer.produced < args.events:
            waiting = bool(outage) and "restarted_s" not in outage  # the recorder is down on purpose
            for proc in procs + ([] if waiting else recorders[-1:]):
                if not proc.alive():
                    raise RuntimeError(f"{proc.args[-1]} exited on its own; see {proc.log_path}")
            if args.recorder_outage and not outage and producer.produced >= args.events // 2:
                recorders[-1].kill9()
                outage = {"killed_s": round(time.monotonic() - started, 1)}
            if outage and "restarted_s" not in outage:
                if time.monotonic() - started - outage["killed_s"] >= args.recorder_outage:
                    start_recorder()
                    outage["restarted_s"] = round(time.monotonic() - started, 1)
            waiting = bool(outage) and "restarted_s" not in outage
            room = int(args.rate * (time.monotonic() - started)) - producer.produced
            if not (waiting and args.kind == "events"):  # with the recorder down nobody reads events: rate only
                room = min(room, args.backlog - group_state(client, first_stream, first_group).backlog)
            if room >= CHUNK:
                producer.push(min(CHUNK, args.events - producer.produced))
            else:
                time.sleep(0.005)
            if time.monotonic() >= next_sample:
                samples.append({**sample(client, keys, started, producer), **({"outage": True} if waiting else {})})
                next_sample += args.sample_every
        produced_s = time.monotonic() - started
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if group_state(client, keys.events, RECORDER_GROUP).backlog == 0 and (
                    args.kind == "events" or group_state(client, keys.faces, CLASSIFIER_GROUP).backlog == 0):
                break
            time.sleep(0.5)
        samples.append(sample(client, keys, started, producer))
    finally:
        stop_all(procs + recorders)
    rows, distinct = count_rows(database_url)
    end = samples[-1]
    report.update({
        "produced": producer.produced, "production_s": round(produced_s, 1),
        "events_per_s": round(producer.produced / produced_s, 1),
        "day_equivalents": round(producer.produced / DAY_EVENTS, 3),
        "rows": rows, "distinct_rows": distinct, "lost": producer.produced - distinct, "duplicates": rows - distinct,
        "outage": outage or None, "memory_after_warmup": flatness(samples, args.warmup, outage),
        "end": end, "samples": samples,
    })
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if report["lost"] == 0 and report["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
