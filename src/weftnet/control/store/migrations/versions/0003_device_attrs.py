"""Nodes remember their OS, client version and admin-set attributes (issue 6: postures).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("os", sa.String(length=32), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("client_version", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("attrs", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("attrs")
        batch.drop_column("client_version")
        batch.drop_column("os")
