"""The initial schema: users, auth keys, nodes, API keys, pending logins, settings.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_settings")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "auth_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("reusable", sa.Boolean(), nullable=False),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_auth_keys_prefix")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_auth_keys_user_id"), "auth_keys", ["user_id"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_key", sa.String(length=80), nullable=False),
        sa.Column("node_key", sa.String(length=80), nullable=False),
        sa.Column("disco_key", sa.String(length=80), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("given_name", sa.String(length=63), nullable=False),
        sa.Column("ipv4", sa.String(length=15), nullable=False),
        sa.Column("ipv6", sa.String(length=39), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("observed_ip", sa.String(length=45), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("key_expiry", sa.Float(), nullable=True),
        sa.Column("ephemeral", sa.Boolean(), nullable=False),
        sa.Column("auth_key_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["auth_key_id"],
            ["auth_keys.id"],
            name=op.f("fk_nodes_auth_key_id_auth_keys"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_nodes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("given_name", name=op.f("uq_nodes_given_name")),
        sa.UniqueConstraint("ipv4", name=op.f("uq_nodes_ipv4")),
        sa.UniqueConstraint("ipv6", name=op.f("uq_nodes_ipv6")),
        sa.UniqueConstraint("machine_key", name=op.f("uq_nodes_machine_key")),
        sa.UniqueConstraint("node_key", name=op.f("uq_nodes_node_key")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_nodes_user_id"), "nodes", ["user_id"], unique=False)

    op.create_table(
        "pending_registrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("machine_key", sa.String(length=80), nullable=False),
        sa.Column("node_key", sa.String(length=80), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_pending_registrations_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_registrations")),
        sa.UniqueConstraint("code", name=op.f("uq_pending_registrations_code")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("pending_registrations")
    op.drop_index(op.f("ix_nodes_user_id"), table_name="nodes")

    op.drop_table("nodes")
    op.drop_index(op.f("ix_auth_keys_user_id"), table_name="auth_keys")

    op.drop_table("auth_keys")
    op.drop_table("users")
    op.drop_table("settings")
    op.drop_table("api_keys")
