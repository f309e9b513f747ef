"""The table of streams and the retention step against a real Redis: an entry a declared group has not
acknowledged is never trimmed (the events stream while the recorder is down included), acknowledged
entries go once older than the rule's window, and the safety cap reports what it removed unread.

Entries are added with explicit ids in the past, so the rules' time windows are tested without waiting.
"""

from __future__ import annotations

import logging
import time

import pytest

from shared.retention import apply_retention, first_needed
from shared.schemas import EmotionEvent, decode, encode
from shared.streams import (CLASSIFIER_GROUP, CROPS_GROUP, EVENTS_RETENTION, LIVE_WINDOW_MS, RECORDER_GROUP,
                            Retention, StreamTable)
from tests.conftest import fill_faces, make_faces
from tests.proc_utils import copy_model, emotion_proc, service_env, stop_all, wait_for
from tests.messages import make_event

OLD_MS = int(time.time() * 1000) - 10 * LIVE_WINDOW_MS  # far outside every window


def add_old(client, stream: str, n: int, start_ms: int = OLD_MS) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, encode(make_event(event_id=f"cam0:s1:{i}:0", frame_id=i)), id=f"{start_ms + i}-0")
    return pipe.execute()


def read(client, stream: str, group: str, consumer: str, count: int) -> list[bytes]:
    reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


def test_the_table_declares_every_stream_and_its_rule(keys):
    table = StreamTable(keys)
    assert [s.key for s in table] == [keys.frames, keys.faces, keys.events]
    assert table.frames.xadd_options() == {"maxlen": table.frames.retention.cap, "approximate": True}
    assert table.faces.xadd_options() == table.events.xadd_options() == {}  # capped by the retention step
    assert [g.name for g in table.events.groups] == [RECORDER_GROUP]
    assert table.events.retention.keep_ms == LIVE_WINDOW_MS  # what the dashboard's live views read back
    dead = table.spec(keys.dead(keys.events))
    assert dead.retention.live and dead.xadd_options()["maxlen"] == dead.retention.cap
    assert table.spec("elsewhere:stream") is None


def test_events_stay_while_no_recorder_group_exists(redis_client, keys):
    """A recorder that never started has acknowledged nothing: nothing is trimmed by acknowledgement."""
    add_old(redis_client, keys.events, 50)
    report = apply_retention(redis_client, StreamTable(keys).events)
    assert report.acknowledged == 0 and redis_client.xlen(keys.events) == 50
    assert first_needed(redis_client, StreamTable(keys).events) == ((0, 0), RECORDER_GROUP)


def test_events_stay_until_the_recorder_acknowledges_them_even_while_it_is_down(redis_client, keys):
    """Guards the defect of issue 16 the other way round: trimming must never outrun the recorder."""
    spec = StreamTable(keys).events
    ids = add_old(redis_client, keys.events, 60)
    redis_client.xgroup_create(keys.events, RECORDER_GROUP, id="0")
    assert apply_retention(redis_client, spec).acknowledged == 0  # nothing read yet (lag)
    died_holding = read(redis_client, keys.events, RECORDER_GROUP, "recorder-killed", 20)  # never acknowledged
    assert apply_retention(redis_client, spec).acknowledged == 0
    survivor = read(redis_client, keys.events, RECORDER_GROUP, "recorder-2", 20)
    redis_client.xack(keys.events, RECORDER_GROUP, *survivor)
    report = apply_retention(redis_client, spec)
    assert report.acknowledged == 0 and report.held_by == RECORDER_GROUP  # the dead consumer's entries hold it
    assert redis_client.xlen(keys.events) == 60
    redis_client.xclaim(keys.events, RECORDER_GROUP, "recorder-2", min_idle_time=0, message_ids=died_holding)
    redis_client.xack(keys.events, RECORDER_GROUP, *died_holding)
    assert apply_retention(redis_client, spec).acknowledged == 40
    assert [e for e, _ in redis_client.xrange(keys.events)] == ids[40:]  # the 20 never read stay


def test_recorded_events_stay_for_the_live_window(redis_client, keys):
    spec = StreamTable(keys).events
    now = int(time.time() * 1000)
    add_old(redis_client, keys.events, 10, start_ms=now - 5_000)
    redis_client.xgroup_create(keys.events, RECORDER_GROUP, id="0")
    redis_client.xack(keys.events, RECORDER_GROUP, *read(redis_client, keys.events, RECORDER_GROUP, "r", 10))
    assert apply_retention(redis_client, spec, now_ms=now).acknowledged == 0  # recorded, but still live
    assert apply_retention(redis_client, spec, now_ms=now + LIVE_WINDOW_MS).acknowledged == 10


