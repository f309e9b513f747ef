"""How far one consumer group is behind on its stream: the one reading of XINFO GROUPS that capture
(shedding), `emotion up` (draining), the dashboard (health) and the benches (done yet?) share; and
stream entry ids as comparable values."""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class GroupState:
    exists: bool
    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    pending: int  # delivered to a consumer, not yet acknowledged
    consumers: int = 0
    last_delivered_id: str = "0-0"

    @property
    def backlog(self) -> int:
        """Entries the group has not acknowledged yet (an unknown lag counts as one: not done)."""
        return (1 if self.lag is None else self.lag) + self.pending


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id as (milliseconds, sequence), which compares in stream order."""
    ms, _, seq = text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: tuple[int, int]) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def group_state(client: redis.Redis, stream: str, group: str) -> GroupState:
    """The group's lag and pending count. A group that does not exist yet has everything still to do
    (lag = the stream's length); a stream that does not exist has nothing."""
    try:
        infos = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream
        return GroupState(exists=False, lag=0, pending=0)
    for info in infos:
        if text(info.get("name")) != group:
            continue
        lag = info.get("lag")
        last = text(info.get("last-delivered-id") or "0-0")
        if lag is None:
            # Redis cannot count (entries deleted inside the range): compare positions instead.
            lag = 0 if last == text(client.xinfo_stream(stream)["last-generated-id"]) else None
        return GroupState(exists=True, lag=None if lag is None else int(lag), pending=int(info.get("pending") or 0),
                          consumers=int(info.get("consumers") or 0), last_delivered_id=last)
    return GroupState(exists=False, lag=int(client.xlen(stream)), pending=0)
