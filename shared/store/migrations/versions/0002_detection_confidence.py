"""events.detection_confidence: the face detector's score of each face

Revision ID: 0002_detection_confidence
Revises: 0001_initial
Create Date: 2026-12-01

Nullable: rows recorded before this revision, and faces found by a backend that gives no score
(the Haar cascade), have none.
"""

from alembic import op
import sqlalchemy as sa

revision = "0002_detection_confidence"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond ADD COLUMN; batch keeps both backends on one path.
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("detection_confidence", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("detection_confidence")
