"""The SQL store: SQLAlchemy 2 Core queries behind ``records.Tx``, on SQLite or PostgreSQL.

Theory of operation: one ``transaction()`` is one database transaction on one pooled
connection; the rules live in the service, this module only reads and writes rows.

SQLite (the default, ``DATA_DIR/control.db``) runs in WAL mode, so readers never wait
for the writer and a kill -9 loses nothing committed; foreign keys are on and a busy
connection waits (busy timeout) instead of failing. Python's sqlite3 module is told to
keep out of transaction control, and every transaction begins explicitly: write
transactions with BEGIN IMMEDIATE, which takes the write lock up front, so a
read-then-write transaction never fails half way with "database is locked" and
registrations are serialized. On PostgreSQL (``postgresql+psycopg://``) transactions
are READ COMMITTED; ``lock_addresses`` takes a transaction-scoped advisory lock so two
registrations do not pick the same free address (the unique columns would catch it,
at the cost of a retry). The single-use auth key guarantee does not depend on either
lock: ``use_auth_key`` is a conditional UPDATE whose row count says who won.

Unique-constraint violations, deadlocks and serialization failures surface as
``StoreConflict``; the service retries the whole transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from weftnet.control.domain.records import (
    IDENTITY_UPDATABLE,
    NODE_UPDATABLE,
    USER_UPDATABLE,
    ApiKey,
    AuditEntry,
    AuthKey,
    ConsoleSession,
    Identity,
    NewApiKey,
    NewAuditEntry,
    NewAuthKey,
    NewIdentity,
    NewNode,
    NewPending,
    Node,
    OidcLogin,
    Pending,
    StoreConflict,
    User,
)
from weftnet.control.store import models as m

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0  # a writer waits this long for the write lock
ADDRESS_LOCK_ID = 0x7765667441  # pg_advisory_xact_lock key for address allocation
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'control.db'}"


def normalize_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (the driver weftnet depends on)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL as it may appear in logs: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


_SECRET_IN_URL = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_SECRET_PARAM = re.compile(r"\b(password|passwd|pwd|sslpassword)\s*=\s*('[^']*'|\S+)", re.I)


def redact_error(e: BaseException) -> str:
    """The first line of a database error as it may appear in logs: no passwords, in
    URLs or connection parameters. Never for answers to clients (they get none)."""
    text = str(getattr(e, "orig", None) or e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = _SECRET_IN_URL.sub(r"\1:***@", line)
    return _SECRET_PARAM.sub(r"\1=***", line)[:300]


class SqlStore:
    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            options: dict[str, Any] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
            if memory:
                options["poolclass"] = StaticPool
                options["connect_args"]["check_same_thread"] = False
            else:
                options.update(pool_size=10, max_overflow=30)
            self.engine: Engine = create_engine(self.url, **options)
            _setup_sqlite(self.engine, wal=not memory)
        elif self.dialect == "postgresql":
            self.engine = create_engine(self.url, pool_size=10, max_overflow=30, pool_pre_ping=True)
        else:
            raise ValueError(
                f"unsupported database {parsed.drivername}: use sqlite:///PATH"
                " or postgresql+psycopg://USER@HOST/DB"
            )

    @classmethod
    def open(cls, url: str) -> SqlStore:
        """Connect and bring the schema up to date."""
        store = cls(url)
        store.migrate()
        return store

    def migrate(self) -> None:
        """Run the Alembic migrations shipped in the package up to head."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.connect() as conn:
            conn.execution_options(weft_write=True)
            with conn.begin():
                if self.dialect == "postgresql":  # replicas starting together
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADDRESS_LOCK_ID + 1}
                    )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[SqlTx]:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(weft_write=write)
                with conn.begin():
                    yield SqlTx(conn, self.dialect)
        except IntegrityError as e:
            raise StoreConflict(str(e.orig), violated_constraint(e)) from e
        except DBAPIError as e:
            if getattr(e.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
                raise StoreConflict(str(e.orig)) from e
            raise

    def row_counts(self) -> dict[str, int]:
        """Rows per table of the tailnet's data (tests check that refused requests leave
        nothing behind); not the replicas' own bookkeeping (replay guard, presence)."""
        with self.engine.connect() as conn:
            return {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in m.ALL_TABLES
                if t not in m.REPLICA_TABLES
            }


# SQLite names the columns of a unique index it enforced, not the index.
_UNIQUE_BY_COLUMNS = {
    ", ".join(f"{table.name}.{c.name}" for c in index.columns): str(index.name)
    for table in m.ALL_TABLES
    for index in table.indexes
    if index.unique and index.name
} | {
    ", ".join(f"{table.name}.{c.name}" for c in constraint.columns): str(constraint.name)
    for table in m.ALL_TABLES
    for constraint in table.constraints
    if isinstance(constraint, UniqueConstraint) and isinstance(constraint.name, str)
}
_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)$")


