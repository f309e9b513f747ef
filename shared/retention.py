"""The retention step: keep one stream within the rule the table of streams declares for it.

Trimming by acknowledgement (XTRIM MINID) never removes an entry that a declared group has not
acknowledged: for each group the first entry it still needs is its oldest pending entry, or, with
nothing pending, the entry after its last-delivered id; the stream is trimmed below the smallest of
those (and below `now - keep_ms`). A declared group that does not exist yet needs everything.
The bound holds without a transaction: between reading those ids and trimming, a group's position
only moves forward (deliveries advance it, acknowledgements shrink its pending list).

The safety cap of a non-live stream is applied here too rather than on XADD, so that an entry it
removes unacknowledged (an outage of its reader longer than the cap covers) is counted and logged
as an error instead of vanishing inside XADD.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis

from shared.stream_state import format_id, parse_id, text
from shared.streams import StreamSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrimReport:
    stream: str
    acknowledged: int = 0  # entries removed that every declared group had acknowledged
    capped: int = 0  # entries removed by the safety cap
    capped_unacknowledged: bool = False  # some of those a declared group had not acknowledged
    held_by: str | None = None  # the group whose position bounded the trim, if one did


def first_needed(client: redis.Redis, spec: StreamSpec) -> tuple[tuple[int, int], str] | None:
    """The oldest entry id some declared group still needs, with that group's name; None when no
    group needs anything older than the next entry to be added.

    A missing required group needs everything: (0, 0).
    """
    try:
        infos = {text(info["name"]): info for info in client.xinfo_groups(spec.key)}
    except redis.ResponseError:  # no stream yet
        return None
    needed: list[tuple[tuple[int, int], str]] = []
    for group in spec.groups:
        info = infos.get(group.name)
        if info is None:
            if not group.optional:
                needed.append(((0, 0), group.name))
            continue
        ms, seq = parse_id(info["last-delivered-id"])
        position = (ms, seq + 1)  # everything up to the last delivered entry was read
        if int(info.get("pending") or 0):
            oldest = client.xpending(spec.key, group.name).get("min")
            if oldest:
                position = min(position, parse_id(oldest))
        needed.append((position, group.name))
    return min(needed) if needed else None


def apply_retention(client: redis.Redis, spec: StreamSpec, now_ms: int | None = None) -> TrimReport:
    """Trim `spec`'s stream by its rule (a live stream is capped on XADD: nothing to do here)."""
    rule = spec.retention
    if rule.live:
        return TrimReport(spec.key)
    needed = first_needed(client, spec)
    acknowledged = 0
    held_by = None
    if rule.after_ack:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        floor = (now_ms - rule.keep_ms, 0)
        if needed is not None and needed[0] < floor:
            floor, held_by = needed
        if floor > (0, 0):
            acknowledged = int(client.xtrim(spec.key, minid=format_id(floor), approximate=False))
    capped, unacknowledged = 0, False
    if client.xlen(spec.key) > rule.cap:
        capped = int(client.xtrim(spec.key, maxlen=rule.cap, approximate=True))
        if capped and needed is not None:
            first = client.xrange(spec.key, count=1)
            unacknowledged = not first or parse_id(first[0][0]) > needed[0]
            if unacknowledged:
                log.error("event=stream_capped stream=%s removed=%d cap=%d unacknowledged_by=%s: its reader was "
                          "away longer than the cap covers; entries from %s on were never processed by it",
                          spec.key, capped, rule.cap, needed[1], format_id(needed[0]))
    return TrimReport(spec.key, acknowledged, capped, unacknowledged, held_by)
