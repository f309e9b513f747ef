"""A sharded deployment read as one: a service's counters summed over the shards, a group's state over
the shards, a stream's entries from every shard; and the layout check every service makes at start.

Everything that shows or checks the whole pipeline (`emotion up`'s drain and summary, the dashboard,
the benches, the tests) reads through these, so none of them can forget a shard. Each helper sends
one request per shard (a pipeline where it can): a read never spans two shards' keys, which Redis
Cluster would refuse.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator

import redis

from shared.errors import StartupError
from shared.redis_conn import Client, is_cluster
from shared.schemas import Fields
from shared.stream_state import GroupState, format_id, group_state, parse_id, text
from shared.streams import Keys, StreamTable

log = logging.getLogger(__name__)

PAGE = 1000
POLL_S = 0.05  # how often a live reader of a sharded stream on a cluster looks for new entries


# --- counters --------------------------------------------------------------------------------------

def stats_of(client: Client, keys: Keys, services: tuple[str, ...] | list[str]) -> dict[str, dict[str, int]]:
    """Each service's counters (`Keys.stats`) summed over every shard."""
    pipe = client.pipeline(transaction=False)
    for service in services:
        for shard in keys.all_shards():
            pipe.hgetall(shard.stats(service))
    replies = iter(pipe.execute())
    totals: dict[str, dict[str, int]] = {}
    for service in services:
        counters: dict[str, int] = {}
        for _shard in range(keys.shards):
            for name, value in next(replies).items():
                counters[text(name)] = counters.get(text(name), 0) + int(value)
        totals[service] = counters
    return totals


def service_stats(client: Client, keys: Keys, service: str) -> dict[str, int]:
    return stats_of(client, keys, [service])[service]


# --- streams and groups ------------------------------------------------------------------------------

def stream_lengths(client: Client, keys: Keys, name: str) -> tuple[int, int]:
    """(entries, dead letters) of one stream summed over the shards."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        stream = shard.stream(name)
        pipe.xlen(stream)
        pipe.xlen(keys.dead(stream))
    replies = pipe.execute()
    return sum(replies[0::2]), sum(replies[1::2])


def sharded_group_state(client: Client, keys: Keys, name: str, group: str) -> GroupState:
    """One group's state over every shard of stream `name`: lag and pending summed (lag unknown if
    it is unknown in any shard), `exists` once it exists in some shard, `consumers` the most any
    shard's group has (a replica reading every shard is a consumer in each)."""
    states = [group_state(client, shard.stream(name), group) for shard in keys.all_shards()]
    lags = [s.lag for s in states]
    return GroupState(exists=any(s.exists for s in states), lag=None if None in lags else sum(lags),
                      pending=sum(s.pending for s in states), consumers=max(s.consumers for s in states),
                      last_delivered_id=max((s.last_delivered_id for s in states), key=parse_id))


def backlog(client: Client, keys: Keys, name: str, group: str) -> int:
    """Entries of stream `name` that `group` has not acknowledged yet, over every shard."""
    return sum(group_state(client, shard.stream(name), group).backlog for shard in keys.all_shards())


@dataclass(frozen=True)
class ShardEntry:
    shard: int
    entry_id: bytes
    fields: Fields


def entries_since(client: Client, keys: Keys, name: str, since_ms: int = 0, page: int = PAGE
                  ) -> Iterator[ShardEntry]:
    """Every entry of stream `name` from `since_ms` on, shard after shard (each in stream order)."""
    for shard in keys.all_shards():
        stream = shard.stream(name)
        start = f"{since_ms}-0"
        while True:
            entries = client.xrange(stream, min=start, count=page)
            for entry_id, fields in entries:
                yield ShardEntry(shard.shard, entry_id, fields)
            if len(entries) < page:
                break
            start = "(" + text(entries[-1][0])


