"""Bad input on every stream: 1,000 malformed entries each, interleaved with good ones.

Every malformed entry must end in `<stream>:dead` with a reason; every good one must flow on; nothing
stays pending. Real workers are driven in burst mode in-process (fast), plus one real process.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid

import cv2
import numpy as np
import pytest
import redis

from shared.schemas import MAX_JPEG_BYTES, EmotionEvent, FaceMessage, FrameMessage, MessageError, decode, encode
from shared.streams import Keys
from shared.worker import Outbound, Processor, StreamWorker
from tests.messages import good_face
from tests.proc_utils import emotion_proc, find_model_dir, service_env, wait_for

pytestmark = pytest.mark.skipif(find_model_dir() is None,
                                reason="no exported model: neither models/default nor /tmp/model-tmp exists")

BAD_PER_STREAM = 1000


def _small_jpeg(width=64, height=48, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def good_frame_fields(i: int, jpeg: bytes, width: int, height: int) -> dict:
    return encode(FrameMessage(camera_id="good", session_id="s", frame_id=i, captured_ms=int(time.time() * 1000),
                               width=width, height=height, jpeg=jpeg))


def good_event(i: int) -> EmotionEvent:
    now = int(time.time() * 1000)
    p = [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1]
    return EmotionEvent(event_id=f"good:s:{i}:0", camera_id="good", session_id="s", frame_id=i, face_index=0,
                        track_id=1, bbox={"x": 0, "y": 0, "w": 10, "h": 10}, label="happy", confidence=0.4,
                        probabilities=p, top2=("happy", "angry"), smoothed=p, smoothed_label="happy",
                        model_version="v", times={"captured_ms": now, "detected_ms": now + 1, "classified_ms": now + 2})


class _Evil:
    """Unpickling this would create a marker file: proves nothing is ever unpickled."""

    marker = "/tmp/emotion-bad-input-unpickled-{}".format(uuid.uuid4().hex)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _mutations(meta: dict, binary_name: str, binary: bytes, kind: str) -> list[dict]:
    """Generic malformations of an entry whose good form is (meta, binary)."""
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    bad: list[dict] = [
        {"": b""},                                                              # one empty, nameless field
        {"garbage": b"1"},                                                      # no meta
        {"meta": b"{not json", binary_name: binary} if binary_name else {"meta": b"{not json"},
        {"meta": b"[1, 2, 3]", binary_name: binary} if binary_name else {"meta": b"[1, 2, 3]"},
        {"meta": b"null"},
        {"meta": b"\xff\xfe\x00garbage"},
        {"meta": pickle.dumps(_Evil()), **({binary_name: binary} if binary_name else {})},
        {"meta": pickle.dumps(meta)},
        {"meta": dump({**meta, "schema_version": 2}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({**meta, "schema_version": "1x"}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({**meta, "unexpected": 1}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({k: v for k, v in meta.items() if k != "camera_id"}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({**meta, "frame_id": -1}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({**meta, "camera_id": ""}), **({binary_name: binary} if binary_name else {})},
        {"meta": dump({**meta, "captured_ms": "yesterday"}), **({binary_name: binary} if binary_name else {})},
        {"meta": b'{"a":' * 100_000 + b"1" + b"}" * 100_000},                  # nesting deeper than any parser's stack
    ]
    if binary_name:
        bad.append({"meta": dump(meta)})                                        # binary field missing
    return bad


def frame_malformations(jpeg: bytes, width: int, height: int) -> list[dict]:
    meta = json.loads(encode(FrameMessage(camera_id="bad", session_id="s", frame_id=1, captured_ms=1, width=width,
                                          height=height, jpeg=jpeg))["meta"])
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    png = cv2.imencode(".png", np.zeros((height, width), np.uint8))[1].tobytes()
    return _mutations(meta, "jpeg", jpeg, "frame") + [
        {"meta": dump(meta), "jpeg": jpeg[: len(jpeg) // 2]},                    # truncated JPEG
        {"meta": dump(meta), "jpeg": jpeg[:20]},                                  # barely a header
        {"meta": dump(meta), "jpeg": b"\xff\xd8" + b"\x00" * 500},                # SOI then garbage
        {"meta": dump(meta), "jpeg": png},                                        # a PNG
        {"meta": dump(meta), "jpeg": b""},                                        # empty
        {"meta": dump({**meta, "width": width * 2}), "jpeg": jpeg},               # size differs from announced
        {"meta": dump({**meta, "height": height + 1}), "jpeg": jpeg},
        {"meta": dump({**meta, "width": 0}), "jpeg": jpeg},
        {"meta": dump({**meta, "width": 100_000}), "jpeg": jpeg},
        {"meta": dump({**meta, "camera_id": "a b/c"}), "jpeg": jpeg},             # camera id outside the alphabet
    ]


def face_malformations() -> list[dict]:
    face = good_face(0)
    meta = json.loads(encode(face)["meta"])
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    crop = face.crop
    return _mutations(meta, "crop", crop, "face") + [
        {"meta": dump(meta), "crop": crop[:-1]},                                  # one byte short
        {"meta": dump(meta), "crop": crop + b"\x00"},
        {"meta": dump(meta), "crop": b""},
        {"meta": dump({**meta, "side": 0}), "crop": b""},
        {"meta": dump({**meta, "side": 300}), "crop": b"\x00" * 90_000},         # above MAX_CROP_SIDE
        {"meta": dump({**meta, "side": 32}), "crop": crop},                       # announced 32, sent 48x48
        {"meta": dump({**meta, "bbox": {"x": -1, "y": 0, "w": 1, "h": 1}}), "crop": crop},
        {"meta": dump({**meta, "bbox": [0, 0, 1, 1]}), "crop": crop},
        {"meta": dump({**meta, "faces_in_frame": 0}), "crop": crop},
        {"meta": dump({**meta, "track_id": 1.5}), "crop": crop},
    ]


def event_malformations() -> list[dict]:
    meta = json.loads(encode(good_event(0))["meta"])
    dump = lambda d: json.dumps(d).encode()  # noqa: E731
    nan = [float("nan")] + [1 / 6] * 6
    return _mutations(meta, None, b"", "event") + [
        {"meta": dump({**meta, "probabilities": nan})},                            # NaN (json.dumps writes NaN)
        {"meta": dump({**meta, "smoothed": [float("inf")] + [0.0] * 6})},
        {"meta": dump({**meta, "probabilities": [0.5] * 7})},                     # does not sum to 1
        {"meta": dump({**meta, "probabilities": [1.0] + [0.0] * 5})},             # six classes
        {"meta": dump({**meta, "probabilities": [1.5, -0.5] + [0.0] * 5})},
        {"meta": dump({**meta, "label": "bored"})},
        {"meta": dump({**meta, "confidence": 2})},
        {"meta": dump({**meta, "times": {"captured_ms": 1}})},
        {"meta": dump({**meta, "event_id": "x" * 1000})},
        {"meta": dump({**meta, "model_version": ""})},
    ]


def interleave(client: redis.Redis, stream: str, bad: list[dict], good: list[dict], count: int,
               good_every: int) -> tuple[int, int]:
    """XADD `count` malformed entries cycling through `bad`, a good one after every `good_every`."""
    pipe = client.pipeline(transaction=False)
    goods = 0
    for i in range(count):
        pipe.xadd(stream, bad[i % len(bad)])
        if (i + 1) % good_every == 0 and goods < len(good):
            pipe.xadd(stream, good[goods])
            goods += 1
    pipe.execute()
    return count, goods


def dead_letters(client: redis.Redis, stream: str) -> list[dict]:
    return [fields for _, fields in client.xrange(Keys.dead(stream), count=100_000)]


def assert_all_dead_with_reasons(client, stream, group, expected_dead: int) -> list[str]:
    dead = dead_letters(client, stream)
    assert len(dead) == expected_dead
    reasons = [f[b"reason"].decode() for f in dead]
    assert all(r.strip() for r in reasons)
    assert all(b"entry_id" in f and b"failed_ms" in f for f in dead)
    info = {g["name"].decode(): g for g in client.xinfo_groups(stream)}[group]
    assert info["pending"] == 0 and info["lag"] == 0
    return reasons


@pytest.fixture
def quick(settings, served_model):
    return settings.model_copy(update={
        "default_model_dir": served_model,
        "worker": settings.worker.model_copy(update={"block_ms": 20, "batch_size": 64})})


@pytest.mark.timeout(120)
def test_thousand_malformed_frames_go_to_dead_letters_and_good_frames_flow(redis_client, quick, keys):
    from services.detector.run import build_worker

    jpeg = _small_jpeg(64, 48)
    bad = frame_malformations(jpeg, 64, 48)
    # Good frames: a real face, so they produce faces downstream.
    from services.capture.capture import encode_frame
    from services.capture.demo import AstronautDemo

    demo = AstronautDemo(fps=15)
    face_jpeg, w, h = encode_frame(demo.frame(), quick.capture)
    good = [good_frame_fields(i, face_jpeg, w, h) for i in range(20)]
    n_bad, n_good = interleave(redis_client, keys.frames, bad, good, BAD_PER_STREAM, good_every=50)
    # A few oversized frames (just above the 8 MiB limit): rejected by the schema, not decoded.
    big = {"meta": encode(FrameMessage(camera_id="big", session_id="s", frame_id=0, captured_ms=1, width=64,
                                       height=48, jpeg=jpeg))["meta"], "jpeg": b"\xff\xd8" + b"\x00" * MAX_JPEG_BYTES}
    for _ in range(2):
        redis_client.xadd(keys.frames, big)
    worker = build_worker(quick, redis_client)
    worker.run(burst=True)
    reasons = assert_all_dead_with_reasons(redis_client, keys.frames, "detector", n_bad + 2)
    assert any("schema_version" in r for r in reasons)
    assert any("no SOI" in r or "not a JPEG" in r for r in reasons)
    assert any("does not decode" in r for r in reasons)
    assert any("announced" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    assert any("no 'meta'" in r for r in reasons)
    assert any("not a JSON object" in r or "JSON" in r for r in reasons)
    # The dead letter keeps at most 64 KiB of each original field.
    assert max(len(f.get(b"orig:jpeg", b"")) for f in dead_letters(redis_client, keys.frames)) <= 64 * 1024
    faces = [decode(FaceMessage, f) for _, f in redis_client.xrange(keys.faces)]
    assert {f.frame_id for f in faces} == set(range(n_good))  # every good frame (one face each) came through
    assert not __import__("os").path.exists(_Evil.marker)


@pytest.mark.timeout(120)
def test_thousand_malformed_faces_go_to_dead_letters_and_good_faces_flow(redis_client, quick, keys):
    from services.classifier.run import build_worker

    bad = face_malformations()
    good = [encode(good_face(i)) for i in range(50)]
    n_bad, n_good = interleave(redis_client, keys.faces, bad, good, BAD_PER_STREAM, good_every=20)
    worker = build_worker(quick, redis_client)
    worker.run(burst=True)
    reasons = assert_all_dead_with_reasons(redis_client, keys.faces, "classifier", n_bad)
    assert any("crop has" in r for r in reasons)
    assert any("side" in r for r in reasons)
    events = [decode(EmotionEvent, f) for _, f in redis_client.xrange(keys.events)]
    assert sorted(e.frame_id for e in events) == list(range(n_good))
    assert not __import__("os").path.exists(_Evil.marker)


class _EventSink(Processor):
    """A stand-in consumer of the events stream (the recorder's validation is the same decode)."""

    input_model = EmotionEvent

    def __init__(self, out: str) -> None:
        self.out = out

    def handle(self, batch):
        return [Outbound(self.out, {"event_id": e.event_id.encode()}) for e in batch]


@pytest.mark.timeout(120)
def test_thousand_malformed_events_go_to_dead_letters_and_good_events_flow(redis_client, quick, keys, tmp_path):
    bad = event_malformations()
    for fields in bad:  # every one of them is refused by the schema the recorder uses
        with pytest.raises(MessageError):
            decode(EmotionEvent, {k.encode() if isinstance(k, str) else k: v for k, v in fields.items()})
    good = [encode(good_event(i)) for i in range(50)]
    n_bad, n_good = interleave(redis_client, keys.events, bad, good, BAD_PER_STREAM, good_every=20)
    try:
        from services.recorder.run import build_worker as build_recorder, open_store
        recorder_ready = True
    except ImportError:
        recorder_ready = False
    engine = None
    if recorder_ready:
        s = quick.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'events.sqlite'}"})
        engine = open_store(s, wait_s=5)
        worker = build_recorder(s, redis_client, engine)
        group = "recorder"
    else:
        worker = StreamWorker(redis_client, _EventSink(f"{keys.prefix}:sink"), service="sink", stream=keys.events,
                              group="recorder", keys=keys, settings=quick.worker)
        group = "recorder"
    worker.run(burst=True)
    reasons = assert_all_dead_with_reasons(redis_client, keys.events, group, n_bad)
    assert any("probabilities" in r for r in reasons)
    assert any("label" in r for r in reasons)
    if recorder_ready:
        import sqlalchemy as sa

        with engine.connect() as conn:
            rows = [r[0] for r in conn.execute(sa.text("SELECT event_id FROM events"))]
        engine.dispose()
        assert sorted(rows) == sorted(f"good:s:{i}:0" for i in range(n_good))
    else:
        sunk = [f[b"event_id"].decode() for _, f in redis_client.xrange(f"{keys.prefix}:sink")]
        assert sorted(sunk) == sorted(f"good:s:{i}:0" for i in range(n_good))
    assert not __import__("os").path.exists(_Evil.marker)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_real_detector_process_dead_letters_bad_frames_and_stops_warm(redis_client, redis_url, tmp_path, served_model):
    prefix = f"bad{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    jpeg = _small_jpeg(64, 48)
    bad = frame_malformations(jpeg, 64, 48)
    good = [good_frame_fields(i, jpeg, 64, 48) for i in range(10)]
    n_bad, n_good = interleave(redis_client, keys.frames, bad, good, 300, good_every=30)
    env = service_env(redis_url, prefix, served_model, tmp_path / "registry", EMOTION_LOG_LEVEL="INFO")
    proc = emotion_proc(["detector"], env, tmp_path / "detector.log")
    try:
        wait_for(lambda: redis_client.xlen(keys.dead(keys.frames)) >= n_bad, 30, interval=0.2, what="dead letters")
        wait_for(lambda: int(redis_client.hget(keys.stats("detector"), "entries_in") or 0) >= n_good, 15,
                 what="good frames handled")
        assert proc.alive()
        assert redis_client.xlen(keys.dead(keys.frames)) == n_bad
        info = {g["name"].decode(): g for g in redis_client.xinfo_groups(keys.frames)}["detector"]
        assert info["pending"] == 0 and info["lag"] == 0
        assert proc.stop(timeout=15) == 0  # SIGTERM: warm stop, exit 0
    finally:
        proc.stop()
        for key in redis_client.scan_iter(f"{prefix}:*"):
            redis_client.delete(key)
    text = proc.output()
    assert "event=warm_stop" in text and "event=stop" in text
