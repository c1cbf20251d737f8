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
    UniqueConstraint,
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
    Column("display_name", String(200), nullable=False, server_default=""),
    Column("email", String(320)),
    Column("role", String(16), nullable=False, server_default="member"),
    Column("disabled_at", Float),
    Column("last_login_at", Float),
    Column("password_hash", String(200)),  # scrypt, for the console's local login
    sqlite_autoincrement=True,
)

user_identities = Table(
    "user_identities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("issuer", String(500), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("email", String(320)),
    Column("email_verified", Boolean, nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("groups", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_login_at", Float),
    UniqueConstraint("issuer", "subject", name="uq_user_identities_issuer_subject"),
    sqlite_autoincrement=True,
)
Index("ix_user_identities_user_id", user_identities.c.user_id)

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
    Column("preauthorized", Boolean, nullable=False, server_default="0"),
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
    Column("authorized_at", Float),
    Column("key_expiry_disabled", Boolean, nullable=False, server_default="0"),
    Column("auth_method", String(16), nullable=False, server_default=""),
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
    Column("os", String(32), nullable=False, server_default=""),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE")),
    Column("key_expiry", Float),
    sqlite_autoincrement=True,
)

oidc_logins = Table(
    "oidc_logins",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("purpose", String(16), nullable=False),
    Column("nonce", String(128), nullable=False),
    Column("code_verifier", String(128), nullable=False),
    Column("pending_code", String(64)),
    Column("return_to", String(500)),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("remote_addr", String(45), nullable=False),
    Column("user_agent", String(200), nullable=False),
)
Index("ix_console_sessions_user_id", console_sessions.c.user_id)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("actor_type", String(16), nullable=False),
    Column("actor_id", String(64), nullable=False),
    Column("actor_name", String(200), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("details", JSON, nullable=False),
    Column("remote_addr", String(45), nullable=False),
    sqlite_autoincrement=True,
)
Index("ix_audit_log_ts", audit_log.c.ts)

settings = Table(
    "settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Replicas of the server sharing this database (docs/scaling.md): each refreshes its
# heartbeat (the database's clock, unix seconds) every second; one whose heartbeat is
# older than the lease is dead, and the nodes it served count as offline.
control_replicas = Table(
    "control_replicas",
    metadata,
    Column("id", String(32), primary_key=True),  # random, chosen at each start
    Column("host", String(255), nullable=False),  # for operators: where it runs
    Column("pid", Integer, nullable=False),
    # Replicas must share one server key (nodes pin it): a replica with another refuses
    # to start while one with this key is alive.
    Column("server_key", String(80), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

# Which nodes have a live map stream on which replica: the online set every replica's
# network map uses is the union over the live replicas.
node_presence = Table(
    "node_presence",
    metadata,
    Column(
        "replica_id",
        String(32),
        ForeignKey("control_replicas.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("node_id", Integer, ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_node_presence_node_id", node_presence.c.node_id)

# The replay guard replicas share: the nonce of every sealed node request accepted while
# its timestamp could still pass (each replica also keeps its own in memory).
seen_nonces = Table(
    "seen_nonces",
    metadata,
    Column("nonce", String(48), primary_key=True),  # hex
    Column("expires_at", Float, nullable=False, index=True),
)

# Standalone relays' registrations, shared by replicas: a relay registers with one (the
# one its load balancer picked) and every replica's relay map lists it.
relay_registrations = Table(
    "relay_registrations",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("region", JSON, nullable=False),  # the RelayRegion as registered
    Column("refreshed_at", Float, nullable=False),  # the database's clock
)

ALL_TABLES = (
    users,
    user_identities,
    auth_keys,
    nodes,
    api_keys,
    pending_registrations,
    settings,
    oidc_logins,
    console_sessions,
    audit_log,
    control_replicas,
    node_presence,
    seen_nonces,
    relay_registrations,
)
# What replicas keep about each other and about requests, not the tailnet's data.
REPLICA_TABLES = (control_replicas, node_presence, seen_nonces, relay_registrations)
