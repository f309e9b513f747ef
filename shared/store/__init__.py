"""The event store: SQL schema (SQLAlchemy Core + Alembic), the recorder's writer, the dashboard's queries.

    engine = make_engine("sqlite:///emotion.sqlite")     # or postgresql+psycopg://...
    migrate(engine)                                        # Alembic upgrade to head, idempotent
    record_events(engine, batch)                           # exactly once per event_id, rollups included
    queries.emotion_counts(engine, start, end, "hour")     # DataFrames for the dashboard

No face image is stored unless `recorder.keep_crops` is set (see services/recorder).
"""

from shared.store.engine import (StoreUnavailable, check_url, current_revision, describe_db_error, head_revision,
                                 is_unavailable, make_engine, migrate, normalize_url, redact_url)
from shared.store.writer import (apply_retention, close_session, open_session, record_crops, record_events)
from shared.store import queries

__all__ = ["StoreUnavailable", "apply_retention", "check_url", "close_session", "current_revision", "describe_db_error",
           "head_revision", "is_unavailable", "make_engine", "migrate", "normalize_url", "open_session", "queries",
           "record_crops", "record_events", "redact_url"]
