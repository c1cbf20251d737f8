"""Nodes remember the routes they announce and the routes an admin approved (issue 14).

Both are JSON lists of canonical CIDRs; auto-approved routes are never stored (the
policy's autoApprovers are applied whenever a map is built).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("announced_routes", sa.JSON(), nullable=False, server_default="[]")
        )
        batch.add_column(
            sa.Column("approved_routes", sa.JSON(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("approved_routes")
        batch.drop_column("announced_routes")