def test_an_optional_group_holds_the_stream_only_while_it_exists(redis_client, keys):
    spec = StreamTable(keys).faces
    fill_faces(redis_client, keys.faces, make_faces(10))
    redis_client.xgroup_create(keys.faces, CLASSIFIER_GROUP, id="0")
    redis_client.xgroup_create(keys.faces, CROPS_GROUP, id="0")
    redis_client.xack(keys.faces, CLASSIFIER_GROUP, *read(redis_client, keys.faces, CLASSIFIER_GROUP, "c", 10))
    later = int(time.time() * 1000) + spec.retention.keep_ms + 1000
    assert apply_retention(redis_client, spec, now_ms=later).acknowledged == 0  # the crop recorder has not read them
    redis_client.xgroup_destroy(keys.faces, CROPS_GROUP)  # keep_crops turned off
    assert apply_retention(redis_client, spec, now_ms=later).acknowledged == 10


def test_the_safety_cap_reports_entries_it_removes_unacknowledged(redis_client, keys, caplog):
    spec = StreamTable(keys, events=Retention(cap=200, after_ack=True, keep_ms=0)).events
    add_old(redis_client, keys.events, 1000)
    redis_client.xgroup_create(keys.events, RECORDER_GROUP, id="0")
    with caplog.at_level(logging.ERROR, logger="shared.retention"):
        report = apply_retention(redis_client, spec)
    assert report.capped >= 700 and report.capped_unacknowledged
    assert 200 <= redis_client.xlen(keys.events) <= 300  # approximate: whole stream nodes
    assert "event=stream_capped" in caplog.text and RECORDER_GROUP in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_events_are_not_trimmed_before_a_killed_recorder_is_back_and_has_stored_them(redis_client, redis_url, keys,
                                                                                     tmp_path, pipeline_settings):
    """The real pipeline's end: a recorder process is killed with -9 and stays down while a classifier,
    whose retention rule for events is made as eager as it can be (keep 0 ms), keeps publishing and
    trimming. Every event not yet stored must still be on the stream; once a recorder is back, every
    event is stored exactly once and the stream empties."""
    from services.classifier.run import build_worker
    import sqlalchemy as sa

    total = 600
    env = service_env(redis_url, keys.prefix, copy_model(tmp_path / "model"), tmp_path / "registry",
                      EMOTION_DATABASE_URL=pipeline_settings.database_url, EMOTION_WORKER__CLAIM_IDLE_MS="500",
                      EMOTION_WORKER__CLAIM_INTERVAL_S="0.2", EMOTION_WORKER__BATCH_SIZE="8")
    eager = StreamTable(keys, events=Retention(cap=EVENTS_RETENTION.cap, after_ack=True, keep_ms=0))
    classifier = build_worker(pipeline_settings, redis_client)
    classifier.streams = eager
    engine = sa.create_engine(pipeline_settings.database_url)

    def stored() -> set[str]:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(sa.text("SELECT event_id FROM events"))}

    def on_stream() -> set[str]:
        return {decode(EmotionEvent, fields).event_id for _, fields in redis_client.xrange(keys.events)}

    recorder = emotion_proc(["recorder"], env, tmp_path / "recorder-1.log")
    procs = [recorder]
    try:
        fill_faces(redis_client, keys.faces, make_faces(total // 2, session="a"))
        classifier.run(burst=True)
        wait_for(lambda: redis_client.hget(keys.stats("recorder"), "recorded"), 40, what="first rows recorded")
        recorder.kill9()
        fill_faces(redis_client, keys.faces, make_faces(total // 2, session="b"))
        classifier.run(burst=True)  # publishes the rest and trims as eagerly as its rule allows
        for _ in range(3):
            classifier.apply_retention()
        published = {f"cam0:{s}:{i}:0" for s in "ab" for i in range(total // 2)}
        assert published - stored() <= on_stream(), "an event was trimmed before the recorder stored it"
        assert redis_client.xlen(keys.events) > 0
        procs.append(emotion_proc(["recorder"], env, tmp_path / "recorder-2.log"))
        wait_for(lambda: len(stored()) == total, 60, interval=0.3, what="every event stored")
        classifier.apply_retention()  # the step its loop runs, now that everything is acknowledged
        assert redis_client.xlen(keys.events) == 0
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar() == total  # each once
    finally:
        stop_all(procs)
        engine.dispose()
