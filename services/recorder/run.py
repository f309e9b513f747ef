"""Entry point of the recorder: settings -> store (migrated) -> Redis -> one StreamWorker(RecorderProcessor)
per shard of the events stream (shared/sharded.py), all writing to the one store.

Also runs, in threads sharing the replica's stop flag, the retention loop and (only with the opt-in
`recorder.keep_crops`) the crop recorder on every shard of the faces stream.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from sqlalchemy.engine import Engine

from services.recorder.service import CropProcessor, RecorderProcessor, RetentionLoop
from shared.bootstrap import redis_from
from shared.errors import StartupError
from shared.metrics import ServiceMetrics, serve_metrics
from shared.settings import Settings
from shared.store import (StoreUnavailable, check_url, describe_db_error, is_unavailable, make_engine, migrate,
                          redact_url)
from shared.redis_conn import Client
from shared.sharded import ShardedReplica
from shared.shards import claim_layout
from shared.streams import CROPS_GROUP, RECORDER_GROUP, Keys
from shared.worker import StreamWorker

log = logging.getLogger(__name__)
STORE_WAIT_S = 60.0


def open_store(settings: Settings, wait_s: float = STORE_WAIT_S) -> Engine:
    """A migrated engine; waits up to `wait_s` for a database that is still starting."""
    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + wait_s
    delay = settings.worker.backoff_initial_s
    while True:
        try:
            revision = migrate(engine)
            log.info("event=store_ready url=%s revision=%s", redact_url(settings.database_url), revision)
            return engine
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_unavailable(exc) or time.monotonic() >= deadline:
                engine.dispose()
                raise StoreUnavailable(f"cannot open the event store at {redact_url(settings.database_url)}: "
                                       f"{describe_db_error(exc)}") from None
            log.warning("event=store_down url=%s error=%r retry_in_s=%.1f", redact_url(settings.database_url),
                        exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, settings.worker.backoff_max_s)


def build_worker(settings: Settings, client: Client, engine: Engine, consumer: str | None = None,
                 shard: int = 0) -> StreamWorker:
    keys = Keys.of(settings).of_shard(shard)
    return StreamWorker(client, RecorderProcessor(engine), service="recorder", stream=keys.events,
                        group=RECORDER_GROUP, keys=keys, settings=settings.worker, consumer=consumer)


def build_crop_worker(settings: Settings, client: Client, engine: Engine, consumer: str | None = None,
                      shard: int = 0) -> StreamWorker:
    keys = Keys.of(settings).of_shard(shard)
    return StreamWorker(client, CropProcessor(engine), service="recorder-crops", stream=keys.faces,
                        group=CROPS_GROUP, keys=keys, settings=settings.worker, consumer=consumer)


def build_replica(settings: Settings, client: Client, engine: Engine, *, crops: bool = False) -> ShardedReplica:
    build = build_crop_worker if crops else build_worker
    return ShardedReplica(client, Keys.of(settings), service="recorder-crops" if crops else "recorder",
                          settings=settings.worker,
                          make_worker=lambda shard, name: build(settings, client, engine, name, shard),
                          stream="faces" if crops else "events", group=CROPS_GROUP if crops else RECORDER_GROUP)


def drop_crop_group(client: Client, keys: Keys) -> None:
    """Without keep_crops, a crop group left by an earlier run must not hold the faces stream untrimmed."""
    for shard in keys.all_shards():
        try:
            if client.xgroup_destroy(shard.faces, CROPS_GROUP):
                log.info("event=crop_group_removed stream=%s", shard.faces)
        except redis.ResponseError:
            pass  # no stream yet


def check(settings: Settings) -> dict:
    check_url(settings.database_url)
    return {"retention_days": settings.recorder.retention_days, "keep_crops": settings.recorder.keep_crops,
            "shards": settings.shards}


def run(settings: Settings) -> int:
    check(settings)
    with serve_metrics(settings, "recorder") as metrics:
        return _run(settings, metrics)


def _run(settings: Settings, metrics: ServiceMetrics) -> int:
    try:
        engine = open_store(settings)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from None
    client = redis_from(settings)
    claim_layout(client, Keys.of(settings))
    worker = build_replica(settings, client, engine)
    worker.use_metrics(metrics)
    worker.install_signal_handlers()
    recorder = settings.recorder
    threads: list[threading.Thread] = [RetentionLoop(engine, recorder.retention_days, recorder.crop_max_age_days,
                                                     worker.stop_event)]
    if recorder.keep_crops:
        crop_worker = build_replica(settings, client, engine, crops=True)
        crop_worker.stop_event = worker.stop_event
        crop_worker.use_metrics(metrics, describes=False)
        threads.append(threading.Thread(target=crop_worker.run, name="crops", daemon=True))
        log.warning("event=keep_crops face crops are stored in the event store for %d days", recorder.crop_max_age_days)
    else:
        drop_crop_group(client, Keys.of(settings))
    for thread in threads:
        thread.start()
    try:
        return worker.run()
    finally:
        worker.stop_event.set()
        for thread in threads[1:]:
            thread.join(timeout=10)
        engine.dispose()
