"""Rules for what an admin does: users, auth keys, API keys, listing nodes, approving
logins (the changes to a node are in ``nodeadmin``).

Every method is one transaction; a refusal raises ``Invalid``, ``NotFound``,
``Conflict`` or ``Unauthorized`` before anything commits. Every change records its
audit entry (``audit.record``) in its own transaction, with key prefixes only. Keys are shown once, at
creation; the store keeps only their prefix and hash (``credentials``).
"""

from __future__ import annotations

import time

from weftnet.control.domain import credentials, names
from weftnet.control.domain.records import (
    ApiKey,
    AuthKey,
    NewApiKey,
    NewAuthKey,
    Node,
    Tx,
    User,
)
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import (
    DEFAULT_API_KEY_EXPIRY_S,
    DEFAULT_AUTH_KEY_EXPIRY_S,
    DEFAULT_DNS_DOMAIN,
    DEFAULT_NODE_KEY_EXPIRY_S,
    MAX_API_KEY_EXPIRY_S,
    MAX_AUTH_KEY_EXPIRY_S,
    Conflict,
    Db,
    Invalid,
    NotFound,
    Registered,
    Settings,
    Unauthorized,
    approve_pending,
    find_user,
    parse_duration,
)
from weftnet.control.service.policyrules import PolicyRules


