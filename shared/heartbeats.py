"""Reading the liveness keys every service writes (`Keys.heartbeat`): one JSON object per live
process (service, consumer, host, pid, ts_ms, counters), gone when it stops or its TTL expires."""

from __future__ import annotations

import json

import redis

from shared.streams import Keys

MAX_HEARTBEATS = 500


def read_heartbeats(client: redis.Redis, keys: Keys, service: str = "*") -> list[dict]:
    """The live heartbeats of `service` (every service with "*"); unreadable ones are skipped."""
    names = list(client.scan_iter(match=keys.heartbeat_pattern(service), count=200))[:MAX_HEARTBEATS]
    beats = []
    for raw in client.mget(names) if names else []:
        if not raw:
            continue  # expired between SCAN and MGET
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict):
            beats.append(beat)
    return beats
