"""Leases: which replica of a role (the detector) owns each shard.

A lease is a string key in the shard's own hash tag (`Keys.lease`) holding the owner's consumer
name, set with NX and a TTL (PX) and renewed every second while the owner lives: a replica killed
with -9 stops renewing and loses its shards `ttl_ms` later. Renewal and release compare the owner
first (a small Lua script on that one key, valid on Redis Cluster), so a replica never extends or
deletes a lease that expired and was taken by another.

Each acquisition also increments the shard's fencing counter (`Keys.lease_epoch`, same hash tag, in
the same script), and the worker loop commits a leased shard's batch under WATCH of that counter,
after checking it still holds the value its owner got (`Fence`): a replica that stalled past its
lease, and whose shard another replica took, cannot commit a batch the new owner processes too. The
counter, not the lease, is watched, because renewing the lease (PEXPIRE) counts as a change to WATCH.

`fair_share` is the rule every replica applies to the same facts (the live replicas, who holds
what) to decide how many shards it should hold: the counts differ by at most one, and replicas
that already hold more keep the larger counts, so a new or dead replica moves as few shards as
possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from shared.redis_conn import Client
from shared.stream_state import text
from shared.streams import Keys

log = logging.getLogger(__name__)

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class FenceLost(RuntimeError):
    """The lease a worker commits under is no longer ours: stop working on that shard."""


@dataclass(frozen=True)
class Fence:
    """Commit only while `key` holds `token` (the worker loop WATCHes it around its MULTI/EXEC): the
    fencing counter of a shard, and the value it had when this replica acquired the shard's lease."""

    key: str
    token: str


def fair_share(shards: int, me: str, held: dict[str, int]) -> int:
    """How many of `shards` the replica `me` should hold; `held` maps every live replica (me
    included) to how many it holds now. Ties go by name, so every replica computes the same split."""
    order = sorted(held, key=lambda name: (-held[name], name))
    base, extra = divmod(shards, len(order))
    return base + (1 if order.index(me) < extra else 0)


class ShardLeases:
    def __init__(self, client: Client, keys: Keys, role: str, token: str, ttl_ms: int) -> None:
        self.client, self.keys, self.role, self.token, self.ttl_ms = client, keys, role, token, ttl_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.epochs: dict[int, int] = {}  # the fencing counter's value of each lease we acquired

    def key(self, shard: int) -> str:
        return self.keys.of_shard(shard).lease(self.role)

    def fence(self, shard: int) -> Fence:
        return Fence(self.keys.of_shard(shard).lease_epoch(self.role), str(self.epochs[shard]))

    def holders(self) -> dict[int, str | None]:
        """The owner of every shard's lease (None: free)."""
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.get(self.key(shard))
        return {shard: value.decode() if value else None for shard, value in enumerate(pipe.execute())}

    def acquire(self, shard: int) -> bool:
        shard_keys = self.keys.of_shard(shard)
        epoch = self._acquire(keys=[shard_keys.lease(self.role), shard_keys.lease_epoch(self.role)],
                              args=[self.token, self.ttl_ms])
        if epoch is None:
            return False
        self.epochs[shard] = int(epoch)
        return True

    def renew(self, shard: int) -> bool:
        return bool(self._renew(keys=[self.key(shard)], args=[self.token, self.ttl_ms]))

    def release(self, shard: int) -> bool:
        return bool(self._release(keys=[self.key(shard)], args=[self.token]))


def take_over(client: Client, stream: str, group: str, consumer: str) -> int:
    """Make every entry pending in `group` of a shard we now own ours, and forget the consumers that
    held them; returns the number of entries taken.

    Called once a lease is acquired, before the shard's worker starts: that worker then processes
    them first (its own pending entries), counting their deliveries as any reclaim does. No idle
    time is waited for: the lease says that nobody else works on this shard (and the fence stops a
    stalled former owner from committing).
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    taken = 0
    start = "-"
    while True:
        rows = client.xpending_range(stream, group, min=start, max="+", count=500)
        theirs = [row["message_id"] for row in rows if text(row["consumer"]) != consumer]
        if theirs:
            # JUSTID: ownership moves without counting a delivery (the worker's read counts one)
            client.xclaim(stream, group, consumer, min_idle_time=0, message_ids=theirs, justid=True)
            taken += len(theirs)
        if len(rows) < 500:
            break
        start = "(" + text(rows[-1]["message_id"])
    for info in client.xinfo_consumers(stream, group):
        name = text(info["name"])
        if name != consumer and not int(info.get("pending") or 0):
            client.xgroup_delconsumer(stream, group, name)  # dead replicas' names must not pile up
    return taken
