"""Key names and the table of streams (shared/streams.py): one hash tag per shard, so everything a
transaction writes is in one Redis Cluster slot, and shards spread over the slot space."""

from __future__ import annotations

import pytest
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from shared.streams import (CLASSIFIER_GROUP, DETECTOR_GROUP, Keys, StreamTable, camera_shard, shard_tag)


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 16])
def test_every_key_a_commit_writes_is_in_its_shards_slot(shards):
    """Guards the Redis Cluster rule the worker's MULTI/EXEC depends on: one slot per transaction."""
    for keys in Keys("dep", shards).all_shards():
        written_together = [keys.frames, keys.faces, keys.events, keys.dead(keys.frames), keys.dead(keys.faces),
                            keys.stats("detector"), keys.stats("classifier"), keys.track("cam0", 7),
                            keys.track_ids("cam0"), keys.lease("detector"), keys.lease_epoch("detector")]
        assert len({key_slot(k.encode()) for k in written_together}) == 1, written_together
        assert all(k.startswith(f"dep:{keys.tag}:") for k in written_together)


def test_model_pointers_share_a_slot_and_global_keys_carry_no_shard():
    keys = Keys("dep", 4)
    assert key_slot(keys.model_current.encode()) == key_slot(keys.model_history.encode())
    for name in (keys.layout, keys.cameras, keys.heartbeat("detector", "c1"), keys.training_queue):
        assert name.startswith("dep:") and "{" not in name


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7, 64])
def test_shard_k_lies_in_the_kth_share_of_the_slot_space(shards):
    """So that S shards on a cluster of S masters with even slot ranges land one per master."""
    for shard in range(shards):
        slot = key_slot(shard_tag(shard, shards).encode())
        assert shard * REDIS_CLUSTER_HASH_SLOTS // shards <= slot < (shard + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        assert shard_tag(shard, shards).split(".")[0] == str(shard)  # readable: the shard number comes first


def test_one_shard_names_its_keys_as_before_but_tagged():
    keys = Keys("emotion")
    assert (keys.frames, keys.faces, keys.events) == ("emotion:{0}:frames", "emotion:{0}:faces", "emotion:{0}:events")
    assert keys.all_shards() == [keys] and keys.shard_of("any camera") == 0


def test_cameras_map_to_shards_stably_and_spread():
    shards = [camera_shard(f"camera-{i}", 4) for i in range(400)]
    assert shards == [camera_shard(f"camera-{i}", 4) for i in range(400)]
    assert all(60 < shards.count(k) < 140 for k in range(4))  # 100 each, give or take


def test_a_shard_outside_the_layout_is_refused():
    with pytest.raises(ValueError):
        Keys("emotion", 2, 2)
    with pytest.raises(ValueError):
        Keys("emotion", 0)


def test_the_table_has_every_stream_in_every_shard_with_the_same_rule():
    keys = Keys("dep", 3)
    table = StreamTable(keys.of_shard(1))
    assert table.frames.key == keys.of_shard(1).frames and table.frames.shard == 1
    frames = table.sharded("frames")
    assert [s.key for s in frames] == [k.frames for k in keys.all_shards()]
    assert {s.retention for s in frames} == {table.frames.retention}
    assert table.spec(keys.of_shard(2).faces).required_groups == (CLASSIFIER_GROUP,)
    assert table.spec(keys.dead(keys.of_shard(2).frames)).name == "dead"
    assert table.spec("dep:elsewhere") is None
    assert len(list(table)) == 9 and table.spec(keys.frames).groups[0].name == DETECTOR_GROUP
