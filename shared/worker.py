"""The one consumer-group loop every stream service runs.

heartbeat -> reclaim abandoned entries + retention -> XREADGROUP -> validate -> handle -> publish + XACK -> repeat

What a service plugs in is a `Processor` (shared/processor.py); how each stream it reads or writes
stays bounded is the table of streams (shared/streams.py), applied on XADD and by the retention step.

Guarantees:
- outputs and the XACK of their inputs are written in one MULTI/EXEC transaction, so an entry is
  either acknowledged together with everything it produced, or neither happened;
- an entry that fails validation, raises in `handle`, or has been delivered `max_deliveries` times
  goes to `<stream>:dead` with its reason (acknowledged in the same transaction), never crashing the loop;
- `TransientError` (a database down, say) and Redis outages are retried with capped exponential
  backoff without acknowledging anything, so nothing accepted is lost;
- on start the consumer first re-processes its own pending entries; every `claim_interval_s` it
  XAUTOCLAIMs entries other consumers left idle for `claim_idle_ms` (a replica killed with -9);
- SIGTERM/SIGINT: finish the batch in hand, ack, exit 0 (a second signal exits at once);
- every `claim_interval_s` it also applies the retention rule of the stream it reads and of those it
  published to: an entry a declared group has not acknowledged is never trimmed (shared/retention.py);
- with a `fence` (of the lease of a shard only one replica may work on, shared/leases.py) every
  commit is made under WATCH of the lease's fencing counter; once another replica has acquired the
  lease nothing more is committed and the loop stops, leaving its unacknowledged entries to the new owner.

One worker reads one stream; a replica serving several shards runs one worker per shard
(shared/sharded.py), which then writes the replica's heartbeat instead of each worker (`heartbeats`).

Overlap: a processor that splits `handle` into `prepare` (the heavy part, e.g. inference, which
releases the GIL) and `finish` gets its batches pipelined on new entries: batch N+1 is read and its
`prepare` started on a helper thread, then batch N is finished and committed while it runs. The
guarantees above are unchanged: each batch still commits in order and atomically, and a batch in
flight when Redis fails is simply dropped (it is still pending to us and is read again).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Sequence

import redis

from shared.leases import Fence, FenceLost
from shared.metrics import ServiceMetrics, groups_from_state
from shared.processor import M, Outbound, Processor, TransientError
from shared.redis_conn import REDIS_DOWN_ERRORS
from shared.retention import apply_retention
from shared.schemas import Fields, MessageError, decode
from shared.settings import WorkerSettings
from shared.streams import Keys, StreamTable

log = logging.getLogger(__name__)

DEAD_FIELD_LIMIT = 64 * 1024  # keep at most this much of each original field in a dead letter

__all__ = ["Delivery", "Outbound", "Processor", "StreamWorker", "TransientError", "WorkerStats"]


@dataclass
class Delivery(Generic[M]):
    entry_id: bytes
    message: M


@dataclass
class WorkerStats:
    entries: int = 0
    dead: int = 0
    outputs: int = 0
    batches: int = 0
    reclaimed: int = 0
    redis_errors: int = 0
    transient_errors: int = 0
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    busy_s: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _InFlight(Generic[M]):
    """A batch read and validated, whose `prepare` runs while the previous batch commits."""

    entries: list[tuple[bytes, Fields]]
    good: list[Delivery[M]]
    dead: list[tuple[bytes, Fields, str]]
    prepared: Future | None
    busy_s: float


def install_stop_signals(stop: threading.Event, service: str) -> None:
    """SIGTERM/SIGINT: the first sets `stop` (a warm stop: the batch in hand is finished), a second
    exits at once (a cold stop)."""
    received = 0

    def _on_signal(signum, _frame):
        nonlocal received
        received += 1
        if received > 1:
            log.warning("event=cold_stop service=%s signal=%s", service, signum)
            os._exit(1)
        log.info("event=warm_stop service=%s signal=%s", service, signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def default_consumer_name(service: str) -> str:
    """host-pid-random: unique per replica, so replicas never read each other's pending entries."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StreamWorker(Generic[M]):
    def __init__(self, client: redis.Redis, processor: Processor[M], *, service: str, stream: str, group: str,
                 keys: Keys, settings: WorkerSettings, consumer: str | None = None,
                 streams: StreamTable | None = None, heartbeats: bool = True, fence: Fence | None = None) -> None:
        self.client = client
        self.processor = processor
        self.service = service
        self.stream = stream
        self.group = group
        self.keys = keys
        self.settings = settings
        self.consumer = consumer or default_consumer_name(service)
        # What each stream we read or publish may hold: XADD options, and the retention step.
        self.streams = streams or StreamTable(keys)
        self.heartbeats = heartbeats  # False: the replica running this worker writes the heartbeat
        self.fence = fence
        self._published: set[str] = set()
        self.stats = WorkerStats()
        self.metrics = ServiceMetrics(service, process=False)  # unserved until use_metrics()
        self.stop_event = threading.Event()
        self._last_claim = 0.0
        self._last_heartbeat = 0.0
        self._own_pending_done = False
        self._reading_new = False
        self._retry_entries: list[tuple[bytes, Fields]] | None = None
        self._in_flight: _InFlight[M] | None = None
        self._group_ready = False
        self._overlap: ThreadPoolExecutor | None = None
        if settings.overlap_batches and processor.splits_prepare():
            self._overlap = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{service}-prepare")

    def use_metrics(self, metrics: ServiceMetrics) -> None:
        """Report to the process's served metrics: the loop's counters and timings, the processor's
        (its Counters and its `metrics`), and at scrape time this group's lag and pending entries.
        The workers of a sharded replica all report to the one of their process; the series that
        name a stream are then one per shard, the others are summed over the shards."""
        self.metrics = self.processor.metrics = metrics
        self.processor.counters.sink = metrics.count
        metrics.watch_groups(groups_from_state(self.client, [(self.stream, self.group)]),
                             key=(self.stream, self.group))
        if self.processor.serves_model():
            metrics.watch_model(self.processor.model_info, loop=self.loop_name)
        for key in ("entries", "dead_letters", "reclaimed"):
            metrics.touch(key, stream=self.stream)

    @property
    def loop_name(self) -> str:
        """This loop in the process's probes (/healthz, /readyz): the stream it reads."""
        return self.stream

    # --- lifecycle ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        install_stop_signals(self.stop_event, self.service)

    def run(self, *, max_entries: int | None = None, burst: bool = False) -> int:
        """Loop until stopped; `burst` returns once nothing is pending or new (how tests drive it)."""
        log.info("event=start service=%s consumer=%s stream=%s group=%s",
                 self.service, self.consumer, self.stream, self.group)
        backoff = self.settings.backoff_initial_s
        try:
            while not self.stop_event.is_set():
                self.metrics.health.beat(self.loop_name)  # /healthz: the loop is alive
                try:
                    self._ensure_group()
                    handled = self.step()
                    self.metrics.health.flag("redis", True, self.loop_name)
                    self.metrics.health.flag("downstream", True, self.loop_name)
                    backoff = self.settings.backoff_initial_s
                    if max_entries is not None and self.stats.entries + self._in_flight_count() >= max_entries:
                        break
                    if burst and handled == 0 and self._reading_new:
                        break
                except REDIS_DOWN_ERRORS as exc:
                    self.stats.redis_errors += 1
                    self.metrics.count("redis_errors")
                    self.metrics.health.flag("redis", False, self.loop_name)
                    # Whether the last commit landed is unknown: re-read our pending entries from Redis.
                    self._retry_entries = None
                    self._reread_pending()
                    log.warning("event=redis_down service=%s error=%r retry_in_s=%.1f", self.service, exc, backoff)
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.settings.backoff_max_s)
                except FenceLost as exc:
                    log.warning("event=fence_lost service=%s consumer=%s stream=%s: %s", self.service,
                                self.consumer, self.stream, exc)
                    self._in_flight = None  # not acknowledged: the new owner processes it
                    break
                except TransientError as exc:
                    self.stats.transient_errors += 1
                    self.metrics.count("transient_errors")
                    self.metrics.health.flag("downstream", False, self.loop_name)  # the recorder's database, say
                    log.warning("event=transient_error service=%s error=%s retry_in_s=%.1f", self.service, exc, backoff)
                    # Our unacked entries stay pending; read them again from the start after the pause.
                    self._reread_pending()
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.settings.backoff_max_s)
        finally:
            self._teardown()
        log.info("event=stop service=%s consumer=%s stats=%s", self.service, self.consumer,
                 json.dumps(self.stats.as_dict()))
        return 0

    def _reread_pending(self) -> None:
        """After a failure, our unacknowledged entries are read again from Redis, the batch in flight
        among them; so it is dropped here, and a batch is only ever in flight while reading new entries."""
        self._in_flight = None
        self._own_pending_done = False

    def _teardown(self) -> None:
        try:
            self._flush()  # warm stop: the batch in hand is finished and acknowledged
        except (TransientError, FenceLost, *REDIS_DOWN_ERRORS) as exc:
            # Not acknowledged, so still pending: this consumer (restarted) or a reclaim takes it.
            self._in_flight = None
            log.warning("event=stop_with_pending service=%s error=%r", self.service, exc)
        if not self.heartbeats:
            return
        try:
            self.client.delete(self.keys.heartbeat(self.service, self.consumer))
        except REDIS_DOWN_ERRORS:
            pass

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- one iteration -----------------------------------------------------------------------

    def step(self) -> int:
        """Heartbeat, reclaim, read one batch and process it; returns the number of entries handled."""
        now = time.monotonic()
        if self.heartbeats and now - self._last_heartbeat >= 1.0:
            self._heartbeat()
            self._last_heartbeat = now
        if self._retry_entries is not None:
            entries, self._retry_entries = self._retry_entries, None
            # Reset their idle time (JUSTID leaves the delivery count alone) so no reclaim takes them.
            self.client.xclaim(self.stream, self.group, self.consumer, min_idle_time=0,
                               message_ids=[i for i, _ in entries], justid=True)
            return self._process(entries, check_deliveries=False)
        handled = 0
        if now - self._last_claim >= self.settings.claim_interval_s:
            self._last_claim = now
            handled += self._flush()  # reclaimed entries are processed on their own, after it
            handled += self._reclaim()
            self.apply_retention()
        entries = self._read()
        if not entries:
            return handled + self._flush()
        if self._reading_new and self._overlap is not None:
            return handled + self._process_overlapped(entries)
        return handled + self._process(entries, check_deliveries=not self._reading_new)

    def _read(self) -> list[tuple[bytes, Fields]]:
        self._reading_new = self._own_pending_done
        start_id = ">" if self._own_pending_done else "0"
        try:
            # A prepared batch in flight waits for this read to return: never block on it then.
            block = self.settings.block_ms if self._own_pending_done and self._in_flight is None else None
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: start_id},
                                           count=self.settings.batch_size, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):  # group or stream gone (Redis restarted, key deleted)
                self._group_ready = False
                return []
            raise
        entries = reply[0][1] if reply else []
        if not self._own_pending_done:
            if not entries:
                self._own_pending_done = True
            return [(i, f) for i, f in entries if f]  # pending entries already trimmed come back empty
        if entries and self.settings.batch_wait_ms and len(entries) < self.settings.batch_size:
            entries = list(entries) + self._fill_batch(len(entries))
        return entries

    def _fill_batch(self, have: int) -> list[tuple[bytes, Fields]]:
        """Micro-batching: keep reading until the batch is full or batch_wait_ms has passed.

        Polls with non-blocking reads: Redis only times out a short BLOCK on its server tick
        (100 ms at the default hz 10), which would turn a 10 ms wait into 100 ms.
        Filling also ends once the batch in flight is prepared: its commit waits for this one.
        """
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        more: list[tuple[bytes, Fields]] = []
        while have + len(more) < self.settings.batch_size and time.monotonic() < deadline:
            if self._in_flight is not None and (self._in_flight.prepared is None or self._in_flight.prepared.done()):
                break
            reply = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                           count=self.settings.batch_size - have - len(more))
            if reply and reply[0][1]:
                more.extend(reply[0][1])
            else:
                time.sleep(0.001)
        return more

    def _reclaim(self) -> int:
        """Take over entries that consumers which stopped answering left pending too long.

        XAUTOCLAIM ... JUSTID moves them to us without counting a delivery; each is then claimed for
        real (one delivery counted) and processed on its own. An entry that crashes the process so
        counts only its own deliveries, and never drags its neighbours to the dead-letter stream.
        """
        ids: list[bytes] = []
        while len(ids) < self.settings.batch_size * 4:
            # redis-py returns only the ids for JUSTID; entries claimed here become ours with a reset
            # idle time, so asking again from the start returns the next ones.
            found = self.client.xautoclaim(self.stream, self.group, self.consumer,
                                           min_idle_time=self.settings.claim_idle_ms, start_id="0-0",
                                           count=self.settings.batch_size, justid=True)
            if not found:
                break
            ids.extend(found)
        reclaimed = 0
        for entry_id in ids:
            entries = [e for e in self.client.xclaim(self.stream, self.group, self.consumer, min_idle_time=0,
                                                     message_ids=[entry_id]) if e[1]]
            if entries:
                self._process(entries, check_deliveries=True)
                reclaimed += 1
        if reclaimed:
            self.stats.reclaimed += reclaimed
            self.metrics.count("reclaimed", reclaimed, stream=self.stream)
            log.info("event=reclaimed service=%s consumer=%s entries=%d", self.service, self.consumer, reclaimed)
        return reclaimed

    def apply_retention(self) -> None:
        """Keep the streams this worker reads and writes within their declared rules.

        The consumer trims what its groups have acknowledged; the producer applies the same rule to
        what it publishes, so a stream whose reader is down is still held to its safety cap (and
        the loss, if that cap is ever reached, is reported here and counted).
        """
        for key in {self.stream, *self._published}:
            spec = self.streams.spec(key)
            if spec is None:
                continue
            report = apply_retention(self.client, spec)
            if report.capped_unacknowledged:
                self.client.hincrby(self.keys.stats(self.service), "capped_unacknowledged", report.capped)
                self.metrics.count("capped_unacknowledged", report.capped)

    def _delivery_counts(self, ids: Sequence[bytes]) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for entry_id in ids:
            rows = self.client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            if rows:
                counts[entry_id] = int(rows[0]["times_delivered"])
        return counts

    def _validate(self, entries: list[tuple[bytes, Fields]], check_deliveries: bool
                  ) -> tuple[list[Delivery[M]], list[tuple[bytes, Fields, str]]]:
        dead: list[tuple[bytes, Fields, str]] = []
        good: list[Delivery[M]] = []
        counts = self._delivery_counts([i for i, _ in entries]) if check_deliveries else {}
        for entry_id, fields in entries:
            delivered = counts.get(entry_id, 1)
            if delivered > self.settings.max_deliveries:
                dead.append((entry_id, fields, f"delivered {delivered} times without success "
                                               f"(max_deliveries={self.settings.max_deliveries})"))
                continue
            try:
                good.append(Delivery(entry_id, decode(self.processor.input_model, fields)))
            except Exception as exc:  # MessageError, or whatever a hostile entry provokes (deep JSON: RecursionError)
                dead.append((entry_id, fields, str(exc) if isinstance(exc, MessageError) else f"invalid entry: {exc!r}"[:500]))
        return good, dead

    def _process(self, entries: list[tuple[bytes, Fields]], check_deliveries: bool) -> int:
        started = time.perf_counter()
        good, dead = self._validate(entries, check_deliveries)
        self._handle_and_commit(entries, good, dead, prepared=None)
        self.stats.busy_s += time.perf_counter() - started
        return len(entries)

    def _process_overlapped(self, entries: list[tuple[bytes, Fields]]) -> int:
        """Start this batch's `prepare` on the helper thread, then finish the previous batch meanwhile."""
        started = time.perf_counter()
        good, dead = self._validate(entries, check_deliveries=False)
        prepared = self._overlap.submit(self.processor.prepare, [d.message for d in good]) if good else None
        flushed = self._flush()
        self._in_flight = _InFlight(entries, good, dead, prepared, time.perf_counter() - started)
        return flushed + len(entries)

    def _in_flight_count(self) -> int:
        return len(self._in_flight.entries) if self._in_flight is not None else 0

    def _flush(self) -> int:
        """Finish and commit the batch in flight, if any; returns its number of entries."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return 0
        started = time.perf_counter()
        self._handle_and_commit(batch.entries, batch.good, batch.dead, batch.prepared)
        self.stats.busy_s += batch.busy_s + time.perf_counter() - started
        return len(batch.entries)

    def _handle_and_commit(self, entries: list[tuple[bytes, Fields]], good: list[Delivery[M]],
                           dead: list[tuple[bytes, Fields, str]], prepared: Future | None) -> None:
        started = time.perf_counter()
        outputs: list[Outbound] = []
        done_ids: list[bytes] = []
        if good:
            try:
                try:
                    messages = [d.message for d in good]
                    if prepared is None:
                        outputs = self.processor.handle(messages)
                    else:
                        outputs = self.processor.finish(messages, prepared.result())
                    done_ids = [d.entry_id for d in good]
                except (TransientError, *REDIS_DOWN_ERRORS):
                    raise
                except Exception:
                    # Something in the batch is poison: retry one at a time so only the culprit is dead-lettered.
                    outputs, done_ids = self._process_one_by_one(good, dead, entries)
            except TransientError:
                self._retry_entries = entries
                raise
        self._commit(outputs, done_ids, dead)
        self.stats.entries += len(entries)
        self.stats.batches += 1
        self.metrics.observe("batch_size", len(entries), stream=self.stream)
        self.metrics.observe("batch_duration", time.perf_counter() - started, stream=self.stream)

    def _process_one_by_one(self, good: list[Delivery[M]], dead: list, entries) -> tuple[list[Outbound], list[bytes]]:
        raw = dict(entries)
        outputs: list[Outbound] = []
        done: list[bytes] = []
        for delivery in good:
            try:
                outputs.extend(self.processor.handle([delivery.message]))
                done.append(delivery.entry_id)
            except (TransientError, *REDIS_DOWN_ERRORS):
                raise
            except Exception as exc:
                log.error("event=poison service=%s entry=%s error=%r\n%s", self.service,
                          delivery.entry_id.decode(), exc, traceback.format_exc())
                dead.append((delivery.entry_id, raw[delivery.entry_id], f"{type(exc).__name__}: {exc}"))
        return outputs, done

    def _commit(self, outputs: list[Outbound], done_ids: list[bytes], dead: list[tuple[bytes, Fields, str]]) -> None:
        """Publish outputs, dead letters and XACKs atomically (MULTI/EXEC)."""
        pipe = self.client.pipeline(transaction=True)
        if self.fence is not None:
            self._watch_fence(pipe)
        for out in outputs:
            pipe.xadd(out.stream, out.fields, **self._xadd_options(out.stream))
        dead_stream = self.keys.dead(self.stream)
        for entry_id, fields, reason in dead:
            letter = {b"reason": reason.encode()[:2000], b"entry_id": entry_id, b"group": self.group.encode(),
                      b"consumer": self.consumer.encode(), b"failed_ms": str(int(time.time() * 1000)).encode()}
            for name, value in list(fields.items())[:32]:
                letter[b"orig:" + name[:100]] = value[:DEAD_FIELD_LIMIT]
            pipe.xadd(dead_stream, letter, **self._xadd_options(dead_stream))
            log.warning("event=dead_letter service=%s entry=%s reason=%s", self.service, entry_id.decode(), reason)
        acked = done_ids + [d[0] for d in dead]
        if acked:
            pipe.xack(self.stream, self.group, *acked)
        stats_key = self.keys.stats(self.service)
        pipe.hincrby(stats_key, "entries_in", len(done_ids))
        if outputs:
            pipe.hincrby(stats_key, "entries_out", len(outputs))
        if dead:
            pipe.hincrby(stats_key, "dead", len(dead))
        # Processor state that must move with the acknowledgement (the classifier's per-track
        # smoothing) rides in the same transaction: one round trip less, and never half-applied.
        self.processor.stage_writes(pipe)
        for name, amount in self.processor.counters.take().items():
            pipe.hincrby(stats_key, name, amount)
        try:
            pipe.execute()
        except redis.WatchError:
            raise FenceLost(f"{self.fence.key} changed while committing") from None
        self.metrics.committed(self.stream, done=len(done_ids), dead=len(dead), published=Counter(
            spec.name for spec in map(self.streams.spec, (out.stream for out in outputs)) if spec is not None))
        self._published.update(out.stream for out in outputs)
        self.stats.outputs += len(outputs)
        self.stats.dead += len(dead)

    def _watch_fence(self, pipe) -> None:
        """WATCH the fencing counter, check it is still at our acquisition, then start the transaction:
        EXEC fails if another replica acquires the lease before it."""
        pipe.watch(self.fence.key)
        value = pipe.get(self.fence.key)
        if value is None or value.decode() != self.fence.token:
            pipe.reset()
            raise FenceLost(f"{self.fence.key} is {value.decode() if value else 'unset'}, not {self.fence.token}: "
                            f"another replica acquired the lease")
        pipe.multi()

    def _xadd_options(self, stream: str) -> dict:
        spec = self.streams.spec(stream)
        return spec.xadd_options() if spec is not None else {}

    def _heartbeat(self) -> None:
        beat = {"service": self.service, "consumer": self.consumer, "host": socket.gethostname(),
                "pid": os.getpid(), "ts_ms": int(time.time() * 1000), **self.stats.as_dict()}
        beat.update(self.processor.heartbeat_info())
        if self.metrics.port:
            beat["metrics_port"] = self.metrics.port
        self.client.set(self.keys.heartbeat(self.service, self.consumer), json.dumps(beat),
                        ex=self.settings.heartbeat_ttl_s)
