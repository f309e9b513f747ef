"""initial schema: events, rollups_minute, sessions, cameras, crops

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-25

Frozen copy of shared/store/schema.py at this revision (a later schema change is a new revision,
never an edit of this one).
"""

from alembic import op
import sqlalchemy as sa

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UtcTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("time", UtcTime, nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("frame_id", sa.BigInteger, nullable=False),
        sa.Column("face_index", sa.Integer, nullable=False),
        sa.Column("track_id", sa.BigInteger, nullable=False),
        sa.Column("x", sa.Integer, nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("w", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        *(sa.Column(f"p_{e}", sa.Float, nullable=False) for e in EMOTIONS),
        *(sa.Column(f"s_{e}", sa.Float, nullable=False) for e in EMOTIONS),
        sa.Column("smoothed_label", sa.String(16), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("detect_ms", sa.Integer, nullable=False),
        sa.Column("classify_ms", sa.Integer, nullable=False),
        sa.Column("total_ms", sa.Integer, nullable=False),
        sa.Column("recorded", UtcTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_camera_id_time", "events", ["camera_id", "time"])
    op.create_index("ix_events_session_id_time", "events", ["session_id", "time"])

    op.create_table(
        "rollups_minute",
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("minute", UtcTime, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        *(sa.Column(f"sum_p_{e}", sa.Float, nullable=False) for e in EMOTIONS),
        sa.PrimaryKeyConstraint("camera_id", "minute", "label", name="pk_rollups_minute"),
    )
    op.create_index("ix_rollups_minute_minute", "rollups_minute", ["minute"])

    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=True),
        sa.Column("source", sa.String(500), nullable=True),
        sa.Column("started", UtcTime, nullable=True),
        sa.Column("ended", UtcTime, nullable=True),
        sa.Column("last_event", UtcTime, nullable=True),
        sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("session_id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_started", "sessions", ["started"])

    op.create_table(
        "cameras",
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(500), nullable=True),
        sa.Column("first_seen", UtcTime, nullable=True),
        sa.Column("last_seen", UtcTime, nullable=True),
        sa.Column("last_session_id", sa.String(64), nullable=True),
        sa.Column("event_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("camera_id", name="pk_cameras"),
    )

    op.create_table(
        "crops",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("time", UtcTime, nullable=False),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("side", sa.Integer, nullable=False),
        sa.Column("crop", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_crops"),
    )
    op.create_index("ix_crops_time", "crops", ["time"])


def downgrade() -> None:
    op.drop_index("ix_crops_time", table_name="crops")
    op.drop_table("crops")
    op.drop_table("cameras")
    op.drop_index("ix_sessions_started", table_name="sessions")
    op.drop_table("sessions")
    op.drop_index("ix_rollups_minute_minute", table_name="rollups_minute")
    op.drop_table("rollups_minute")
    op.drop_index("ix_events_session_id_time", table_name="events")
    op.drop_index("ix_events_camera_id_time", table_name="events")
    op.drop_index("ix_events_time", table_name="events")
    op.drop_table("events")
