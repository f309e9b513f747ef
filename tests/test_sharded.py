"""A replica serving several shards (shared/sharded.py): one worker per shard, one heartbeat; and the
detector's way, shards owned by leases that move to a standby replica when their owner goes.

Real Redis, real threads; the processors are small. The same with real detector processes and a
kill -9 is tests/test_reliability.py; on a real Redis Cluster, tests/test_cluster.py.
"""

from __future__ import annotations

import json

from shared.leases import ShardLeases
from shared.sharded import ShardedReplica
from shared.streams import Keys
from tests.conftest import fill_faces, make_faces
from tests.proc_utils import wait_for
from tests.sharded_utils import SETTINGS, echo_worker, holders, start


def beat(client, keys: Keys, replica: ShardedReplica) -> dict:
    raw = client.get(keys.heartbeat(replica.service, replica.consumer))
    return json.loads(raw) if raw else {}


def test_a_replica_serves_every_shard_and_beats_once_for_all(redis_client):
    keys = Keys("t", 3)
    for shard in keys.all_shards():
        fill_faces(redis_client, shard.faces, make_faces(5 + shard.shard, camera=f"cam{shard.shard}"))
    replica = ShardedReplica(redis_client, keys, service="echo", make_worker=echo_worker(redis_client, keys),
                             settings=SETTINGS, consumer="r1")
    thread = start(replica)
    try:
        wait_for(lambda: [redis_client.xlen(k.events) for k in keys.all_shards()] == [5, 6, 7], 20, what="events")
        wait_for(lambda: beat(redis_client, keys, replica).get("entries") == 18, 10, what="a heartbeat of all shards")
        assert beat(redis_client, keys, replica)["shards"] == [0, 1, 2]
        assert len(redis_client.keys(keys.heartbeat_pattern("echo"))) == 1
    finally:
        replica.stop_event.set()
        thread.join(20)
    assert replica.code == 0 and not redis_client.exists(keys.heartbeat("echo", "r1"))
    for shard in keys.all_shards():
        assert int(redis_client.hget(shard.stats("echo"), "entries_in")) == 5 + shard.shard


def test_a_worker_that_fails_stops_the_replica_with_an_error(redis_client):
    keys = Keys("t", 2)
    redis_client.set(keys.of_shard(1).faces, "not a stream")  # XREADGROUP on it is a WRONGTYPE error
    replica = ShardedReplica(redis_client, keys, service="echo", make_worker=echo_worker(redis_client, keys),
                             settings=SETTINGS, consumer="r1")
    assert replica.run() == 1 and "WRONGTYPE" in str(replica.failed)


def leased(client, keys: Keys, name: str, ttl_ms: int = 1500) -> ShardedReplica:
    return ShardedReplica(client, keys, service="echo", make_worker=echo_worker(client, keys), settings=SETTINGS,
                          consumer=name, leases_ttl_ms=ttl_ms)


def test_leased_replicas_split_the_shards_and_a_standby_takes_over(redis_client):
    keys = Keys("t", 2)
    replicas = {name: leased(redis_client, keys, name) for name in ("a", "b", "c")}
    threads = {name: start(r) for name, r in replicas.items()}
    try:
        wait_for(lambda: sorted(filter(None, holders(redis_client, keys).values())) in (["a", "b"], ["a", "c"],
                                                                                      ["b", "c"]),
                 20, what="two replicas holding one shard each")
        spare = ({"a", "b", "c"} - set(holders(redis_client, keys).values())).pop()
        wait_for(lambda: beat(redis_client, keys, replicas[spare]).get("standby") is True, 5, what="a standby")
        owner = holders(redis_client, keys)[0]
        replicas[owner].stop_event.set()  # a warm stop hands the lease back at once
        threads[owner].join(20)
        wait_for(lambda: holders(redis_client, keys)[0] not in (None, owner), 10, what="shard 0 taken over")
        fill_faces(redis_client, keys.faces, make_faces(9))
        wait_for(lambda: redis_client.xlen(keys.events) == 9, 20, what="shard 0 served by its new owner")
    finally:
        for replica in replicas.values():
            replica.stop_event.set()
        for thread in threads.values():
            thread.join(20)
    assert all(r.code == 0 for r in replicas.values())
    assert holders(redis_client, keys) == {0: None, 1: None}


def test_an_expired_lease_is_taken_with_what_its_dead_owner_left_pending(redis_client):
    """Guards against frames stuck at a replica killed with -9: the new owner takes them over (no idle
    wait, the lease says nobody else works on the shard), processes each once, and forgets the dead
    consumer."""
    keys = Keys("t", 1)
    fill_faces(redis_client, keys.faces, make_faces(10))
    redis_client.xgroup_create(keys.faces, "echo", id="0")
    redis_client.xreadgroup("echo", "ghost", {keys.faces: ">"}, count=4)  # delivered, never acknowledged
    assert ShardLeases(redis_client, keys, "echo", "ghost", ttl_ms=800).acquire(0)  # and never renewed
    replica = leased(redis_client, keys, "heir")
    thread = start(replica)
    try:
        wait_for(lambda: redis_client.xlen(keys.events) == 10, 20, what="all ten faces, the ghost's four included")
        ids = [fields[b"id"] for _, fields in redis_client.xrange(keys.events)]
        assert len(set(ids)) == 10
        consumers = [c["name"].decode() for c in redis_client.xinfo_consumers(keys.faces, "echo")]
        assert consumers == ["heir"]
    finally:
        replica.stop_event.set()
        thread.join(20)