class AdminRules:
    def __init__(self, db: Db, policy: PolicyRules) -> None:
        self.db = db
        self.policy = policy

    def load_settings(self, node_key_expiry: str | None, dns_domain: str | None) -> Settings:
        """Settings given now are saved; ones not given come from the database or defaults."""

        def apply(tx: Tx) -> Settings:
            for name, value in (("node_key_expiry", node_key_expiry), ("dns_domain", dns_domain)):
                if value is not None and tx.get_setting(name) != value:
                    tx.set_setting(name, value)
                    audit(tx, time.time(), "settings.set", "setting", name, value=value)
            expiry = tx.get_setting("node_key_expiry")
            domain = tx.get_setting("dns_domain")
            return Settings(
                node_key_expiry_s=(
                    names.parse_duration(expiry) if expiry else DEFAULT_NODE_KEY_EXPIRY_S
                ),
                dns_domain=domain or DEFAULT_DNS_DOMAIN,
                pending_ttl_s=self.db.settings.pending_ttl_s,
            )

        if node_key_expiry is not None:
            parse_duration(node_key_expiry)
        if dns_domain is not None and not all(
            names.dns_label(part) == part for part in dns_domain.split(".")
        ):
            raise Invalid(f"invalid DNS domain {dns_domain!r}: e.g. weft.internal")
        self.db.settings = self.db.write(apply)
        return self.db.settings

    def create_user(self, name: str, now: float) -> User:
        try:
            name = names.check_user_name(name)
        except ValueError as e:
            raise Invalid(str(e)) from None

        def add(tx: Tx) -> User:
            if tx.user_by_name(name) is not None:
                raise Conflict(f"user {name} already exists")
            user = tx.add_user(name, now)
            audit(tx, now, "user.create", "user", user.id, name=name)
            return user

        return self.db.write(add)

    def list_users(self) -> list[User]:
        return self.db.read(lambda tx: tx.users())

    def delete_user(self, name: str, force: bool = False, now: float | None = None) -> int:
        """Delete a user (and its auth keys); returns how many nodes went with it."""
        at = time.time() if now is None else now

        def delete(tx: Tx) -> int:
            user = find_user(tx, name)
            nodes = tx.nodes(user.id)
            if nodes and not force:
                raise Conflict(
                    f"user {name} still has {len(nodes)} node(s):"
                    " delete them first or use --force to delete them too"
                )
            for node in nodes:
                tx.delete_node(node.id)
            tx.delete_user(user.id)
            audit(tx, at, "user.delete", "user", user.id, name=name,
                  nodes_deleted=[n.id for n in nodes])  # fmt: skip
            return len(nodes)

        deleted = self.db.write(delete)
        if deleted:
            self.db.feed.publish()
        return deleted

    def create_auth_key(
        self,
        now: float,
        user: str | None = None,
        *,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: tuple[str, ...] | list[str] = (),
        expiration: str | None = None,
        preauthorized: bool = False,
    ) -> tuple[str, AuthKey]:
        """A new auth key: (the key text, shown once, and its record)."""
        try:
            tag_set = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if user is None and not tag_set:
            raise Invalid("an auth key needs --user, or --tags for tagged nodes")
        lifetime = _lifetime(expiration, DEFAULT_AUTH_KEY_EXPIRY_S, MAX_AUTH_KEY_EXPIRY_S, "auth")
        text, prefix = credentials.new_key(credentials.AUTH_KEY_KIND, self.db.random)

        def add(tx: Tx) -> AuthKey:
            owner = find_user(tx, user) if user is not None else None
            self.policy.check_tag_owner(tx, user, tag_set)
            key = tx.add_auth_key(
                NewAuthKey(
                    prefix=prefix,
                    key_hash=credentials.key_hash(text),
                    user_id=owner.id if owner else None,
                    reusable=reusable,
                    ephemeral=ephemeral,
                    tags=tag_set,
                    created_at=now,
                    expires_at=now + lifetime,
                    preauthorized=preauthorized,
                )
            )
            audit(tx, now, "auth_key.create", "auth_key", key.prefix, user=user,
                  reusable=reusable, ephemeral=ephemeral, preauthorized=preauthorized,
                  tags=list(tag_set), expires_at=key.expires_at)  # fmt: skip
            return key

        return text, self.db.write(add)

    def list_auth_keys(self, user: str | None = None) -> list[tuple[AuthKey, User | None]]:
        def listing(tx: Tx) -> list[tuple[AuthKey, User | None]]:
            owner = find_user(tx, user) if user is not None else None
            keys = tx.auth_keys(owner.id if owner else None)
            return [(k, tx.user_by_id(k.user_id) if k.user_id else None) for k in keys]

        return self.db.read(listing)

    def revoke_auth_key(self, prefix_or_id: str, now: float) -> AuthKey:
        _refuse_whole_key(prefix_or_id, "keys")

        def revoke(tx: Tx) -> AuthKey:
            key = self._find_auth_key(tx, prefix_or_id)
            tx.revoke_auth_key(key.id, now)
            audit(tx, now, "auth_key.revoke", "auth_key", key.prefix)
            revoked = tx.auth_key_by_id(key.id)
            assert revoked is not None
            return revoked

        return self.db.write(revoke)

    @staticmethod
    def _find_auth_key(tx: Tx, ref: str) -> AuthKey:
        ref = ref.strip()
        key: AuthKey | None = None
        if ref.isdigit():
            key = tx.auth_key_by_id(int(ref))
        if key is None:
            prefix = ref
            if ref.startswith(credentials.AUTH_KEY_KIND + "-"):
                prefix = ref.split("-")[1]
            key = tx.auth_key_by_prefix(prefix)
        if key is None:
            raise NotFound(f"no auth key {ref}: see `weft-control keys list`")
        return key

    def create_api_key(
        self,
        now: float,
        expiration: str | None = None,
        description: str = "",
        scope: str = credentials.API_KEY_SCOPE_ADMIN,
    ) -> tuple[str, ApiKey]:
        """A new API key: expires after ``expiration`` (default 90d, at most 365d)."""
        if scope not in credentials.API_KEY_SCOPES:
            raise Invalid(
                f"unknown API key scope {scope!r}: use one of {', '.join(credentials.API_KEY_SCOPES)}"
            )
        lifetime = _lifetime(expiration, DEFAULT_API_KEY_EXPIRY_S, MAX_API_KEY_EXPIRY_S, "API")
        text, prefix = credentials.new_key(credentials.API_KEY_KIND, self.db.random)

        def add(tx: Tx) -> ApiKey:
            key = tx.add_api_key(
                NewApiKey(
                    prefix=prefix,
                    key_hash=credentials.key_hash(text),
                    description=description[:200],
                    created_at=now,
                    expires_at=now + lifetime,
                    scope=scope,
                )
            )
            audit(tx, now, "api_key.create", "api_key", prefix, scope=scope,
                  description=key.description, expires_at=key.expires_at)  # fmt: skip
            return key

        return text, self.db.write(add)

    def check_api_key(self, text: str, now: float) -> ApiKey:
        """The API key ``text`` names, if it is valid now; Unauthorized otherwise."""
        try:
            prefix = credentials.key_prefix(credentials.API_KEY_KIND, text)
        except ValueError:
            raise Unauthorized("malformed API key: expected weftapi-<prefix>-<secret>") from None
        key = self.db.read(lambda tx: tx.api_key_by_prefix(prefix))
        if key is None or not credentials.key_matches(text, key.key_hash):
            raise Unauthorized("API key not valid")
        if key.revoked_at is not None:
            raise Unauthorized("API key has been revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthorized("API key has expired: create a new one")
        if key.last_used_at is None or now - key.last_used_at > 60:
            self.db.write(lambda tx: tx.touch_api_key(key.id, now))
        return key

    def list_api_keys(self) -> list[ApiKey]:
        return self.db.read(lambda tx: tx.api_keys())

    def revoke_api_key(self, prefix: str, now: float) -> ApiKey:
        _refuse_whole_key(prefix, "apikeys")
        ref = prefix.strip()
        if ref.startswith(credentials.API_KEY_KIND + "-"):
            ref = ref.split("-")[1]

        def revoke(tx: Tx) -> ApiKey:
            key = tx.api_key_by_prefix(ref)
            if key is None and ref.isdigit():
                key = next((k for k in tx.api_keys() if k.id == int(ref)), None)
            if key is None:
                raise NotFound(f"no API key {prefix}: see `weft-control apikeys list`")
            tx.revoke_api_key(key.id, now)
            audit(tx, now, "api_key.revoke", "api_key", key.prefix)
            return key

        return self.db.write(revoke)

    def list_nodes(self, user: str | None = None) -> list[tuple[Node, User | None]]:
        def listing(tx: Tx) -> list[tuple[Node, User | None]]:
            owner = find_user(tx, user) if user is not None else None
            nodes = tx.nodes(owner.id if owner else None)
            return [(n, tx.user_by_id(n.user_id) if n.user_id else None) for n in nodes]

        return self.db.read(listing)

    def node_owner(self, node: Node) -> User | None:
        """The user a node belongs to; None for a tagged node."""
        return self.db.read(lambda tx: tx.user_by_id(node.user_id) if node.user_id else None)

    def get_node(self, node_id: int) -> Node:
        node = self.db.read(lambda tx: tx.node_by_id(node_id))
        if node is None:
            raise NotFound(f"no node with id {node_id}: see `weft-control nodes list`")
        return node

    def register_by_code(self, user: str, code: str, now: float) -> Registered:
        """An admin approves an interactive login: the node is created (or re-keyed)."""
        code = code.strip()
        if code.startswith(("http://", "https://")):
            try:
                code = credentials.code_from_url(code)
            except ValueError as e:
                raise Invalid(str(e)) from None
        if not credentials.is_code(code):
            raise Invalid(f"malformed code {code!r}: it is the last part of the login URL")

        def approve(tx: Tx) -> Registered:
            tx.lock_addresses()
            owner = find_user(tx, user)
            pending = tx.pending_by_code(code)
            if pending is None or pending.expires_at <= now:
                raise NotFound(
                    f"no pending login with code {code} (codes expire after"
                    f" {names.format_duration(self.db.settings.pending_ttl_s)}): run weft up again"
                )
            node = approve_pending(tx, self.db.settings, pending, owner, now)
            audit(tx, now, "node.register", "node", node.id, name=node.given_name,
                  auth_method="admin", user=owner.name,
                  authorized=node.authorized_at is not None)  # fmt: skip
            return Registered(node, owner)

        registered = self.db.write(approve)
        self.db.feed.publish()
        return registered


def _lifetime(expiration: str | None, default_s: float, max_s: float, kind: str) -> float:
    """Seconds a new key lives: ``expiration`` parsed, or the default; at most ``max_s``."""
    if not expiration:
        return default_s
    lifetime = parse_duration(expiration)
    if lifetime > max_s:
        raise Invalid(
            f"{kind} key expiration {expiration} is too long:"
            f" at most {names.format_duration(max_s)}"
        )
    return lifetime


def _refuse_whole_key(ref: str, command: str) -> None:
    """A whole key (with its secret) is refused: it would sit in access logs."""
    if credentials.has_secret(ref):
        raise Invalid(
            "pass the key's prefix (the 12 hex digits after the first '-') or its id,"
            " not the whole key: the secret would land in access logs;"
            f" see `weft-control {command} list`"
        )
