"""What the coordination server stores, and the narrow interfaces the service talks through.

The service (``service.py``) holds the rules; it never writes SQL. It reads and writes
these frozen records through a ``Tx`` (one transaction) opened by a ``Store``. The SQL
implementation is ``store.SqlStore``; tests can use an in-memory fake with the same
methods. After a transaction that changed what some node would see commits, the service
calls ``ChangeFeed.publish()``; the map hub listens there. Keeping that notification
behind one small interface is what lets several server replicas on one PostgreSQL share
it later (LISTEN/NOTIFY behind the same ``publish``).

Times are unix seconds (float): they are persisted, so they must be wall-clock time,
and they cross the wire in the same form.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

# The unique index on nodes.disco_key (migration 0005): one node per disco key.
DISCO_KEY_UNIQUE = "uq_nodes_disco_key"


class StoreConflict(Exception):
    """A unique constraint refused a write; the whole transaction may be retried.

    ``constraint`` names the unique index or constraint when the store can tell (None
    for a deadlock or serialization failure)."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    id: int
    name: str  # login name; with an @ it is an email address; what the policy matches
    created_at: float
    display_name: str = ""
    email: str | None = None  # a verified email from the identity provider, else None
    role: str = "member"  # roles.ROLES
    disabled_at: float | None = None  # a disabled user logs in nowhere
    last_login_at: float | None = None


# Columns of a user the service may change after creation (never the name).
USER_UPDATABLE = frozenset({"display_name", "email", "role", "disabled_at", "last_login_at"})


@dataclass(frozen=True, slots=True, kw_only=True)
class NewIdentity:
    """A login at an OpenID provider, bound to one user: (issuer, subject) is unique."""

    user_id: int
    issuer: str
    subject: str
    email: str | None  # as the provider last said, verified or not
    email_verified: bool
    display_name: str
    groups: tuple[str, ...]
    created_at: float
    last_login_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity(NewIdentity):
    id: int


