"""The database schema (SQLAlchemy Core tables). Changes go through a new Alembic
migration in ``migrations/versions/``; this module must describe the schema the newest
migration produces (a test compares them).

Times are unix seconds (REAL / double precision). Secrets are never stored: keys are a
lookup prefix plus a SHA-256 of the whole key.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from weftnet.control.domain.records import DISCO_KEY_UNIQUE

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

auth_keys = Table(
    "auth_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True),
    Column("reusable", Boolean, nullable=False),
    Column("ephemeral", Boolean, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_count", Integer, nullable=False, server_default="0"),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
    sqlite_autoincrement=True,
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("machine_key", String(80), nullable=False, unique=True),
    Column("node_key", String(80), nullable=False, unique=True),
    Column("disco_key", String(80)),
    Column("user_id", Integer, ForeignKey("users.id"), index=True),
    Column("tags", JSON, nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("given_name", String(63), nullable=False, unique=True),
    Column("ipv4", String(15), nullable=False, unique=True),
    Column("ipv6", String(39), nullable=False, unique=True),
    Column("endpoints", JSON, nullable=False),
    Column("observed_ip", String(45)),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float),
    Column("key_expiry", Float),
    Column("ephemeral", Boolean, nullable=False),
    Column("auth_key_id", Integer, ForeignKey("auth_keys.id", ondelete="SET NULL")),
    Column("home_relay", String(63)),
    Column("os", String(32), nullable=False, server_default=""),
    Column("client_version", String(64), nullable=False, server_default=""),
    Column("attrs", JSON, nullable=False, server_default="{}"),
    Column("announced_routes", JSON, nullable=False, server_default="[]"),
    Column("approved_routes", JSON, nullable=False, server_default="[]"),
    # Node ids are never reused: a peer that saw id 7 removed must never see a new 7.
    sqlite_autoincrement=True,
)
# Peers attribute disco messages by the sender's disco key: one node per key (security
# audit L1). Nodes without one (NULL) are not counted, on SQLite and PostgreSQL alike.
Index(DISCO_KEY_UNIQUE, nodes.c.disco_key, unique=True)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),
    Column("description", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("scope", String(16), nullable=False, server_default="admin"),
    Column("last_used_at", Float),
    sqlite_autoincrement=True,
)

pending_registrations = Table(
    "pending_registrations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code", String(64), nullable=False, unique=True),
    Column("machine_key", String(80), nullable=False),
    Column("node_key", String(80), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("node_id", Integer, ForeignKey("nodes.id", ondelete="CASCADE")),
    sqlite_autoincrement=True,
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

ALL_TABLES = (users, auth_keys, nodes, api_keys, pending_registrations, settings)
