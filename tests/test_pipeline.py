"""The streaming core against a real Redis: capture -> detector -> classifier, driven in burst mode."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from services.capture.capture import run_capture
from services.capture.sources import open_source
from services.classifier.run import build_worker as build_classifier
from services.detector.run import build_worker as build_detector
from shared.registry import ModelRegistry
from shared.schemas import EmotionEvent, FaceMessage, decode, encode
from shared.streams import CLASSIFIER_GROUP, Keys, Retention, StreamTable
from tests.demo_video import write_demo_video


def capture_file(client, settings, path, camera_id="cam0", session_id="s1"):
    source = open_source(str(path), fps=1000)
    capture_settings = settings.capture.model_copy(update={"fps": 1000.0, "shed_lag": 10_000})
    return run_capture(client, Keys(settings.prefix), capture_settings, source, camera_id=camera_id,
                       session_id=session_id, stop=threading.Event())


def read_events(client, keys):
    return [decode(EmotionEvent, fields) for _, fields in client.xrange(keys.events)]


def test_video_of_real_faces_gives_exactly_one_event_per_detected_face(redis_client, pipeline_settings, tmp_path):
    """Guards the core promise: every face the detector publishes is classified exactly once."""
    keys = Keys(pipeline_settings.prefix)
    video = tmp_path / "faces.avi"
    write_demo_video(video, frames=45)
    stats = capture_file(redis_client, pipeline_settings, video)
    assert stats.published == 45 and stats.shed == 0
    build_detector(pipeline_settings, redis_client).run(burst=True)
    faces = [decode(FaceMessage, f) for _, f in redis_client.xrange(keys.faces)]
    assert len(faces) >= 45  # the demo shows one or two real faces in every frame
    build_classifier(pipeline_settings, redis_client).run(burst=True)
    events = read_events(redis_client, keys)
    assert sorted(e.event_id for e in events) == sorted(f.event_id for f in faces)
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.times.captured_ms <= e.times.detected_ms <= e.times.classified_ms for e in events)
    assert {e.track_id for e in events} and max(e.track_id for e in events) <= 6  # tracks persist across frames
    assert redis_client.xlen(keys.dead(keys.faces)) == 0


def _fill_faces(client, settings, tmp_path, frames=30) -> int:
    video = tmp_path / "faces.avi"
    write_demo_video(video, frames=frames)
    capture_file(client, settings, video)
    build_detector(settings, client).run(burst=True)
    return client.xlen(Keys(settings.prefix).faces)


def test_three_replicas_share_the_work_without_duplicates(redis_client, pipeline_settings, tmp_path):
    """Replicas in one consumer group: each gets part of the faces, none twice, none missed."""
    keys = Keys(pipeline_settings.prefix)
    settings = pipeline_settings.model_copy(update={"classifier": pipeline_settings.classifier.model_copy(
        update={"batch_size": 4, "batch_wait_ms": 0})})
    total = _fill_faces(redis_client, settings, tmp_path, frames=60)
    workers = [build_classifier(settings, redis_client) for _ in range(3)]
    # Slow each replica down a little so all three are busy at once, as under real load.
    for worker in workers:
        predict = worker.processor.model.predict
        worker.processor.model.predict = lambda crops, _p=predict: (time.sleep(0.01), _p(crops))[1]
    threads = [threading.Thread(target=w.run, kwargs={"burst": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    per_replica = [w.stats.entries for w in workers]
    assert all(n > 0 for n in per_replica), per_replica
    assert sum(per_replica) == total
    ids = [e.event_id for e in read_events(redis_client, keys)]
    assert len(ids) == len(set(ids)) == total


def test_malformed_entry_goes_to_dead_letter_while_good_ones_flow(redis_client, pipeline_settings, tmp_path):
    keys = Keys(pipeline_settings.prefix)
    video = tmp_path / "faces.avi"
    write_demo_video(video, frames=6)
    capture_file(redis_client, pipeline_settings, video)
    redis_client.xadd(keys.frames, {"meta": b'{"schema_version": 1, "camera_id": "x"}', "jpeg": b"\xff\xd8"})
    redis_client.xadd(keys.frames, {"garbage": b"1"})
    capture_file(redis_client, pipeline_settings, video, session_id="s2")
    worker = build_detector(pipeline_settings, redis_client)
    worker.run(burst=True)
    dead = redis_client.xrange(keys.dead(keys.frames))
    assert len(dead) == 2
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert any("FrameMessage" in r for r in reasons) and any("no 'meta'" in r for r in reasons)
    sessions = {decode(FaceMessage, f).session_id for _, f in redis_client.xrange(keys.faces)}
    assert sessions == {"s1", "s2"}
    info = {g["name"].decode(): g for g in redis_client.xinfo_groups(keys.frames)}
    assert info["detector"]["pending"] == 0 and info["detector"]["lag"] == 0


def test_entries_of_a_dead_consumer_are_reclaimed(redis_client, pipeline_settings, tmp_path):
    """A replica that read entries and died (never acked) does not lose them: XAUTOCLAIM hands them on."""
    keys = Keys(pipeline_settings.prefix)
    total = _fill_faces(redis_client, pipeline_settings, tmp_path, frames=8)
    redis_client.xgroup_create(keys.faces, CLASSIFIER_GROUP, id="0")
    taken = redis_client.xreadgroup(CLASSIFIER_GROUP, "crashed-replica", {keys.faces: ">"}, count=5)
    assert len(taken[0][1]) == 5
    # Age them past claim_idle_ms without waiting (IDLE sets the idle time; JUSTID counts no delivery).
    redis_client.xclaim(keys.faces, CLASSIFIER_GROUP, "crashed-replica", min_idle_time=0,
                        message_ids=[entry_id for entry_id, _ in taken[0][1]], idle=60_000, justid=True)
    worker = build_classifier(pipeline_settings, redis_client)
    worker.run(burst=True)
    assert worker.stats.reclaimed == 5
    ids = [e.event_id for e in read_events(redis_client, keys)]
    assert len(ids) == len(set(ids)) == total


def test_hot_swap_between_batches_loses_and_duplicates_nothing(redis_client, pipeline_settings, tmp_path, model_dir):
    keys = Keys(pipeline_settings.prefix)
    settings = pipeline_settings.model_copy(update={"model_check_s": 0.01, "classifier": pipeline_settings.classifier.model_copy(
        update={"batch_size": 8, "batch_wait_ms": 0})})
    registry = ModelRegistry(settings.registry_dir, redis_client, keys, settings.default_model_dir)
    for version in ("v1", "v2"):
        staged = tmp_path / version
        shutil.copytree(model_dir, staged)
        registry.register(staged, version=version)
    registry.promote("v1")
    total = _fill_faces(redis_client, settings, tmp_path, frames=40)
    worker = build_classifier(settings, redis_client)
    worker.run(max_entries=16)
    registry.promote("v2")
    time.sleep(0.02)
    worker.run(burst=True)
    events = read_events(redis_client, keys)
    versions = [e.model_version for e in events]
    assert len(events) == len({e.event_id for e in events}) == total
    assert versions[0] == "v1" and versions[-1] == "v2" and worker.processor.follower.swaps == 1


def test_consumed_entries_are_trimmed_but_unread_and_pending_ones_are_kept(redis_client, pipeline_settings, tmp_path):
    """The faces stream is never shed by length, so it must shrink once faces are classified."""
    keys = Keys(pipeline_settings.prefix)
    settings = pipeline_settings.model_copy(update={"classifier": pipeline_settings.classifier.model_copy(
        update={"batch_size": 2, "batch_wait_ms": 0})})
    total = _fill_faces(redis_client, settings, tmp_path, frames=10)
    worker = build_classifier(settings, redis_client)
    worker.streams = StreamTable(keys, faces=Retention(cap=100_000, after_ack=True, keep_ms=0))
    worker.run(max_entries=4)
    held = [entry_id for entry_id, _ in redis_client.xreadgroup(CLASSIFIER_GROUP, "slow-replica", {keys.faces: ">"},
                                                                 count=2)[0][1]]
    worker.apply_retention()
    remaining = [entry_id for entry_id, _ in redis_client.xrange(keys.faces)]
    assert remaining[0] == held[0]  # pending at another consumer: kept, and everything after it
    assert len(remaining) == total - 4
    redis_client.xack(keys.faces, CLASSIFIER_GROUP, *held)
    worker.run(burst=True)
    worker.apply_retention()
    assert redis_client.xlen(keys.faces) == 0  # every face acknowledged: all trimmed
    assert redis_client.xlen(keys.events) == total - 2


def test_track_state_is_committed_with_the_events_it_smoothed(redis_client, pipeline_settings, tmp_path):
    """The per-track smoothing state rides in the commit transaction: after the run, each track's
    stored state is exactly the smoothed distribution of its newest event."""
    keys = Keys(pipeline_settings.prefix)
    settings = pipeline_settings.model_copy(update={"classifier": pipeline_settings.classifier.model_copy(
        update={"batch_size": 4, "batch_wait_ms": 0})})
    _fill_faces(redis_client, settings, tmp_path, frames=12)
    build_classifier(settings, redis_client).run(burst=True)
    newest: dict[tuple[str, int], EmotionEvent] = {}
    for event in read_events(redis_client, keys):
        newest[(event.camera_id, event.track_id)] = event
    assert newest
    for (camera, track), event in newest.items():
        stored = json.loads(redis_client.get(keys.track(camera, track)))
        assert stored["t"] == event.times.captured_ms
        assert stored["p"] == pytest.approx(event.smoothed, abs=1e-5)
        assert 0 < redis_client.ttl(keys.track(camera, track)) <= 60
