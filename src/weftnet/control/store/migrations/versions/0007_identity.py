"""Identity-provider logins, device approval, the web console and the audit log (issue 15).

- users: display name, verified email, console role, disabled, last login, and a
  password hash for the console's local login;
- user_identities: (issuer, subject) of an OpenID provider login, unique, one user each;
- nodes: authorized_at (NULL = waiting for an admin), key_expiry_disabled, auth_method.
  Nodes that exist before this migration were all admitted, so they count as authorized
  since they were created;
- auth_keys: preauthorized;
- pending_registrations: the OS to show, and who signed in for the code (an OIDC login
  waiting for its confirm) with the key expiry that login asks for;
- oidc_logins (authorization requests in flight), console_sessions, audit_log.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# SQLite may rebuild a table to alter it; the rebuilt one must still never reuse an id.
KEEP_IDS = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("users", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(
            sa.Column("display_name", sa.String(200), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("email", sa.String(320)))
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="member"))
        batch.add_column(sa.Column("disabled_at", sa.Float()))
        batch.add_column(sa.Column("last_login_at", sa.Float()))
        batch.add_column(sa.Column("password_hash", sa.String(200)))
    op.create_table(
        "user_identities",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_user_identities_user_id_users"),
            nullable=False,
        ),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column("email_verified", sa.Boolean(), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_login_at", sa.Float()),
        sa.PrimaryKeyConstraint("id", name="pk_user_identities"),
        sa.UniqueConstraint("issuer", "subject", name="uq_user_identities_issuer_subject"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_user_identities_user_id", "user_identities", ["user_id"])
    with op.batch_alter_table("auth_keys", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(
            sa.Column("preauthorized", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("nodes", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("authorized_at", sa.Float()))
        batch.add_column(
            sa.Column(
                "key_expiry_disabled", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch.add_column(sa.Column("auth_method", sa.String(16), nullable=False, server_default=""))
    op.execute("UPDATE nodes SET authorized_at = created_at")
    with op.batch_alter_table("pending_registrations", table_kwargs=KEEP_IDS) as batch:
        batch.add_column(sa.Column("os", sa.String(32), nullable=False, server_default=""))
        batch.add_column(
            sa.Column(
                "user_id",
                sa.Integer(),
                sa.ForeignKey(
                    "users.id",
                    ondelete="CASCADE",
                    name="fk_pending_registrations_user_id_users",
                ),
            )
        )
        batch.add_column(sa.Column("key_expiry", sa.Float()))
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("pending_code", sa.String(64)),
        sa.Column("return_to", sa.String(500)),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name="pk_oidc_logins"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_console_sessions_user_id_users"),
            nullable=False,
        ),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("remote_addr", sa.String(45), nullable=False),
        sa.Column("user_agent", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_user_id", "console_sessions", ["user_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("actor_name", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("remote_addr", sa.String(45), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_ts", "audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_console_sessions_user_id", "console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("oidc_logins")
    with op.batch_alter_table("pending_registrations", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("key_expiry")
        batch.drop_column("user_id")
        batch.drop_column("os")
    with op.batch_alter_table("nodes", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("auth_method")
        batch.drop_column("key_expiry_disabled")
        batch.drop_column("authorized_at")
    with op.batch_alter_table("auth_keys", table_kwargs=KEEP_IDS) as batch:
        batch.drop_column("preauthorized")
    op.drop_index("ix_user_identities_user_id", "user_identities")
    op.drop_table("user_identities")
    with op.batch_alter_table("users", table_kwargs=KEEP_IDS) as batch:
        for column in (
            "password_hash",
            "last_login_at",
            "disabled_at",
            "role",
            "email",
            "display_name",
        ):
            batch.drop_column(column)
