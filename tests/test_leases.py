"""Shard leases (shared/leases.py): the fair share every replica computes, the lease operations that
compare the owner first, the fence a stalled former owner cannot commit through, and the take-over
of what a dead owner left pending."""

from __future__ import annotations

import pytest

from shared.leases import FenceLost, ShardLeases, fair_share, take_over
from shared.settings import WorkerSettings
from shared.streams import Keys
from shared.worker import StreamWorker
from tests.conftest import fill_faces, make_faces
from tests.sharded_utils import Echo


@pytest.mark.parametrize("shards, held, expected", [
    (4, {"a": 0}, {"a": 4}),
    (4, {"a": 4, "b": 0}, {"a": 2, "b": 2}),
    (2, {"a": 1, "b": 1, "c": 0}, {"a": 1, "b": 1, "c": 0}),  # a spare stands by
    (3, {"a": 1, "b": 2}, {"a": 1, "b": 2}),  # the one holding more keeps the extra: nothing moves
    (5, {"a": 0, "b": 0}, {"a": 3, "b": 2}),  # ties by name
])
def test_fair_share_splits_evenly_and_moves_as_little_as_possible(shards, held, expected):
    assert {name: fair_share(shards, name, held) for name in held} == expected
    assert sum(expected.values()) == shards


def test_a_lease_is_renewed_and_released_only_by_its_owner(redis_client):
    keys = Keys("t", 2)
    a, b = (ShardLeases(redis_client, keys, "detector", name, ttl_ms=60_000) for name in ("a", "b"))
    assert a.acquire(1) and not b.acquire(1)
    assert a.holders() == {0: None, 1: "a"}
    assert not b.renew(1) and not b.release(1) and a.holders()[1] == "a"
    assert a.renew(1) and a.release(1) and a.holders()[1] is None
    assert b.acquire(1) and b.epochs[1] == a.epochs[1] + 1  # every acquisition moves the fence


def test_a_former_owner_commits_nothing_once_another_replica_holds_the_lease(redis_client):
    """Guards against two replicas publishing faces of the same frames: the fence (a WATCHed counter
    that every acquisition increments) fails the stalled owner's commit, which leaves its entries
    pending for the new owner."""
    keys = Keys("t", 1)
    fill_faces(redis_client, keys.faces, make_faces(6))
    old = ShardLeases(redis_client, keys, "echo", "old", ttl_ms=60_000)
    assert old.acquire(0)
    worker = StreamWorker(redis_client, Echo(keys.events), service="echo", stream=keys.faces, group="g", keys=keys,
                          settings=WorkerSettings(batch_size=2, block_ms=10), consumer="old", fence=old.fence(0))
    worker.run(max_entries=2)
    assert redis_client.xlen(keys.events) == 2  # committed while the lease was its own
    redis_client.delete(old.key(0))  # it stalled past the TTL ...
    assert ShardLeases(redis_client, keys, "echo", "new", ttl_ms=60_000).acquire(0)  # ... and another took over
    worker.run(burst=True)  # reads a batch, cannot commit it, stops
    assert redis_client.xlen(keys.events) == 2
    assert redis_client.xpending(keys.faces, "g")["pending"] == 2  # still pending: the new owner takes them
    with pytest.raises(FenceLost):
        worker._commit([], [], [])


def test_take_over_claims_every_pending_entry_and_forgets_the_dead_consumers(redis_client):
    keys = Keys("t")
    fill_faces(redis_client, keys.faces, make_faces(7))
    redis_client.xgroup_create(keys.faces, "g", id="0")
    redis_client.xreadgroup("g", "dead-1", {keys.faces: ">"}, count=3)
    redis_client.xreadgroup("g", "dead-2", {keys.faces: ">"}, count=2)
    assert take_over(redis_client, keys.faces, "g", "me") == 5
    consumers = {c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(keys.faces, "g")}
    assert consumers == {"me": 5}
    rows = redis_client.xpending_range(keys.faces, "g", min="-", max="+", count=10)
    assert [r["times_delivered"] for r in rows] == [1] * 5  # moving them counted no delivery
    assert take_over(redis_client, keys.faces, "g", "me") == 0
