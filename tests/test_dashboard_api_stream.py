"""The live feed (GET /api/v1/events/stream): events published with a real XADD reach a real HTTP
client reading from the dashboard as it runs in production (`emotion dashboard`: waitress), with the
camera filter, Last-Event-ID resumption, auth, the bound on open feeds, release on client disconnect,
the maximum duration, and an error event when Redis goes away."""

from __future__ import annotations

import json
import time

import pytest
import redis
import requests

from services.dashboard.api.stream import StreamSlots, event_feed, start_id
from shared.schemas import encode
from shared.streams import Keys
from tests.test_dashboard_api_support import start_dashboard
from tests.test_dashboard_support import emotion_event, served_model_dir  # noqa: F401

TOKEN = "feed-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def parse(text: str) -> list[dict]:
    """SSE text as messages: {"event", "id", "data", "comments", "retry"} per blank-line-ended block."""
    messages = []
    for block in text.split("\n\n"):
        if not block:
            continue
        message: dict = {"comments": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                message["comments"].append(line[1:].strip())
            else:
                name, _, value = line.partition(": ")
                message[name] = value
        messages.append(message)
    return messages


class Reader:
    """Messages from a streaming HTTP response, each within a deadline (heartbeats keep it reading)."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self._chunks = response.iter_content(chunk_size=None, decode_unicode=True)
        self._buffer = ""

    def next(self, timeout_s: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while "\n\n" not in self._buffer:
            assert time.monotonic() < deadline, f"no complete message within {timeout_s} s: {self._buffer!r}"
            self._buffer += next(self._chunks)
        block, _, self._buffer = self._buffer.partition("\n\n")
        return parse(block + "\n\n")[0]

    def next_event(self, name: str, timeout_s: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if message.get("event") == name:
                return message


def _open(base: str, headers: dict | None = None, **params) -> requests.Response:
    return requests.get(f"{base}/api/v1/events/stream", params=params, headers={**AUTH, **(headers or {})},
                        stream=True, timeout=10)


# --- the feed itself, on a real Redis ------------------------------------------------------------

def test_feed_filters_skips_bad_entries_beats_and_ends(redis_client, keys):
    after = start_id(redis_client, keys)
    assert after == "0-0"  # no stream yet: everything added is new
    other = redis_client.xadd(keys.events, encode(emotion_event("cam1", 1))).decode()
    wanted = redis_client.xadd(keys.events, encode(emotion_event("cam0", 2, label="sad"))).decode()
    junk = redis_client.xadd(keys.events, {"meta": b'{"camera_id": "cam0"'}).decode()
    messages = parse("".join(event_feed(redis_client, keys, after=after, camera="cam0", max_s=0.8,
                                        heartbeat_s=0.2)))
    assert messages[0]["retry"] == "2000"
    emotions = [m for m in messages if m.get("event") == "emotion"]
    assert [m["id"] for m in emotions] == [wanted]  # cam1's entry filtered out
    event = json.loads(emotions[0]["data"])
    assert event["camera_id"] == "cam0" and event["label"] == "sad" and event["recorded"] is None
    assert any(c.startswith(f"skipped entry {junk}: invalid EmotionEvent") for m in messages for c in m["comments"])
    assert any("heartbeat" in m["comments"] for m in messages)  # idle after the three entries
    end = messages[-1]
    assert end["event"] == "end" and end["id"] == junk  # resuming there rescans nothing
    assert json.loads(end["data"])["last_event_id"] == junk
    assert other < wanted < junk


def test_feed_resumes_after_an_id_and_reports_a_redis_outage(redis_client, keys):
    first = redis_client.xadd(keys.events, encode(emotion_event("cam0", 1))).decode()
    second = redis_client.xadd(keys.events, encode(emotion_event("cam0", 2))).decode()
    resumed = parse("".join(event_feed(redis_client, keys, after=first, camera=None, max_s=0.3, heartbeat_s=1)))
    assert [m["id"] for m in resumed if m.get("event") == "emotion"] == [second]

    gone = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    messages = parse("".join(event_feed(gone, keys, after=second, camera=None, max_s=5, heartbeat_s=1,
                                        redis_url="redis://127.0.0.1:1/0")))
    assert messages[-1]["event"] == "error" and messages[-1]["id"] == second
    assert json.loads(messages[-1]["data"])["error"].startswith("Redis at redis://127.0.0.1:1/0 is not answering")


def test_a_feed_follows_every_shard_and_its_ids_name_a_position_in_each(redis_client):
    """With EMOTION_SHARDS=2 the events of both shards reach the feed, and an SSE id is one entry id per
    shard, so resuming from it misses nothing in either."""
    keys = Keys("t", 2)
    start = start_id(redis_client, keys)
    assert start == "0-0_0-0"
    one = redis_client.xadd(keys.of_shard(1).events, encode(emotion_event("cam1", 1))).decode()
    zero = redis_client.xadd(keys.of_shard(0).events, encode(emotion_event("cam0", 1))).decode()
    messages = parse("".join(event_feed(redis_client, keys, after=start, camera=None, max_s=0.5, heartbeat_s=1)))
    emotions = [m for m in messages if m.get("event") == "emotion"]
    assert sorted(json.loads(m["data"])["camera_id"] for m in emotions) == ["cam0", "cam1"]
    end = messages[-1]["id"]
    assert end == f"{zero}_{one}"
    later = redis_client.xadd(keys.of_shard(1).events, encode(emotion_event("cam1", 2))).decode()
    resumed = parse("".join(event_feed(redis_client, keys, after=end, camera=None, max_s=0.3, heartbeat_s=1)))
    assert [m["id"] for m in resumed if m.get("event") == "emotion"] == [f"{zero}_{later}"]


def test_slots_are_bounded_and_release_once():
    slots = StreamSlots(2)
    first, second = slots.acquire(), slots.acquire()
    assert first and second and slots.acquire() is None and slots.open == 2
    first()
    first()  # a second release (generator end, then the server's close) frees nothing more
    assert slots.open == 1
    assert slots.acquire() is not None and slots.open == 2


# --- through the production server ---------------------------------------------------------------

@pytest.fixture
def feed_settings(settings, served_model_dir):  # noqa: F811
    return settings.model_copy(update={"default_model_dir": served_model_dir})


@pytest.mark.slow
def test_published_event_reaches_an_http_client(feed_settings, redis_client, keys, tmp_path):
    """XADD on the events stream -> the feed of a waitress-served dashboard -> requests, filtered by
    camera; then a reconnect with Last-Event-ID gets what was published while disconnected."""
    proc, base = start_dashboard(feed_settings, tmp_path, auth_token=TOKEN, stream_heartbeat_s=0.5)
    try:
        assert requests.get(f"{base}/api/v1/events/stream", timeout=10).status_code == 401
        response = _open(base, camera="cam0")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        feed = Reader(response)
        assert feed.next()["retry"] == "2000"  # the feed has resolved its start: publish now
        redis_client.xadd(keys.events, encode(emotion_event("cam1", 1)))
        entry = redis_client.xadd(keys.events, encode(emotion_event("cam0", 2, label="surprise"))).decode()
        message = feed.next_event("emotion")
        assert message["id"] == entry
        event = json.loads(message["data"])
        assert (event["camera_id"], event["frame_id"], event["label"]) == ("cam0", 2, "surprise")
        assert set(event["probabilities"]) >= {"happy", "neutral"}
        response.close()

        missed = [redis_client.xadd(keys.events, encode(emotion_event("cam0", 3 + i))).decode() for i in range(2)]
        resumed = Reader(_open(base, headers={"Last-Event-ID": entry}))
        assert [resumed.next_event("emotion")["id"] for _ in missed] == missed
        resumed.response.close()
        bad = _open(base, headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["error"]
    finally:
        assert proc.alive(), proc.output()[-3000:]
        proc.stop()


@pytest.mark.slow
def test_feeds_are_bounded_freed_on_disconnect_and_end(feed_settings, redis_client, tmp_path):
    """With one feed allowed: a second is a 503 JSON with Retry-After; closing the first frees its
    thread within a few heartbeats (waitress notices the write to a gone client); a feed ends by
    itself after stream_max_s with an `end` event."""
    proc, base = start_dashboard(feed_settings, tmp_path, auth_token=TOKEN, max_streams=1, stream_heartbeat_s=0.3,
                                 stream_max_s=4)
    try:
        first = _open(base)
        Reader(first).next()
        busy = _open(base)
        assert busy.status_code == 503 and busy.headers["Retry-After"] and "live feeds" in busy.json()["error"]
        first.close()  # the client goes away without a word
        closed_at, second = time.monotonic(), None
        while time.monotonic() - closed_at < 10:
            second = _open(base)
            if second.status_code == 200:
                break
            second.close()
            time.sleep(0.2)
        assert second is not None and second.status_code == 200, "the closed feed's slot was never freed"
        freed_s = time.monotonic() - closed_at
        started = time.monotonic()
        end = Reader(second).next_event("end", timeout_s=15)
        assert 3 <= time.monotonic() - started <= 10
        assert json.loads(end["data"])["last_event_id"] == end["id"]
        assert second.raw.read() == b""  # and the response is over
        assert freed_s < 5, f"slot freed only {freed_s:.1f} s after the client left"
    finally:
        assert proc.alive(), proc.output()[-3000:]
        proc.stop()
