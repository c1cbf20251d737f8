"""One node per disco key: a unique index on nodes.disco_key (security audit L1).

The service has refused a disco key held by another node since 0004's release; rows
from before that may share one. Of each group sharing a disco key only the newest node
(the highest id) keeps it; the others' disco key is cleared (NULL: peers skip disco
with them until their next map request reports a key of their own). NULLs do not
collide in a unique index, on SQLite or PostgreSQL.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "uq_nodes_disco_key"  # records.DISCO_KEY_UNIQUE; a migration keeps its own copy


def upgrade() -> None:
    op.execute(
        "UPDATE nodes SET disco_key = NULL"
        " WHERE disco_key IS NOT NULL AND EXISTS ("
        "  SELECT 1 FROM nodes AS newer"
        "  WHERE newer.disco_key = nodes.disco_key AND newer.id > nodes.id)"
    )
    op.create_index(INDEX, "nodes", ["disco_key"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="nodes")
