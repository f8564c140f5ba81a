"""The plays table: one row per play, with its indexes for reports by station, track and time.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from monitor.playlog.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plays",
        sa.Column("play_id", sa.String(36), primary_key=True),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("track_id", sa.String(), nullable=False),
        sa.Column("title", sa.String()),
        sa.Column("artist", sa.String()),
        sa.Column("isrc", sa.String()),
        sa.Column("album", sa.String()),
        sa.Column("track", sa.JSON(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime()),
        sa.Column("duration", sa.Float()),
        sa.Column("stream_start", sa.Float(), nullable=False),
        sa.Column("stream_end", sa.Float()),
        sa.Column("ref_start", sa.Float(), nullable=False),
        sa.Column("ref_end", sa.Float()),
        sa.Column("speed", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("state", sa.String(9), nullable=False),
        sa.Column("first_event_id", sa.String(36), nullable=False),
        sa.Column("last_event_id", sa.String(36), nullable=False),
        sa.Column("rejected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("rejected_by", sa.String()),
        sa.Column("rejected_reason", sa.String()),
        sa.Column("rejected_at", UTCDateTime()),
    )
    op.create_index("ix_plays_stream_started", "plays", ["stream_id", "started_at"])
    op.create_index("ix_plays_track_started", "plays", ["track_id", "started_at"])
    op.create_index("ix_plays_started", "plays", ["started_at"])
    op.create_index("ix_plays_rejected_at", "plays", ["rejected_at"])


def downgrade() -> None:
    op.drop_table("plays")
