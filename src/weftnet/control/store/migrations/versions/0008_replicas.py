"""Several server replicas on one PostgreSQL (issue 18, docs/scaling.md).

- control_replicas: each running replica, with its server key (replicas must share
  one) and a heartbeat refreshed every second by the database's clock; a replica
  whose heartbeat is older than the lease is dead;
- node_presence: which nodes have a live map stream on which replica (removed with
  the replica or the node);
- seen_nonces: the shared replay guard, the nonces of sealed node requests while
  their timestamps could pass (a request replayed to another replica is refused);
- relay_registrations: standalone relays' registrations, so a relay that registered
  with one replica is in every replica's relay map.

On SQLite (one process) both stay empty: online state lives in the process.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_replicas",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("server_key", sa.String(80), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_control_replicas"),
    )
    op.create_table(
        "node_presence",
        sa.Column(
            "replica_id",
            sa.String(32),
            sa.ForeignKey(
                "control_replicas.id",
                ondelete="CASCADE",
                name="fk_node_presence_replica_id_control_replicas",
            ),
            nullable=False,
        ),
        sa.Column(
            "node_id",
            sa.Integer(),
            sa.ForeignKey("nodes.id", ondelete="CASCADE", name="fk_node_presence_node_id_nodes"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("replica_id", "node_id", name="pk_node_presence"),
    )
    op.create_index("ix_node_presence_node_id", "node_presence", ["node_id"])
    op.create_table(
        "seen_nonces",
        sa.Column("nonce", sa.String(48), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name="pk_seen_nonces"),
    )
    op.create_index("ix_seen_nonces_expires_at", "seen_nonces", ["expires_at"])
    op.create_table(
        "relay_registrations",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("region", sa.JSON(), nullable=False),
        sa.Column("refreshed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_relay_registrations"),
    )


def downgrade() -> None:
    op.drop_table("relay_registrations")
    op.drop_index("ix_seen_nonces_expires_at", table_name="seen_nonces")
    op.drop_table("seen_nonces")
    op.drop_index("ix_node_presence_node_id", table_name="node_presence")
    op.drop_table("node_presence")
    op.drop_table("control_replicas")
