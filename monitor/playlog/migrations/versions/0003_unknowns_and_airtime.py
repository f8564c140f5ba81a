"""Events beside plays (schema version 2): unknown stretches and hourly airtime, and the store of kept
unknown stretches that every tracking process shares, with the excerpt each repeated piece keeps.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from monitor.playlog.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CONTENT_CLASSES = ("music", "speech", "speech_over_music", "silence", "other")  # as schema.CONTENT_CLASSES was at 0003


def upgrade() -> None:
    op.create_table(
        "unknowns",
        sa.Column("unknown_id", sa.String(36), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("stream_start", sa.Float(), nullable=False),
        sa.Column("stream_end", sa.Float(), nullable=False),
        sa.Column("music_seconds", sa.Float(), nullable=False),
        sa.Column("decided_offset", sa.Float(), nullable=False),
        sa.Column("cluster_id", sa.String(36)),
        sa.Column("matched_unknown_id", sa.String(36)),
        sa.Column("ref_start", sa.Float()),
        sa.Column("speed", sa.Float()),
        sa.Column("score", sa.Float()),
        sa.Column("stream", sa.JSON(), nullable=False),
    )
    op.create_index("ix_unknowns_stream_started", "unknowns", ["stream_id", "started_at"])
    op.create_index("ix_unknowns_started", "unknowns", ["started_at"])
    op.create_index("ix_unknowns_cluster_started", "unknowns", ["cluster_id", "started_at"])
    op.create_index("ix_unknowns_matched", "unknowns", ["matched_unknown_id"])
    op.create_table(
        "airtime",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("hour", UTCDateTime(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in CONTENT_CLASSES),
        sa.Column("decided_offset", sa.Float(), nullable=False),
        sa.Column("stream", sa.JSON(), nullable=False),
    )
    op.create_index("ix_airtime_stream_hour", "airtime", ["stream_id", "hour"])
    op.create_index("ix_airtime_hour", "airtime", ["hour"])
    op.create_table(
        "kept_unknowns",
        sa.Column("row", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("unknown_id", sa.String(36), nullable=False, unique=True),
        sa.Column("stream_id", sa.String(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("offsets", sa.LargeBinary(), nullable=False),
        sa.Column("embeddings", sa.LargeBinary(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.String(36)),
        sa.Column("excerpt", sa.LargeBinary()),
    )
    op.create_index("ix_kept_unknowns_started", "kept_unknowns", ["started_at"])
    op.create_table(
        "cluster_excerpts",
        sa.Column("cluster_id", sa.String(36), primary_key=True),
        sa.Column("unknown_id", sa.String(36), nullable=False),
        sa.Column("excerpt", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    for table in ("cluster_excerpts", "kept_unknowns", "airtime", "unknowns"):
        op.drop_table(table)
