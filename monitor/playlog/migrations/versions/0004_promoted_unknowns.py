"""Unknown stretches that a person promoted into the catalog name the play they became, so reports count
their seconds once (as catalog music) and a second promotion of the cluster changes nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("unknowns") as table:
        table.add_column(sa.Column("promoted_play_id", sa.String(36)))


def downgrade() -> None:
    with op.batch_alter_table("unknowns") as table:
        table.drop_column("promoted_play_id")
