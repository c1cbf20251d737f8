"""An in-memory ``records.Store`` for service tests: no SQL, same rules as SqlStore.

One lock serializes transactions; a transaction works on a copy of the state and
replaces it only when the block ends without an exception, so refusals roll back.
Unique columns raise StoreConflict like the database's constraints do.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from weftnet.control.domain.records import (
    DISCO_KEY_UNIQUE,
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

NODE_UNIQUE = ("machine_key", "node_key", "given_name", "ipv4", "ipv6")


@dataclass
class State:
    next_id: int = 1
    users: dict[int, User] = field(default_factory=dict)
    auth_keys: dict[int, AuthKey] = field(default_factory=dict)
    nodes: dict[int, Node] = field(default_factory=dict)
    api_keys: dict[int, ApiKey] = field(default_factory=dict)
    pending: dict[int, Pending] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    passwords: dict[int, str] = field(default_factory=dict)
    identities: dict[int, Identity] = field(default_factory=dict)
    oidc_logins: dict[str, OidcLogin] = field(default_factory=dict)
    sessions: dict[str, ConsoleSession] = field(default_factory=dict)
    audit: dict[int, AuditEntry] = field(default_factory=dict)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class MemoryStore:
    def __init__(self) -> None:
        self.state = State()
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[MemoryTx]:
        with self._lock:
            work = copy.deepcopy(self.state)
            yield MemoryTx(work)
            if write:
                self.state = work

    def row_counts(self) -> dict[str, int]:
        s = self.state
        return {
            "users": len(s.users),
            "auth_keys": len(s.auth_keys),
            "nodes": len(s.nodes),
            "api_keys": len(s.api_keys),
            "pending_registrations": len(s.pending),
            "settings": len(s.settings),
            "user_identities": len(s.identities),
            "oidc_logins": len(s.oidc_logins),
            "console_sessions": len(s.sessions),
            "audit_log": len(s.audit),
        }


class MemoryTx:
    def __init__(self, state: State) -> None:
        self.s = state

    # users
    def add_user(self, name: str, now: float) -> User:
        if any(u.name == name for u in self.s.users.values()):
            raise StoreConflict("users.name")
        user = User(id=self.s.new_id(), name=name, created_at=now)
        self.s.users[user.id] = user
        return user

    def user_by_name(self, name: str) -> User | None:
        return next((u for u in self.s.users.values() if u.name == name), None)

    def user_by_id(self, user_id: int) -> User | None:
        return self.s.users.get(user_id)

    def users(self) -> list[User]:
        return sorted(self.s.users.values(), key=lambda u: u.id)

    def delete_user(self, user_id: int) -> None:
        if any(n.user_id == user_id for n in self.s.nodes.values()):
            raise StoreConflict("nodes.user_id references users")
        for key in [k for k in self.s.auth_keys.values() if k.user_id == user_id]:
            self._drop_auth_key(key.id)
        for i in [i for i in self.s.identities.values() if i.user_id == user_id]:
            del self.s.identities[i.id]
        self.delete_user_sessions(user_id)
        for p in [p for p in self.s.pending.values() if p.user_id == user_id]:
            del self.s.pending[p.id]
        self.s.passwords.pop(user_id, None)
        self.s.users.pop(user_id, None)

    def update_user(self, user_id: int, **changes: object) -> User:
        unknown = set(changes) - USER_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        record = dataclasses.replace(self.s.users[user_id], **changes)  # type: ignore[arg-type]
        self.s.users[user_id] = record
        return record

    def user_password_hash(self, user_id: int) -> str | None:
        return self.s.passwords.get(user_id)

    def set_user_password_hash(self, user_id: int, password_hash: str | None) -> None:
        if password_hash is None:
            self.s.passwords.pop(user_id, None)
        else:
            self.s.passwords[user_id] = password_hash

    # identities at OpenID providers
    def add_identity(self, identity: NewIdentity) -> Identity:
        if self.identity_by_subject(identity.issuer, identity.subject) is not None:
            raise StoreConflict("user_identities", "uq_user_identities_issuer_subject")
        fields = {f.name: getattr(identity, f.name) for f in dataclasses.fields(NewIdentity)}
        record = Identity(id=self.s.new_id(), **fields)
        self.s.identities[record.id] = record
        return record

    def identity_by_subject(self, issuer: str, subject: str) -> Identity | None:
        return next(
            (i for i in self.s.identities.values() if i.issuer == issuer and i.subject == subject),
            None,
        )

    def identities(self, user_id: int | None = None) -> list[Identity]:
        found = sorted(self.s.identities.values(), key=lambda i: i.id)
        return [i for i in found if user_id is None or i.user_id == user_id]

    def update_identity(self, identity_id: int, **changes: object) -> Identity:
        unknown = set(changes) - IDENTITY_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        record = dataclasses.replace(self.s.identities[identity_id], **changes)  # type: ignore[arg-type]
        self.s.identities[identity_id] = record
        return record

    def delete_identity(self, identity_id: int) -> None:
        self.s.identities.pop(identity_id, None)

    # OpenID authorization requests in flight
    def add_oidc_login(self, login: OidcLogin) -> None:
        if login.state_hash in self.s.oidc_logins:
            raise StoreConflict("oidc_logins.state_hash")
        self.s.oidc_logins[login.state_hash] = login

    def take_oidc_login(self, state_hash: str, now: float) -> OidcLogin | None:
        login = self.s.oidc_logins.pop(state_hash, None)
        return login if login is not None and login.expires_at > now else None

    def delete_expired_oidc_logins(self, now: float) -> int:
        gone = [h for h, o in self.s.oidc_logins.items() if o.expires_at <= now]
        for h in gone:
            del self.s.oidc_logins[h]
        return len(gone)

    # web console sessions
    def add_session(self, session: ConsoleSession) -> None:
        self.s.sessions[session.id_hash] = session

    def session_by_hash(self, id_hash: str) -> ConsoleSession | None:
        return self.s.sessions.get(id_hash)

    def touch_session(self, id_hash: str, now: float) -> None:
        found = self.s.sessions.get(id_hash)
        if found is not None:
            self.s.sessions[id_hash] = dataclasses.replace(found, last_seen=now)

    def delete_session(self, id_hash: str) -> None:
        self.s.sessions.pop(id_hash, None)

    def delete_user_sessions(self, user_id: int) -> int:
        gone = [h for h, c in self.s.sessions.items() if c.user_id == user_id]
        for h in gone:
            del self.s.sessions[h]
        return len(gone)

    def delete_expired_sessions(self, now: float) -> int:
        gone = [h for h, c in self.s.sessions.items() if c.expires_at <= now]
        for h in gone:
            del self.s.sessions[h]
        return len(gone)

    # the audit log
    def add_audit(self, entry: NewAuditEntry) -> AuditEntry:
        fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(NewAuditEntry)}
        record = AuditEntry(id=self.s.new_id(), **fields)
        self.s.audit[record.id] = record
        return record

    def audit_entries(
        self, *, limit: int, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        found = sorted(self.s.audit.values(), key=lambda a: -a.id)
        found = [
            a
            for a in found
            if (before_id is None or a.id < before_id) and (since is None or a.ts >= since)
        ]
        return found[:limit]

    def _drop_auth_key(self, key_id: int) -> None:
        del self.s.auth_keys[key_id]
        for n in list(self.s.nodes.values()):
            if n.auth_key_id == key_id:
                self.s.nodes[n.id] = dataclasses.replace(n, auth_key_id=None)

    # auth keys
    def add_auth_key(self, key: NewAuthKey) -> AuthKey:
        if any(k.prefix == key.prefix for k in self.s.auth_keys.values()):
            raise StoreConflict("auth_keys.prefix")
        fields = {f.name: getattr(key, f.name) for f in dataclasses.fields(NewAuthKey)}
        record = AuthKey(
            id=self.s.new_id(), used_count=0, last_used_at=None, revoked_at=None, **fields
        )
        self.s.auth_keys[record.id] = record
        return record

    def auth_key_by_prefix(self, prefix: str) -> AuthKey | None:
        return next((k for k in self.s.auth_keys.values() if k.prefix == prefix), None)

    def auth_key_by_id(self, key_id: int) -> AuthKey | None:
        return self.s.auth_keys.get(key_id)

    def auth_keys(self, user_id: int | None = None) -> list[AuthKey]:
        keys = sorted(self.s.auth_keys.values(), key=lambda k: k.id)
        return [k for k in keys if user_id is None or k.user_id == user_id]

    def use_auth_key(self, key_id: int, now: float) -> bool:
        k = self.s.auth_keys.get(key_id)
        if k is None or k.revoked_at is not None or k.expires_at <= now:
            return False
        if not k.reusable and k.used_count > 0:
            return False
        self.s.auth_keys[key_id] = dataclasses.replace(
            k, used_count=k.used_count + 1, last_used_at=now
        )
        return True

    def revoke_auth_key(self, key_id: int, now: float) -> None:
        k = self.s.auth_keys[key_id]
        if k.revoked_at is None:
            self.s.auth_keys[key_id] = dataclasses.replace(k, revoked_at=now)

    # nodes
    def lock_addresses(self) -> None:
        pass  # transactions are serialized already

    def _check_unique(self, node: NewNode, node_id: int | None) -> None:
        for other in self.s.nodes.values():
            if other.id == node_id:
                continue
            for column in NODE_UNIQUE:
                if getattr(other, column) == getattr(node, column):
                    raise StoreConflict(f"nodes.{column}")
            disco_key = getattr(node, "disco_key", None)
            if disco_key is not None and other.disco_key == disco_key:
                raise StoreConflict("nodes.disco_key", DISCO_KEY_UNIQUE)

    def add_node(self, node: NewNode) -> Node:
        self._check_unique(node, None)
        fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(NewNode)}
        record = Node(id=self.s.new_id(), **fields)
        self.s.nodes[record.id] = record
        return record

    def update_node(self, node_id: int, **changes: object) -> Node:
        unknown = set(changes) - NODE_UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        record = dataclasses.replace(self.s.nodes[node_id], **changes)  # type: ignore[arg-type]
        self._check_unique(record, node_id)
        self.s.nodes[node_id] = record
        return record

    def delete_node(self, node_id: int) -> None:
        self.s.nodes.pop(node_id, None)
        for p in [p for p in self.s.pending.values() if p.node_id == node_id]:
            del self.s.pending[p.id]

    def node_by_id(self, node_id: int) -> Node | None:
        return self.s.nodes.get(node_id)

    def node_by_machine_key(self, machine_key: str) -> Node | None:
        return next((n for n in self.s.nodes.values() if n.machine_key == machine_key), None)

    def node_by_node_key(self, node_key: str) -> Node | None:
        return next((n for n in self.s.nodes.values() if n.node_key == node_key), None)

    def node_by_disco_key(self, disco_key: str) -> Node | None:
        return next((n for n in self.s.nodes.values() if n.disco_key == disco_key), None)

    def nodes(self, user_id: int | None = None) -> list[Node]:
        nodes = sorted(self.s.nodes.values(), key=lambda n: n.id)
        return [n for n in nodes if user_id is None or n.user_id == user_id]

    def used_ipv4s(self) -> set[str]:
        return {n.ipv4 for n in self.s.nodes.values()}

    def given_name_taken(self, name: str) -> bool:
        return any(n.given_name == name for n in self.s.nodes.values())

    # admin API keys
    def add_api_key(self, key: NewApiKey) -> ApiKey:
        if any(k.prefix == key.prefix for k in self.s.api_keys.values()):
            raise StoreConflict("api_keys.prefix")
        fields = {f.name: getattr(key, f.name) for f in dataclasses.fields(NewApiKey)}
        record = ApiKey(id=self.s.new_id(), revoked_at=None, last_used_at=None, **fields)
        self.s.api_keys[record.id] = record
        return record

    def api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        return next((k for k in self.s.api_keys.values() if k.prefix == prefix), None)

    def api_keys(self) -> list[ApiKey]:
        return sorted(self.s.api_keys.values(), key=lambda k: k.id)

    def revoke_api_key(self, key_id: int, now: float) -> None:
        k = self.s.api_keys[key_id]
        if k.revoked_at is None:
            self.s.api_keys[key_id] = dataclasses.replace(k, revoked_at=now)

    def touch_api_key(self, key_id: int, now: float) -> None:
        self.s.api_keys[key_id] = dataclasses.replace(self.s.api_keys[key_id], last_used_at=now)

    # pending interactive registrations
    def add_pending(self, pending: NewPending) -> Pending:
        if any(p.code == pending.code for p in self.s.pending.values()):
            raise StoreConflict("pending_registrations.code")
        fields = {f.name: getattr(pending, f.name) for f in dataclasses.fields(NewPending)}
        record = Pending(id=self.s.new_id(), node_id=None, **fields)
        self.s.pending[record.id] = record
        return record

    def pending_by_code(self, code: str) -> Pending | None:
        return next((p for p in self.s.pending.values() if p.code == code), None)

    def approve_pending(self, pending_id: int, node_id: int) -> None:
        self.s.pending[pending_id] = dataclasses.replace(
            self.s.pending[pending_id], node_id=node_id
        )

    def set_pending_login(self, pending_id: int, user_id: int, key_expiry: float | None) -> None:
        self.s.pending[pending_id] = dataclasses.replace(
            self.s.pending[pending_id], user_id=user_id, key_expiry=key_expiry
        )

    def delete_open_pending(self, machine_key: str) -> int:
        open_ = [
            p.id
            for p in self.s.pending.values()
            if p.machine_key == machine_key and p.node_id is None
        ]
        for pending_id in open_:
            del self.s.pending[pending_id]
        return len(open_)

    def delete_expired_pending(self, now: float) -> int:
        expired = [p.id for p in self.s.pending.values() if p.expires_at <= now]
        for pending_id in expired:
            del self.s.pending[pending_id]
        return len(expired)

    # settings
    def get_setting(self, name: str) -> str | None:
        return self.s.settings.get(name)

    def set_setting(self, name: str, value: str) -> None:
        self.s.settings[name] = value
