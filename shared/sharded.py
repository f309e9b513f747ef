"""A replica serving several shards: one worker loop per shard, each on its own thread, one heartbeat.

Each shard's stream is read by its own `StreamWorker` with its own processor (`make_worker(shard,
consumer)`), so the loop's guarantees (exactly-once commits, dead letters, overlap, reclaim,
backoff, warm stop) hold per shard unchanged, and a read blocks on one stream only (on Redis
Cluster a read cannot span slots; blocking reads release the GIL). The replica writes one heartbeat
for the process (the workers' counters summed, the shards it serves) and on SIGTERM stops every
worker, each finishing its batch in hand.

Which shards: every shard (the classifier, the recorder), or, with `leases` (the detector, whose
trackers must see all of a camera's frames), the shards whose lease this replica holds. Every
heartbeat round it renews its leases, works out its fair share from the live replicas
(shared/leases.py) and acquires free shards up to it, or hands one back (a warm stop of that shard's
worker first, then the lease is deleted) when it holds more. A replica holding no lease waits on
standby and takes over a lease that expired; before working on a shard it takes over the entries
its previous owner left pending, so a replica killed with -9 loses nothing.

Metrics (`use_metrics`): the process has one registry and one metrics port whatever the number of
shards; each shard's worker reports to it (per-shard series carry the shard's stream key), and
its probes cover this replica's own loop and every shard loop it runs (shared/metrics.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Callable

from shared.bootstrap import redis_from
from shared.heartbeats import read_heartbeats
from shared.leases import ShardLeases, fair_share, take_over
from shared.metrics import ServiceMetrics, groups_from_state, serve_metrics
from shared.redis_conn import REDIS_DOWN_ERRORS, Client
from shared.settings import Settings, WorkerSettings
from shared.shards import claim_layout
from shared.streams import Keys
from shared.worker import StreamWorker, WorkerStats, default_consumer_name, install_stop_signals

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 1.0
ANNOUNCE_S = 0.3  # a leased replica's first round only announces it; the second comes this much later
TICK_S = 0.1

MakeWorker = Callable[[int, str], StreamWorker]


@dataclass
class _Running:
    shard: int
    worker: StreamWorker
    thread: threading.Thread
    error: BaseException | None = None
    releasing: bool = False  # stopping to hand the shard back: its lease goes once the thread ends


class ShardedReplica:
    def __init__(self, client: Client, keys: Keys, *, service: str, make_worker: MakeWorker,
                 settings: WorkerSettings, consumer: str | None = None, leases_ttl_ms: int | None = None,
                 stream: str | None = None, group: str | None = None) -> None:
        """`leases_ttl_ms`: serve only leased shards (see the module docstring); None: every shard.
        `stream` (a name in the table of streams: `frames`) and `group`: what the workers read, whose
        lag the process's metrics report over every shard (`use_metrics`)."""
        self.client, self.keys, self.service, self.settings = client, keys, service, settings
        self.make_worker = make_worker
        self.stream, self.group = stream, group
        self.consumer = consumer or default_consumer_name(service)
        self.leases = (ShardLeases(client, keys, service, self.consumer, leases_ttl_ms)
                       if leases_ttl_ms is not None else None)
        self.stop_event = threading.Event()
        self.running: dict[int, _Running] = {}
        self._done = WorkerStats(started_ms=int(time.time() * 1000))  # counters of workers that ended
        self._extra: dict = {}  # processor fields of the last heartbeat, kept while on standby
        self._last_beat = 0.0
        self._rounds = 0
        self.failed: BaseException | None = None
        self.metrics: ServiceMetrics | None = None

    def use_metrics(self, metrics: ServiceMetrics, *, describes: bool = True) -> None:
        """Report to the process's metrics (one registry, one port, however many shards): every shard's
        worker feeds it as it starts; the group's lag and pending entries are read in every shard,
        served or not (a standby detector shows the backlog it would take over); the probes see this
        replica's own loop and every shard loop it runs. `describes`: this replica's shards are the
        process's `emotion_shards_served` and the probes' `shards` (False for a second replica in the
        same process, the recorder's crops, which serves the same shards)."""
        self.metrics = metrics
        if self.stream is not None and self.group is not None:
            for shard in self.keys.all_shards():
                stream = shard.stream(self.stream)
                metrics.watch_groups(groups_from_state(self.client, [(stream, self.group)]), key=(stream, self.group))
        if describes:
            metrics.watch_shards(lambda: len(self._serving()))
            metrics.health.add_info(self._probe_info)
        if self.leases is not None:
            # Not ready before its first chance to take shards (what the heartbeat's `starting` says).
            metrics.health.add_check("leases", lambda: self._rounds >= 2)

    def _serving(self) -> list[int]:
        return sorted(shard for shard, running in list(self.running.items()) if not running.releasing)

    def _probe_info(self) -> dict:
        shards = self._serving()
        info: dict = {"shards": shards, "of_shards": self.keys.shards}
        if self.leases is not None:
            info["standby"] = not shards
        return info

    # --- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        install_stop_signals(self.stop_event, self.service)

    def run(self) -> int:
        """Serve until stopped; 0 after a warm stop, 1 when a shard's worker died of an error."""
        log.info("event=start service=%s consumer=%s shards=%d leased=%s", self.service, self.consumer,
                 self.keys.shards, self.leases is not None)
        backoff = self.settings.backoff_initial_s
        try:
            if self.leases is None:
                for shard in range(self.keys.shards):
                    self._start(shard)
            while not self.stop_event.is_set() and self.failed is None:
                if self.metrics is not None:
                    self.metrics.health.beat(self.service)  # this replica's own loop (leases, heartbeat)
                try:
                    self._tick()
                    backoff = self.settings.backoff_initial_s
                    if self.metrics is not None:
                        self.metrics.health.flag("redis", True, self.service)
                except REDIS_DOWN_ERRORS as exc:
                    if self.metrics is not None:
                        self.metrics.health.flag("redis", False, self.service)
                    # The workers ride the outage out on their own; leases are renewed once it is back
                    # (if it lasted longer than their TTL, the fence stops the workers that lost theirs).
                    log.warning("event=redis_down service=%s error=%r retry_in_s=%.1f", self.service, exc, backoff)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.settings.backoff_max_s)
                    continue
                self.stop_event.wait(TICK_S)
        finally:
            self._stop_all()
        if self.failed is not None:
            log.error("event=replica_failed service=%s consumer=%s error=%r", self.service, self.consumer, self.failed)
            return 1
        return 0

    def _tick(self) -> None:
        for shard, running in list(self.running.items()):
            if running.thread.is_alive():
                continue
            self._ended(shard)
            if running.error is not None:
                self.failed = running.error
                return
        due = ANNOUNCE_S if self.leases is not None and self._rounds == 1 else HEARTBEAT_EVERY_S
        if time.monotonic() - self._last_beat >= due:
            self._last_beat = time.monotonic()
            if self.leases is not None:
                self._balance()
            self._heartbeat()

    def _start(self, shard: int) -> None:
        worker = self.make_worker(shard, self.consumer)
        worker.heartbeats = False
        if self.metrics is not None:
            worker.use_metrics(self.metrics)
        if self.leases is not None:
            worker.fence = self.leases.fence(shard)
            taken = take_over(self.client, worker.stream, worker.group, self.consumer)
            log.info("event=lease_acquired service=%s consumer=%s shard=%d taken_over=%d", self.service,
                     self.consumer, shard, taken)
        running = _Running(shard, worker, threading.Thread())

        def target() -> None:
            try:
                worker.run()
                if self.leases is None and not worker.stop_event.is_set():
                    raise RuntimeError(f"the worker of shard {shard} stopped by itself")
            except BaseException as exc:  # noqa: BLE001 - reported by the replica, which then stops
                log.error("event=worker_failed service=%s shard=%d error=%r\n%s", self.service, shard, exc,
                          traceback.format_exc())
                running.error = exc

        running.thread = threading.Thread(name=f"{self.service}-shard{shard}", target=target, daemon=True)
        self.running[shard] = running
        running.thread.start()

    def _ended(self, shard: int) -> None:
        """A shard's worker thread has ended: keep its counters; hand its lease back if it was ours."""
        running = self.running.pop(shard)
        if self.metrics is not None and running.releasing:
            # The replica goes on without this loop: its last beat must not fail liveness later, nor
            # its model show. (At a stop, the process's last scrape still shows what it served.)
            self.metrics.forget(running.worker.loop_name)
        for name, value in running.worker.stats.as_dict().items():
            if name != "started_ms":
                setattr(self._done, name, getattr(self._done, name) + value)
        if self.leases is not None:
            self.leases.release(shard)
            log.info("event=lease_released service=%s consumer=%s shard=%d", self.service, self.consumer, shard)

    def _stop_all(self) -> None:
        for running in self.running.values():
            running.worker.stop_event.set()
        for running in list(self.running.values()):
            running.thread.join(timeout=30)
        for shard in list(self.running):
            try:
                self._ended(shard)
            except REDIS_DOWN_ERRORS:
                self.running.pop(shard, None)  # the lease expires by itself
        try:
            self.client.delete(self.keys.heartbeat(self.service, self.consumer))
        except REDIS_DOWN_ERRORS:
            pass
        log.info("event=stop service=%s consumer=%s stats=%s", self.service, self.consumer,
                 json.dumps(self._done.as_dict()))

    # --- leases ------------------------------------------------------------------------------

    def _balance(self) -> None:
        self._rounds += 1
        holders = self.leases.holders()
        for shard, running in self.running.items():
            if running.releasing:
                continue
            if holders.get(shard) != self.consumer or not self.leases.renew(shard):
                # Expired (this process stalled longer than the TTL) and perhaps taken: the fence
                # already stops that worker's commits; stop it for good.
                log.warning("event=lease_lost service=%s consumer=%s shard=%d holder=%s", self.service,
                            self.consumer, shard, holders.get(shard))
                running.releasing = True
                running.worker.stop_event.set()
        held: dict[str, int] = {name: 0 for name in self._live_replicas()}
        for holder in holders.values():
            if holder in held:
                held[holder] += 1
        mine = [shard for shard, running in self.running.items() if not running.releasing]
        held[self.consumer] = len(mine)
        share = fair_share(self.keys.shards, self.consumer, held)
        if len(mine) > share:
            shard = max(mine)  # one per round: the others see it free at their next round
            log.info("event=lease_handover service=%s consumer=%s shard=%d share=%d", self.service, self.consumer,
                     shard, share)
            self.running[shard].releasing = True
            self.running[shard].worker.stop_event.set()
            return
        if self._rounds == 1:
            return  # announce ourselves first: replicas started together then split the shards at once
        free = [shard for shard, holder in holders.items() if holder is None and shard not in self.running]
        # Replicas start their search at different shards, so they rarely race for the same one.
        offset = sum(self.consumer.encode()) % max(1, len(free))
        for shard in (free[offset:] + free[:offset])[:max(0, share - len(mine))]:
            if self.leases.acquire(shard):
                self._start(shard)

    def _live_replicas(self) -> list[str]:
        """Consumers of this service whose heartbeat is younger than a lease (a replica that stopped
        beating has lost, or is about to lose, its leases too)."""
        now_ms = int(time.time() * 1000)
        return [str(beat["consumer"]) for beat in read_heartbeats(self.client, self.keys, self.service)
                if now_ms - int(beat.get("ts_ms", 0)) <= self.leases.ttl_ms and beat.get("consumer")]

    # --- heartbeat ---------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        totals = self._done.as_dict()
        extra: dict = {}
        for running in self.running.values():
            for name, value in running.worker.stats.as_dict().items():
                totals[name] = min(totals[name], value) if name == "started_ms" else totals[name] + value
            for name, value in running.worker.processor.heartbeat_info().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name in extra:
                    extra[name] += value
                else:
                    extra.setdefault(name, value)
        self._extra = extra or self._extra
        shards = self._serving()
        beat = {"service": self.service, "consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
                "ts_ms": int(time.time() * 1000), **totals, "busy_s": round(totals["busy_s"], 3), **self._extra,
                "shards": shards, "of_shards": self.keys.shards}
        if self.metrics is not None and self.metrics.port:
            beat["metrics_port"] = self.metrics.port
        if self.leases is not None:
            beat["standby"] = not shards
            # Before its first chance to acquire, a replica only announces itself to its peers: it is
            # not ready (`emotion up` waits for ready heartbeats) until it serves shards or stands by.
            beat["starting"] = self._rounds < 2
        self.client.set(self.keys.heartbeat(self.service, self.consumer), json.dumps(beat),
                        ex=self.settings.heartbeat_ttl_s)


def run_replica(settings: Settings, service: str, build: Callable[[Settings, Client], "ShardedReplica"]) -> int:
    """A sharded service's whole life: connect, check the shard layout, serve its metrics, and run the
    replica that `build(settings, client)` makes until it is stopped (the detector and the classifier)."""
    client = redis_from(settings)
    claim_layout(client, Keys.of(settings))
    with serve_metrics(settings, service) as metrics:
        replica = build(settings, client)
        replica.use_metrics(metrics)
        replica.install_signal_handlers()
        return replica.run()