IDENTITY_UPDATABLE = frozenset(
    {"email", "email_verified", "display_name", "groups", "last_login_at"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OidcLogin:
    """One authorization request in flight, found by the SHA-256 of its ``state``;
    taken (deleted) exactly once by the callback."""

    state_hash: str
    purpose: str  # "node" (a weft up login code) or "console"
    nonce: str
    code_verifier: str  # PKCE; useless without the provider's one-time code
    pending_code: str | None  # the node login this belongs to (purpose "node")
    return_to: str | None  # where the console goes after login (a local path)
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsoleSession:
    """A web console login; the browser's cookie holds the id, the store its SHA-256."""

    id_hash: str
    user_id: int
    csrf_token: str
    created_at: float
    last_seen: float
    expires_at: float
    remote_addr: str
    user_agent: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAuditEntry:
    """One change, by whom, from where. Written in the transaction of the change."""

    ts: float
    actor_type: str  # "user" (console), "api_key", "node", "system"
    actor_id: str
    actor_name: str
    origin: str  # "console", "api", "cli", "node", "server"
    action: str  # e.g. "node.authorize", "policy.set"
    target_type: str
    target_id: str
    details: dict[str, object]
    remote_addr: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry(NewAuditEntry):
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewAuthKey:
    prefix: str  # the 12 hex digits after "weftkey-": for lookup, not secret
    key_hash: str  # SHA-256 hex of the whole key; the key itself is never stored
    user_id: int | None
    reusable: bool
    ephemeral: bool
    tags: tuple[str, ...]
    created_at: float
    expires_at: float
    preauthorized: bool = False  # nodes it registers need no device approval


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthKey(NewAuthKey):
    id: int
    used_count: int
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewNode:
    machine_key: str  # "mkey:<hex>": the device; one node per machine key
    node_key: str  # "nodekey:<hex>": its WireGuard key; rotates on re-login
    user_id: int | None  # None for tagged nodes
    tags: tuple[str, ...]
    hostname: str
    given_name: str
    ipv4: str
    ipv6: str
    ephemeral: bool
    created_at: float
    key_expiry: float | None
    auth_key_id: int | None = None
    disco_key: str | None = None
    endpoints: tuple[str, ...] = ()
    observed_ip: str | None = None  # where the last map request came from
    last_seen: float | None = None
    home_relay: str | None = None  # relay region named in the last map request
    os: str = ""  # Hostinfo.os as the node last reported it
    client_version: str = ""  # Hostinfo.client_version
    # Device attributes the admin set ("managed" -> True), sorted by name; policy
    # postures test them as custom:NAME.
    attrs: tuple[tuple[str, str | float | bool], ...] = ()
    # Prefixes the node announced in its last map request (Hostinfo.routable_ips, as the
    # server kept them) and those an admin approved (docs/routes.md); canonical, sorted.
    announced_routes: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    # When an admin approved the device (or it needed no approval); None: waiting, and in
    # no network map until then.
    authorized_at: float | None = None
    key_expiry_disabled: bool = False  # an admin turned off this node's key expiry
    auth_method: str = ""  # how it last logged in: "authkey", "oidc" or "admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Node(NewNode):
    id: int

    def expired_at(self, now: float) -> bool:
        return self.key_expiry is not None and self.key_expiry <= now


@dataclass(frozen=True, slots=True, kw_only=True)
class NewApiKey:
    prefix: str
    key_hash: str
    description: str
    created_at: float
    expires_at: float | None
    scope: str = "admin"  # credentials.API_KEY_SCOPES: "admin" or "relay"


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey(NewApiKey):
    id: int
    revoked_at: float | None
    last_used_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPending:
    """An interactive login waiting for an admin's ``nodes register --code``."""

    code: str
    machine_key: str
    node_key: str
    hostname: str
    created_at: float
    expires_at: float
    os: str = ""  # Hostinfo.os, shown on the login confirmation page
    # Who signed in at the identity provider for this code, waiting for their confirm
    # (an OIDC login), and the node key expiry that login asks for (None: the default).
    user_id: int | None = None
    key_expiry: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending(NewPending):
    id: int
    node_id: int | None  # set when approved


# Columns of a node the service may change after creation.
NODE_UPDATABLE = frozenset(
    {
        "node_key",
        "user_id",
        "tags",
        "hostname",
        "given_name",
        "ephemeral",
        "key_expiry",
        "auth_key_id",
        "disco_key",
        "endpoints",
        "observed_ip",
        "last_seen",
        "home_relay",
        "os",
        "client_version",
        "attrs",
        "announced_routes",
        "approved_routes",
        "authorized_at",
        "key_expiry_disabled",
        "auth_method",
    }
)


class Tx(Protocol):
    """One transaction. Every method sees the transaction's own earlier writes."""

    # users
    def add_user(self, name: str, now: float) -> User: ...
    def user_by_name(self, name: str) -> User | None: ...
    def user_by_id(self, user_id: int) -> User | None: ...
    def users(self) -> list[User]: ...
    def delete_user(self, user_id: int) -> None: ...  # its keys, identities, sessions too
    def update_user(self, user_id: int, **changes: object) -> User: ...  # USER_UPDATABLE
    def user_password_hash(self, user_id: int) -> str | None: ...
    def set_user_password_hash(self, user_id: int, password_hash: str | None) -> None: ...

    # identities at OpenID providers
    def add_identity(self, identity: NewIdentity) -> Identity: ...  # StoreConflict if taken
    def identity_by_subject(self, issuer: str, subject: str) -> Identity | None: ...
    def identities(self, user_id: int | None = None) -> list[Identity]: ...
    def update_identity(self, identity_id: int, **changes: object) -> Identity: ...
    def delete_identity(self, identity_id: int) -> None: ...

    # OpenID authorization requests in flight
    def add_oidc_login(self, login: OidcLogin) -> None: ...
    def take_oidc_login(self, state_hash: str, now: float) -> OidcLogin | None:
        """Delete and return the unexpired login with this state hash; None if another
        transaction took it first, it expired, or it never was."""
        ...

    def delete_expired_oidc_logins(self, now: float) -> int: ...

    # web console sessions
    def add_session(self, session: ConsoleSession) -> None: ...
    def session_by_hash(self, id_hash: str) -> ConsoleSession | None: ...
    def touch_session(self, id_hash: str, now: float) -> None: ...
    def delete_session(self, id_hash: str) -> None: ...
    def delete_user_sessions(self, user_id: int) -> int: ...
    def delete_expired_sessions(self, now: float) -> int: ...

    # the audit log (append only)
    def add_audit(self, entry: NewAuditEntry) -> AuditEntry: ...
    def audit_entries(
        self, *, limit: int, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        """Newest first."""
        ...

    # auth keys
    def add_auth_key(self, key: NewAuthKey) -> AuthKey: ...
    def auth_key_by_prefix(self, prefix: str) -> AuthKey | None: ...
    def auth_key_by_id(self, key_id: int) -> AuthKey | None: ...
    def auth_keys(self, user_id: int | None = None) -> list[AuthKey]: ...
    def use_auth_key(self, key_id: int, now: float) -> bool:
        """Count one use, atomically: only if still valid at ``now`` and (reusable or
        unused). False when another transaction got there first."""
        ...

    def revoke_auth_key(self, key_id: int, now: float) -> None: ...

    # nodes
    def lock_addresses(self) -> None:
        """Serialize address allocation with other writers (until this tx ends)."""
        ...

    def add_node(self, node: NewNode) -> Node: ...  # StoreConflict on a taken unique value
    def update_node(self, node_id: int, **changes: object) -> Node: ...  # NODE_UPDATABLE
    def delete_node(self, node_id: int) -> None: ...
    def node_by_id(self, node_id: int) -> Node | None: ...
    def node_by_machine_key(self, machine_key: str) -> Node | None: ...
    def node_by_node_key(self, node_key: str) -> Node | None: ...
    def node_by_disco_key(self, disco_key: str) -> Node | None: ...
    def nodes(self, user_id: int | None = None) -> list[Node]: ...
    def used_ipv4s(self) -> set[str]: ...
    def given_name_taken(self, name: str) -> bool: ...

    # admin API keys
    def add_api_key(self, key: NewApiKey) -> ApiKey: ...
    def api_key_by_prefix(self, prefix: str) -> ApiKey | None: ...
    def api_keys(self) -> list[ApiKey]: ...
    def revoke_api_key(self, key_id: int, now: float) -> None: ...
    def touch_api_key(self, key_id: int, now: float) -> None: ...

    # pending interactive registrations
    def add_pending(self, pending: NewPending) -> Pending: ...
    def pending_by_code(self, code: str) -> Pending | None: ...
    def approve_pending(self, pending_id: int, node_id: int) -> None: ...
    def set_pending_login(
        self, pending_id: int, user_id: int, key_expiry: float | None
    ) -> None: ...
    def delete_expired_pending(self, now: float) -> int: ...
    def delete_open_pending(self, machine_key: str) -> int: ...

    # settings
    def get_setting(self, name: str) -> str | None: ...
    def set_setting(self, name: str, value: str) -> None: ...


class Store(Protocol):
    def transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction, committed when the block ends, rolled back if it raises.

        ``write=True`` takes the write lock at the start where the database needs it
        (SQLite: BEGIN IMMEDIATE), so a read-then-write never fails half way.
        """
        ...


class ChangeFeed(Protocol):
    def publish(self) -> None:
        """Something a node could see has changed (thread-safe; called after commit)."""
        ...


class NullFeed:
    def publish(self) -> None:
        pass


class CallbackFeed:
    """An in-process feed: calls every subscriber, from the publishing thread."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def publish(self) -> None:
        for callback in list(self._subscribers):
            callback()
