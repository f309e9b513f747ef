"""Tables of the event store (SQLAlchemy Core). Alembic migrations create them; this is their reference.

- `events`: one row per classified face; `event_id` is unique, so a redelivered event is a no-op.
- `rollups_minute`: per camera, minute and label, the count and the sums of the seven probabilities,
  maintained in the same transaction as the inserts (means are sums / count).
- `sessions`, `cameras`: one row each, opened by the pipeline or created from the first event seen.
- `crops`: face crops, only when the opt-in `recorder.keep_crops` is set (empty by default).

Times are UTC (`DateTime(timezone=True)`: timestamptz on PostgreSQL, ISO text on SQLite).
"""

from __future__ import annotations

import sqlalchemy as sa

from shared.emotions import EMOTIONS

PROB_COLUMNS = tuple(f"p_{e}" for e in EMOTIONS)
SMOOTHED_COLUMNS = tuple(f"s_{e}" for e in EMOTIONS)
SUM_COLUMNS = tuple(f"sum_p_{e}" for e in EMOTIONS)

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (autoincrementing); BIGINT elsewhere.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UtcTime = sa.DateTime(timezone=True)

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

events = sa.Table(
    "events", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(200), nullable=False),
    sa.Column("time", UtcTime, nullable=False, comment="capture time of the frame (times.captured_ms)"),
    sa.Column("camera_id", sa.String(64), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("frame_id", sa.BigInteger, nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("track_id", sa.BigInteger, nullable=False),
    sa.Column("x", sa.Integer, nullable=False),
    sa.Column("y", sa.Integer, nullable=False),
    sa.Column("w", sa.Integer, nullable=False),
    sa.Column("h", sa.Integer, nullable=False),
    sa.Column("detection_confidence", sa.Float, nullable=True,
              comment="the face detector's score (NULL: backend without one, or recorded before revision 0002)"),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in PROB_COLUMNS),
    *(sa.Column(name, sa.Float, nullable=False) for name in SMOOTHED_COLUMNS),
    sa.Column("smoothed_label", sa.String(16), nullable=False),
    sa.Column("model_version", sa.String(100), nullable=False),
    sa.Column("detect_ms", sa.Integer, nullable=False, comment="detected - captured"),
    sa.Column("classify_ms", sa.Integer, nullable=False, comment="classified - detected"),
    sa.Column("total_ms", sa.Integer, nullable=False, comment="classified - captured"),
    sa.Column("recorded", UtcTime, nullable=False, comment="when the recorder stored the row"),
    sa.UniqueConstraint("event_id"),
    sa.Index("ix_events_time", "time"),
    sa.Index("ix_events_camera_id_time", "camera_id", "time"),
    sa.Index("ix_events_session_id_time", "session_id", "time"),
)

rollups_minute = sa.Table(
    "rollups_minute", metadata,
    sa.Column("camera_id", sa.String(64), nullable=False),
    sa.Column("minute", UtcTime, nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in SUM_COLUMNS),
    sa.PrimaryKeyConstraint("camera_id", "minute", "label"),
    sa.Index("ix_rollups_minute_minute", "minute"),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("camera_id", sa.String(64), nullable=True, comment="first camera of the session"),
    sa.Column("source", sa.String(500), nullable=True),
    sa.Column("started", UtcTime, nullable=True),
    sa.Column("ended", UtcTime, nullable=True),
    sa.Column("last_event", UtcTime, nullable=True),
    sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_sessions_started", "started"),
)

cameras = sa.Table(
    "cameras", metadata,
    sa.Column("camera_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.String(500), nullable=True),
    sa.Column("first_seen", UtcTime, nullable=True),
    sa.Column("last_seen", UtcTime, nullable=True),
    sa.Column("last_session_id", sa.String(64), nullable=True),
    sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
)

crops = sa.Table(
    "crops", metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("time", UtcTime, nullable=False),
    sa.Column("camera_id", sa.String(64), nullable=False),
    sa.Column("side", sa.Integer, nullable=False),
    sa.Column("crop", sa.LargeBinary, nullable=False, comment="side x side uint8 grey, as on the faces stream"),
    sa.Index("ix_crops_time", "time"),
)
