"""Recorder: emotion events -> the SQL event store, exactly once per event over at-least-once delivery.

`RecorderProcessor.handle` writes a whole batch in ONE transaction (events, minute rollups, sessions,
cameras) and returns no outputs; the shared loop XACKs the entries only after it returns, so after
the commit. A redelivered event is skipped by the unique event_id (INSERT ... ON CONFLICT DO
NOTHING) and counts nowhere. A database that is away (connection refused or cut, SQLite locked)
becomes `TransientError`: the loop backs off and reads the same entries again, acknowledging nothing.

`CropProcessor` is the opt-in (`recorder.keep_crops`) second consumer: it reads the faces stream in its
own group and stores the crops, keyed by the same event_id, until `recorder.crop_max_age_days`.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared.processor import Outbound, Processor, TransientError
from shared.schemas import EmotionEvent, FaceMessage
from shared.store import apply_retention, describe_db_error, is_unavailable, record_crops, record_events, redact_url

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


def _store_call(what: str, engine: Engine, fn, *args):
    """Run a store write; a database that is away becomes TransientError (retry, never dead-letter)."""
    try:
        return fn(engine, *args)
    except sa.exc.SQLAlchemyError as exc:
        if is_unavailable(exc):
            raise TransientError(f"event store {redact_url(str(engine.url))} unavailable while {what}: "
                                 f"{describe_db_error(exc)}") from exc
        raise


class RecorderProcessor(Processor[EmotionEvent]):
    input_model = EmotionEvent

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle(self, batch: list[EmotionEvent]) -> list[Outbound]:
        inserted = _store_call("recording events", self.engine, record_events, batch,
                               datetime.now(timezone.utc))
        duplicates = len(batch) - inserted
        stored_s = time.time()
        self.metrics.stage("classify_to_record", (stored_s - e.times.classified_ms / 1000 for e in batch))
        self.metrics.stage("end_to_end", (stored_s - e.times.captured_ms / 1000 for e in batch))
        self.counters.add("recorded", inserted)
        self.counters.add("duplicates", duplicates)
        if duplicates:
            log.info("event=duplicates_skipped count=%d batch=%d", duplicates, len(batch))
        return []

    def heartbeat_info(self) -> dict:
        return {"recorded": self.counters["recorded"], "duplicates": self.counters["duplicates"],
                "store": redact_url(str(self.engine.url))}


class CropProcessor(Processor[FaceMessage]):
    input_model = FaceMessage

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle(self, batch: list[FaceMessage]) -> list[Outbound]:
        _store_call("recording crops", self.engine, record_crops, batch)
        return []


class RetentionLoop(threading.Thread):
    """Applies `recorder.retention_days` (events, rollups, sessions) and `crop_max_age_days` (crops) at
    start and then every `interval_s`; a failure is logged and retried at the next round."""

    def __init__(self, engine: Engine, days: int | None, crop_days: int | None, stop: threading.Event,
                 interval_s: float = RETENTION_INTERVAL_S) -> None:
        super().__init__(name="retention", daemon=True)
        self.engine, self.days, self.crop_days, self.stop, self.interval_s = engine, days, crop_days, stop, interval_s
        self.runs = 0
        self.last_report: dict | None = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.last_report = apply_retention(self.engine, self.days, crop_days=self.crop_days)
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - retention must never stop the recorder
                log.warning("event=retention_failed error=%r", exc, exc_info=not is_unavailable(exc))
            if self.stop.wait(self.interval_s):
                return