def entries_after(client: Client, keys: Keys, name: str, cursors: dict[int, tuple[int, int]], count: int = PAGE
                  ) -> list[ShardEntry]:
    """What is new in every shard of stream `name` after each shard's cursor (an entry id; a shard
    without a cursor is read from its start), at most `count` per shard, in one round trip per
    shard. Advance the cursors with `advance`. This is how a live reader (the dashboard's event
    window, a feed) follows a sharded stream without blocking on one shard."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        cursor = cursors.get(shard.shard)
        pipe.xrange(shard.stream(name), min="(" + format_id(cursor) if cursor else "-", max="+", count=count)
    return [ShardEntry(shard, entry_id, fields) for shard, entries in enumerate(pipe.execute())
            for entry_id, fields in entries]


def newest_cursors(client: Client, keys: Keys, name: str) -> dict[int, tuple[int, int]]:
    """Each shard's newest entry id: cursors from which `entries_after` returns only what comes next
    (where a live feed starts). A shard with no entries has no cursor (it is read from its start)."""
    pipe = client.pipeline(transaction=False)
    for shard in keys.all_shards():
        pipe.xrevrange(shard.stream(name), count=1)
    return {shard: parse_id(newest[0][0]) for shard, newest in enumerate(pipe.execute()) if newest}


def read_after(client: Client, keys: Keys, name: str, cursors: dict[int, tuple[int, int]], count: int,
               block_ms: int) -> list[ShardEntry]:
    """`entries_after`, waiting up to `block_ms` for something new: one XREAD BLOCK over every shard's
    stream on a single node (or a cluster with one shard); on a cluster, where one read cannot span
    slots, non-blocking reads of every shard every POLL_S until something comes."""
    if keys.shards == 1 or not is_cluster(client):
        streams = {shard.stream(name): format_id(cursors.get(shard.shard, (0, 0))) for shard in keys.all_shards()}
        by_key = {shard.stream(name): shard.shard for shard in keys.all_shards()}
        reply = client.xread(streams, count=count, block=max(1, block_ms))
        return [ShardEntry(by_key[text(stream)], entry_id, fields) for stream, entries in reply or []
                for entry_id, fields in entries]
    deadline = time.monotonic() + block_ms / 1000
    while True:
        found = entries_after(client, keys, name, cursors, count)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def format_position(cursors: dict[int, tuple[int, int]], shards: int) -> str:
    """A reader's place in every shard as one token (an SSE `id:`): the entry id with one shard, else
    one id per shard joined by `_` (`1767225600123-0_1767225600120-4`)."""
    return "_".join(format_id(cursors.get(shard, (0, 0))) for shard in range(shards))


def parse_position(position: str, shards: int) -> dict[int, tuple[int, int]]:
    """The cursors of `format_position`; a single entry id stands for every shard (ids are times, so
    that resumes after the same moment). ValueError for anything else."""
    parts = position.split("_")
    if len(parts) == 1:
        parts = parts * shards
    if len(parts) != shards:
        raise ValueError(f"a position of {len(parts)} shards, but the streams have {shards}")
    return {shard: parse_id(part) for shard, part in enumerate(parts)}


def advance(cursors: dict[int, tuple[int, int]], entries: list[ShardEntry]) -> None:
    for entry in entries:
        position = parse_id(entry.entry_id)
        if position > cursors.get(entry.shard, (0, 0)):
            cursors[entry.shard] = position


# --- the layout ---------------------------------------------------------------------------------------

class LayoutMismatch(StartupError):
    """The deployment's streams are laid out in another number of shards than this service's setting."""


def claim_layout(client: Client, keys: Keys) -> None:
    """Check that the deployment uses `keys.shards` shards, recording it when nobody has yet.

    Every producer and consumer must agree: a capture writing to shard 3 of 4 while the detectors
    think there are 2 would publish frames that nobody reads. A different recorded count is
    replaced only when the old layout's streams hold nothing a group still has to process (the
    pipeline was stopped and drained); otherwise the service refuses to start, naming the stream.
    """
    recorded = client.get(keys.layout)
    if recorded is None:
        if client.set(keys.layout, keys.shards, nx=True):
            return
        recorded = client.get(keys.layout)
    old = int(recorded)
    if old == keys.shards:
        return
    old_keys = Keys(keys.prefix, old)
    for spec in StreamTable(old_keys):
        for group in spec.required_groups:
            try:
                left = group_state(client, spec.key, group).backlog
            except redis.ResponseError:
                continue
            if left:
                raise LayoutMismatch(
                    f"this deployment's streams are laid out in {old} shard(s) ({keys.layout}) and {spec.key} still "
                    f"has {left} entries for group {group}, but EMOTION_SHARDS={keys.shards} here: set the same "
                    f"EMOTION_SHARDS on every service (to change it, let the pipeline drain first)")
    client.set(keys.layout, keys.shards)
    log.warning("event=layout_changed prefix=%s shards_before=%d shards=%d", keys.prefix, old, keys.shards)
