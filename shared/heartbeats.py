"""Reading the liveness keys every service writes (`Keys.heartbeat`): one JSON object per live
process (service, consumer, host, pid, ts_ms, counters), gone when it stops or its TTL expires."""

from __future__ import annotations

import json

from shared.redis_conn import Client
from shared.streams import Keys

MAX_HEARTBEATS = 500


def read_heartbeats(client: Client, keys: Keys, service: str = "*") -> list[dict]:
    """The live heartbeats of `service` (every service with "*"); unreadable ones are skipped.

    One GET per key in a pipeline rather than MGET: on Redis Cluster the keys live in many slots
    (SCAN there visits every master)."""
    names = list(client.scan_iter(match=keys.heartbeat_pattern(service), count=200))[:MAX_HEARTBEATS]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
    beats = []
    for raw in pipe.execute() if names else []:
        if not raw:
            continue  # expired between SCAN and MGET
        try:
            beat = json.loads(raw)
        except ValueError:
            continue
        if isinstance(beat, dict):
            beats.append(beat)
    return beats
