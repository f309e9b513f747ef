"""group_state: the one reading of a consumer group's lag and pending entries."""

from __future__ import annotations

from shared.stream_state import format_id, group_state, parse_id


def test_a_missing_stream_has_nothing_to_do_and_a_missing_group_everything(redis_client, keys):
    assert group_state(redis_client, keys.frames, "detector").backlog == 0
    for i in range(5):
        redis_client.xadd(keys.frames, {b"n": str(i).encode()})
    state = group_state(redis_client, keys.frames, "detector")
    assert not state.exists and state.lag == 5 and state.backlog == 5


def test_lag_and_pending_of_a_group(redis_client, keys):
    for i in range(5):
        redis_client.xadd(keys.frames, {b"n": str(i).encode()})
    redis_client.xgroup_create(keys.frames, "detector", id="0")
    reply = redis_client.xreadgroup("detector", "c1", {keys.frames: ">"}, count=3)
    state = group_state(redis_client, keys.frames, "detector")
    assert state.exists and (state.lag, state.pending, state.consumers) == (2, 3, 1)
    assert state.last_delivered_id == reply[0][1][-1][0].decode()
    redis_client.xack(keys.frames, "detector", *[i for i, _ in reply[0][1]])
    assert group_state(redis_client, keys.frames, "detector").backlog == 2


def test_entry_ids_compare_in_stream_order():
    assert parse_id(b"1700000000000-12") == (1700000000000, 12) and parse_id("5") == (5, 0)
    assert parse_id("9-1") < parse_id("10-0") and format_id((10, 0)) == "10-0"
