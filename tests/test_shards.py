"""Reading a sharded deployment as one (shared/shards.py): counters, backlogs and entries over every
shard, and the layout check that keeps producers and consumers on the same number of shards."""

from __future__ import annotations

import pytest

from shared.shards import (LayoutMismatch, advance, backlog, claim_layout, entries_after, entries_since,
                           newest_cursors, service_stats, sharded_group_state, stats_of, stream_lengths)
from shared.streams import DETECTOR_GROUP, Keys


@pytest.fixture
def keys3() -> Keys:
    return Keys("t", 3)


def test_counters_are_summed_over_every_shard(redis_client, keys3):
    for shard, keys in enumerate(keys3.all_shards()):
        redis_client.hincrby(keys.stats("detector"), "entries_in", 10 + shard)
    redis_client.hincrby(keys3.of_shard(2).stats("capture"), "shed", 4)
    assert service_stats(redis_client, keys3, "detector") == {"entries_in": 33}
    assert stats_of(redis_client, keys3, ["capture", "recorder"]) == {"capture": {"shed": 4}, "recorder": {}}


def test_backlog_and_group_state_cover_every_shard(redis_client, keys3):
    for shard, keys in enumerate(keys3.all_shards()):
        for i in range(shard + 1):
            redis_client.xadd(keys.frames, {b"n": b"%d" % i})
    assert backlog(redis_client, keys3, "frames", DETECTOR_GROUP) == 6  # no group yet: everything to do
    first = keys3.of_shard(0).frames
    redis_client.xgroup_create(first, DETECTOR_GROUP, id="0")
    redis_client.xreadgroup(DETECTOR_GROUP, "c1", {first: ">"})
    state = sharded_group_state(redis_client, keys3, "frames", DETECTOR_GROUP)
    assert state.exists and state.pending == 1 and state.lag == 5 and state.consumers == 1
    assert stream_lengths(redis_client, keys3, "frames") == (6, 0)


def test_entries_of_every_shard_and_a_reader_that_follows_them(redis_client, keys3):
    for shard, keys in enumerate(keys3.all_shards()):
        redis_client.xadd(keys.events, {b"shard": str(shard).encode()})
    assert sorted(e.fields[b"shard"] for e in entries_since(redis_client, keys3, "events")) == [b"0", b"1", b"2"]
    cursors: dict = {}
    first = entries_after(redis_client, keys3, "events", cursors)
    advance(cursors, first)
    assert len(first) == 3 and entries_after(redis_client, keys3, "events", cursors) == []
    redis_client.xadd(keys3.of_shard(1).events, {b"shard": b"1"})
    new = entries_after(redis_client, keys3, "events", cursors)
    assert [(e.shard, e.fields[b"shard"]) for e in new] == [(1, b"1")]
    live = newest_cursors(redis_client, keys3, "events")  # a feed that starts now sees only what comes next
    assert set(live) == {0, 1, 2} and entries_after(redis_client, keys3, "events", live) == []
    redis_client.xadd(keys3.of_shard(2).events, {b"shard": b"2"})
    assert [e.shard for e in entries_after(redis_client, keys3, "events", live)] == [2]


def test_the_layout_is_recorded_then_enforced_while_the_old_one_has_work(redis_client):
    claim_layout(redis_client, Keys("t", 2))
    assert redis_client.get(Keys("t").layout) == b"2"
    claim_layout(redis_client, Keys("t", 2))  # the same count: fine
    redis_client.xadd(Keys("t", 2).of_shard(1).frames, {b"n": b"1"})  # not processed by the detector yet
    with pytest.raises(LayoutMismatch, match="EMOTION_SHARDS=3"):
        claim_layout(redis_client, Keys("t", 3))
    redis_client.delete(Keys("t", 2).of_shard(1).frames)  # drained (here: gone)
    claim_layout(redis_client, Keys("t", 3))
    assert redis_client.get(Keys("t").layout) == b"3"