def violated_constraint(e: IntegrityError) -> str | None:
    """The name of the unique index a write ran into, where the database tells."""
    name = getattr(getattr(e.orig, "diag", None), "constraint_name", None)  # PostgreSQL
    if isinstance(name, str):
        return name
    found = _SQLITE_UNIQUE.search(str(e.orig).strip())
    return _UNIQUE_BY_COLUMNS.get(found.group(1)) if found else None


def _setup_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # sqlite3 stays out; we BEGIN ourselves
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("weft_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _user(r: Any) -> User:
    return User(
        id=r.id,
        name=r.name,
        created_at=r.created_at,
        display_name=r.display_name or "",
        email=r.email,
        role=r.role,
        disabled_at=r.disabled_at,
        last_login_at=r.last_login_at,
    )


def _identity(r: Any) -> Identity:
    return Identity(
        id=r.id,
        user_id=r.user_id,
        issuer=r.issuer,
        subject=r.subject,
        email=r.email,
        email_verified=bool(r.email_verified),
        display_name=r.display_name,
        groups=tuple(r.groups or ()),
        created_at=r.created_at,
        last_login_at=r.last_login_at,
    )


def _oidc_login(r: Any) -> OidcLogin:
    return OidcLogin(**{f: getattr(r, f) for f in OidcLogin.__dataclass_fields__})


def _session(r: Any) -> ConsoleSession:
    return ConsoleSession(**{f: getattr(r, f) for f in ConsoleSession.__dataclass_fields__})


def _audit(r: Any) -> AuditEntry:
    values = {f: getattr(r, f) for f in AuditEntry.__dataclass_fields__}
    values["details"] = dict(r.details or {})
    return AuditEntry(**values)


def _auth_key(r: Any) -> AuthKey:
    return AuthKey(
        id=r.id,
        prefix=r.prefix,
        key_hash=r.key_hash,
        user_id=r.user_id,
        reusable=bool(r.reusable),
        ephemeral=bool(r.ephemeral),
        tags=tuple(r.tags or ()),
        created_at=r.created_at,
        expires_at=r.expires_at,
        used_count=r.used_count,
        last_used_at=r.last_used_at,
        revoked_at=r.revoked_at,
        preauthorized=bool(r.preauthorized),
    )


def _node(r: Any) -> Node:
    return Node(
        id=r.id,
        machine_key=r.machine_key,
        node_key=r.node_key,
        disco_key=r.disco_key,
        user_id=r.user_id,
        tags=tuple(r.tags or ()),
        hostname=r.hostname,
        given_name=r.given_name,
        ipv4=r.ipv4,
        ipv6=r.ipv6,
        endpoints=tuple(r.endpoints or ()),
        observed_ip=r.observed_ip,
        created_at=r.created_at,
        last_seen=r.last_seen,
        key_expiry=r.key_expiry,
        ephemeral=bool(r.ephemeral),
        auth_key_id=r.auth_key_id,
        home_relay=r.home_relay,
        os=r.os or "",
        client_version=r.client_version or "",
        attrs=tuple(sorted((r.attrs or {}).items())),
        announced_routes=tuple(r.announced_routes or ()),
        approved_routes=tuple(r.approved_routes or ()),
        authorized_at=r.authorized_at,
        key_expiry_disabled=bool(r.key_expiry_disabled),
        auth_method=r.auth_method or "",
    )


def _api_key(r: Any) -> ApiKey:
    return ApiKey(
        id=r.id,
        prefix=r.prefix,
        key_hash=r.key_hash,
        description=r.description,
        created_at=r.created_at,
        expires_at=r.expires_at,
        revoked_at=r.revoked_at,
        last_used_at=r.last_used_at,
        scope=r.scope,
    )


def _pending(r: Any) -> Pending:
    return Pending(
        id=r.id,
        code=r.code,
        machine_key=r.machine_key,
        node_key=r.node_key,
        hostname=r.hostname,
        created_at=r.created_at,
        expires_at=r.expires_at,
        node_id=r.node_id,
        os=r.os or "",
        user_id=r.user_id,
        key_expiry=r.key_expiry,
    )


def _jsonable(changes: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in changes.items():
        if k == "attrs":
            out[k] = {name: value for name, value in v}  # type: ignore[attr-defined]
        else:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


class SqlTx:
    """``records.Tx`` on one connection inside one transaction."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    def _one(self, stmt: Any) -> Any:
        return self.conn.execute(stmt).first()

    def _insert(self, table: Any, values: Mapping[str, object]) -> int:
        result = self.conn.execute(insert(table).values(**_jsonable(values)))
        pk = result.inserted_primary_key
        assert pk is not None
        return int(pk[0])

    # users

    def add_user(self, name: str, now: float) -> User:
        user_id = self._insert(m.users, {"name": name, "created_at": now})
        return User(id=user_id, name=name, created_at=now)

    def user_by_name(self, name: str) -> User | None:
        r = self._one(select(m.users).where(m.users.c.name == name))
        return _user(r) if r else None

    def user_by_id(self, user_id: int) -> User | None:
        r = self._one(select(m.users).where(m.users.c.id == user_id))
        return _user(r) if r else None

    def users(self) -> list[User]:
        return [_user(r) for r in self.conn.execute(select(m.users).order_by(m.users.c.id))]

    def delete_user(self, user_id: int) -> None:
        self.conn.execute(delete(m.auth_keys).where(m.auth_keys.c.user_id == user_id))
        ui = m.user_identities
        self.conn.execute(delete(ui).where(ui.c.user_id == user_id))
        cs = m.console_sessions
        self.conn.execute(delete(cs).where(cs.c.user_id == user_id))
        p = m.pending_registrations
        self.conn.execute(delete(p).where(p.c.user_id == user_id))
        self.conn.execute(delete(m.users).where(m.users.c.id == user_id))

    def update_user(self, user_id: int, **changes: object) -> User:
        unknown = set(changes) - USER_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            self.conn.execute(update(m.users).where(m.users.c.id == user_id).values(**changes))
        found = self.user_by_id(user_id)
        if found is None:
            raise KeyError(user_id)
        return found

    def user_password_hash(self, user_id: int) -> str | None:
        r = self._one(select(m.users.c.password_hash).where(m.users.c.id == user_id))
        return r.password_hash if r else None

    def set_user_password_hash(self, user_id: int, password_hash: str | None) -> None:
        self.conn.execute(
            update(m.users).where(m.users.c.id == user_id).values(password_hash=password_hash)
        )

    # identities at OpenID providers

    def add_identity(self, identity: NewIdentity) -> Identity:
        values = {f: getattr(identity, f) for f in NewIdentity.__dataclass_fields__}
        identity_id = self._insert(m.user_identities, values)
        return Identity(id=identity_id, **values)

    def identity_by_subject(self, issuer: str, subject: str) -> Identity | None:
        ui = m.user_identities
        r = self._one(select(ui).where(ui.c.issuer == issuer, ui.c.subject == subject))
        return _identity(r) if r else None

    def identities(self, user_id: int | None = None) -> list[Identity]:
        ui = m.user_identities
        stmt = select(ui).order_by(ui.c.id)
        if user_id is not None:
            stmt = stmt.where(ui.c.user_id == user_id)
        return [_identity(r) for r in self.conn.execute(stmt)]

    def update_identity(self, identity_id: int, **changes: object) -> Identity:
        unknown = set(changes) - IDENTITY_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        ui = m.user_identities
        if changes:
            self.conn.execute(update(ui).where(ui.c.id == identity_id).values(**_jsonable(changes)))
        r = self._one(select(ui).where(ui.c.id == identity_id))
        if r is None:
            raise KeyError(identity_id)
        return _identity(r)

    def delete_identity(self, identity_id: int) -> None:
        ui = m.user_identities
        self.conn.execute(delete(ui).where(ui.c.id == identity_id))

    # OpenID authorization requests in flight

    def add_oidc_login(self, login: OidcLogin) -> None:
        values = {f: getattr(login, f) for f in OidcLogin.__dataclass_fields__}
        self.conn.execute(insert(m.oidc_logins).values(**values))

    def take_oidc_login(self, state_hash: str, now: float) -> OidcLogin | None:
        o = m.oidc_logins
        r = self._one(select(o).where(o.c.state_hash == state_hash))
        if r is None:
            return None
        # The DELETE's row count decides who took it, when two callbacks race.
        taken = self.conn.execute(delete(o).where(o.c.state_hash == state_hash)).rowcount
        if taken != 1 or r.expires_at <= now:
            return None
        return _oidc_login(r)

    def delete_expired_oidc_logins(self, now: float) -> int:
        o = m.oidc_logins
        return self.conn.execute(delete(o).where(o.c.expires_at <= now)).rowcount

    # web console sessions

    def add_session(self, session: ConsoleSession) -> None:
        values = {f: getattr(session, f) for f in ConsoleSession.__dataclass_fields__}
        self.conn.execute(insert(m.console_sessions).values(**values))

    def session_by_hash(self, id_hash: str) -> ConsoleSession | None:
        cs = m.console_sessions
        r = self._one(select(cs).where(cs.c.id_hash == id_hash))
        return _session(r) if r else None

    def touch_session(self, id_hash: str, now: float) -> None:
        cs = m.console_sessions
        self.conn.execute(update(cs).where(cs.c.id_hash == id_hash).values(last_seen=now))

    def delete_session(self, id_hash: str) -> None:
        cs = m.console_sessions
        self.conn.execute(delete(cs).where(cs.c.id_hash == id_hash))

    def delete_user_sessions(self, user_id: int) -> int:
        cs = m.console_sessions
        return self.conn.execute(delete(cs).where(cs.c.user_id == user_id)).rowcount

    def delete_expired_sessions(self, now: float) -> int:
        cs = m.console_sessions
        return self.conn.execute(delete(cs).where(cs.c.expires_at <= now)).rowcount

    # the audit log

    def add_audit(self, entry: NewAuditEntry) -> AuditEntry:
        values = {f: getattr(entry, f) for f in NewAuditEntry.__dataclass_fields__}
        entry_id = self._insert(m.audit_log, values)
        return AuditEntry(id=entry_id, **values)

    def audit_entries(
        self, *, limit: int, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        a = m.audit_log
        stmt = select(a).order_by(a.c.id.desc()).limit(limit)
        if before_id is not None:
            stmt = stmt.where(a.c.id < before_id)
        if since is not None:
            stmt = stmt.where(a.c.ts >= since)
        return [_audit(r) for r in self.conn.execute(stmt)]

    # auth keys

    def add_auth_key(self, key: NewAuthKey) -> AuthKey:
        values = {
            "prefix": key.prefix,
            "key_hash": key.key_hash,
            "user_id": key.user_id,
            "reusable": key.reusable,
            "ephemeral": key.ephemeral,
            "tags": key.tags,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
            "used_count": 0,
            "preauthorized": key.preauthorized,
        }
        key_id = self._insert(m.auth_keys, values)
        found = self.auth_key_by_id(key_id)
        assert found is not None
        return found

    def auth_key_by_prefix(self, prefix: str) -> AuthKey | None:
        r = self._one(select(m.auth_keys).where(m.auth_keys.c.prefix == prefix))
        return _auth_key(r) if r else None

    def auth_key_by_id(self, key_id: int) -> AuthKey | None:
        r = self._one(select(m.auth_keys).where(m.auth_keys.c.id == key_id))
        return _auth_key(r) if r else None

    def auth_keys(self, user_id: int | None = None) -> list[AuthKey]:
        stmt = select(m.auth_keys).order_by(m.auth_keys.c.id)
        if user_id is not None:
            stmt = stmt.where(m.auth_keys.c.user_id == user_id)
        return [_auth_key(r) for r in self.conn.execute(stmt)]

    def use_auth_key(self, key_id: int, now: float) -> bool:
        k = m.auth_keys.c
        stmt = (
            update(m.auth_keys)
            .where(
                k.id == key_id,
                k.revoked_at.is_(None),
                k.expires_at > now,
                or_(k.reusable == true(), k.used_count == 0),
            )
            .values(used_count=k.used_count + 1, last_used_at=now)
        )
        return self.conn.execute(stmt).rowcount == 1

    def revoke_auth_key(self, key_id: int, now: float) -> None:
        k = m.auth_keys.c
        self.conn.execute(
            update(m.auth_keys).where(k.id == key_id, k.revoked_at.is_(None)).values(revoked_at=now)
        )

    # nodes

    def lock_addresses(self) -> None:
        if self.dialect == "postgresql":
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADDRESS_LOCK_ID})

    def add_node(self, node: NewNode) -> Node:
        values = {f: getattr(node, f) for f in NewNode.__dataclass_fields__}
        node_id = self._insert(m.nodes, values)
        found = self.node_by_id(node_id)
        assert found is not None
        return found

    def update_node(self, node_id: int, **changes: object) -> Node:
        unknown = set(changes) - NODE_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        if changes:
            self.conn.execute(
                update(m.nodes).where(m.nodes.c.id == node_id).values(**_jsonable(changes))
            )
        found = self.node_by_id(node_id)
        if found is None:
            raise KeyError(node_id)
        return found

    def delete_node(self, node_id: int) -> None:
        self.conn.execute(delete(m.nodes).where(m.nodes.c.id == node_id))

    def node_by_id(self, node_id: int) -> Node | None:
        r = self._one(select(m.nodes).where(m.nodes.c.id == node_id))
        return _node(r) if r else None

    def node_by_machine_key(self, machine_key: str) -> Node | None:
        r = self._one(select(m.nodes).where(m.nodes.c.machine_key == machine_key))
        return _node(r) if r else None

    def node_by_node_key(self, node_key: str) -> Node | None:
        r = self._one(select(m.nodes).where(m.nodes.c.node_key == node_key))
        return _node(r) if r else None

    def node_by_disco_key(self, disco_key: str) -> Node | None:
        r = self._one(select(m.nodes).where(m.nodes.c.disco_key == disco_key).limit(1))
        return _node(r) if r else None

    def nodes(self, user_id: int | None = None) -> list[Node]:
        stmt = select(m.nodes).order_by(m.nodes.c.id)
        if user_id is not None:
            stmt = stmt.where(m.nodes.c.user_id == user_id)
        return [_node(r) for r in self.conn.execute(stmt)]

    def used_ipv4s(self) -> set[str]:
        return set(self.conn.execute(select(m.nodes.c.ipv4)).scalars())

    def given_name_taken(self, name: str) -> bool:
        return bool(
            self.conn.execute(select(exists().where(m.nodes.c.given_name == name))).scalar()
        )

    # admin API keys

    def add_api_key(self, key: NewApiKey) -> ApiKey:
        values = {f: getattr(key, f) for f in NewApiKey.__dataclass_fields__}
        key_id = self._insert(m.api_keys, values)
        r = self._one(select(m.api_keys).where(m.api_keys.c.id == key_id))
        return _api_key(r)

    def api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        r = self._one(select(m.api_keys).where(m.api_keys.c.prefix == prefix))
        return _api_key(r) if r else None

    def api_keys(self) -> list[ApiKey]:
        return [
            _api_key(r) for r in self.conn.execute(select(m.api_keys).order_by(m.api_keys.c.id))
        ]

    def revoke_api_key(self, key_id: int, now: float) -> None:
        k = m.api_keys.c
        self.conn.execute(
            update(m.api_keys).where(k.id == key_id, k.revoked_at.is_(None)).values(revoked_at=now)
        )

    def touch_api_key(self, key_id: int, now: float) -> None:
        self.conn.execute(
            update(m.api_keys).where(m.api_keys.c.id == key_id).values(last_used_at=now)
        )

    # pending interactive registrations

    def add_pending(self, pending: NewPending) -> Pending:
        values = {f: getattr(pending, f) for f in NewPending.__dataclass_fields__}
        pending_id = self._insert(m.pending_registrations, values)
        return Pending(id=pending_id, node_id=None, **values)

    def pending_by_code(self, code: str) -> Pending | None:
        p = m.pending_registrations
        r = self._one(select(p).where(p.c.code == code))
        return _pending(r) if r else None

    def approve_pending(self, pending_id: int, node_id: int) -> None:
        p = m.pending_registrations
        self.conn.execute(update(p).where(p.c.id == pending_id).values(node_id=node_id))

    def set_pending_login(self, pending_id: int, user_id: int, key_expiry: float | None) -> None:
        p = m.pending_registrations
        self.conn.execute(
            update(p).where(p.c.id == pending_id).values(user_id=user_id, key_expiry=key_expiry)
        )

    def delete_expired_pending(self, now: float) -> int:
        p = m.pending_registrations
        return self.conn.execute(delete(p).where(p.c.expires_at <= now)).rowcount

    def delete_open_pending(self, machine_key: str) -> int:
        """Delete this machine's pending logins not approved yet."""
        p = m.pending_registrations
        query = delete(p).where(p.c.machine_key == machine_key, p.c.node_id.is_(None))
        return self.conn.execute(query).rowcount

    # settings

    def get_setting(self, name: str) -> str | None:
        r = self._one(select(m.settings.c.value).where(m.settings.c.name == name))
        return str(r.value) if r else None

    def set_setting(self, name: str, value: str) -> None:
        s = m.settings
        if self.conn.execute(update(s).where(s.c.name == name).values(value=value)).rowcount == 0:
            self.conn.execute(insert(s).values(name=name, value=value))
