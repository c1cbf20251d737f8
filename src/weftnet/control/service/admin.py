"""Rules for what an admin does: users, auth keys, API keys, nodes, approving logins.

Every method is one transaction; a refusal raises ``Invalid``, ``NotFound``,
``Conflict`` or ``Unauthorized`` before anything commits. Keys are shown once, at
creation; the store keeps only their prefix and hash (``credentials``).
"""

from __future__ import annotations

from weftnet.control.domain import credentials, names, routes
from weftnet.control.domain.records import (
    ApiKey,
    AuthKey,
    NewApiKey,
    NewAuthKey,
    Node,
    Tx,
    User,
)
from weftnet.control.service.audit import record
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
    find_node,
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
            if node_key_expiry is not None:
                tx.set_setting("node_key_expiry", node_key_expiry)
            if dns_domain is not None:
                tx.set_setting("dns_domain", dns_domain)
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
            return tx.add_user(name, now)

        return self.db.write(add)

    def list_users(self) -> list[User]:
        return self.db.read(lambda tx: tx.users())

    def delete_user(self, name: str, force: bool = False) -> int:
        """Delete a user (and its auth keys); returns how many nodes went with it."""

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
            return tx.add_auth_key(
                NewAuthKey(
                    prefix=prefix,
                    key_hash=credentials.key_hash(text),
                    user_id=owner.id if owner else None,
                    reusable=reusable,
                    ephemeral=ephemeral,
                    tags=tag_set,
                    created_at=now,
                    expires_at=now + lifetime,
                )
            )

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
        record = self.db.write(
            lambda tx: tx.add_api_key(
                NewApiKey(
                    prefix=prefix,
                    key_hash=credentials.key_hash(text),
                    description=description[:200],
                    created_at=now,
                    expires_at=now + lifetime,
                    scope=scope,
                )
            )
        )
        return text, record

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
            return key

        return self.db.write(revoke)

    def list_nodes(self, user: str | None = None) -> list[tuple[Node, User | None]]:
        def listing(tx: Tx) -> list[tuple[Node, User | None]]:
            owner = find_user(tx, user) if user is not None else None
            nodes = tx.nodes(owner.id if owner else None)
            return [(n, tx.user_by_id(n.user_id) if n.user_id else None) for n in nodes]

        return self.db.read(listing)

    def get_node(self, node_id: int) -> Node:
        node = self.db.read(lambda tx: tx.node_by_id(node_id))
        if node is None:
            raise NotFound(f"no node with id {node_id}: see `weft-control nodes list`")
        return node

    def delete_node(self, node_id: int) -> Node:
        def delete(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            tx.delete_node(node.id)
            return node

        node = self.db.write(delete)
        self.db.feed.publish()
        return node

    def expire_node(self, node_id: int, now: float) -> Node:
        def expire(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            if node.expired_at(now):
                return node
            return tx.update_node(node.id, key_expiry=now)

        node = self.db.write(expire)
        self.db.feed.publish()
        return node

    def rename_node(self, node_id: int, name: str) -> Node:
        try:
            name = names.check_given_name(name)
        except ValueError as e:
            raise Invalid(str(e)) from None

        def rename(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            if node.given_name == name:
                return node
            if tx.given_name_taken(name):
                raise Conflict(f"the name {name} is taken by another node")
            return tx.update_node(node.id, given_name=name)

        node = self.db.write(rename)
        self.db.feed.publish()
        return node

    def approve_routes(self, node_id: int, prefixes: list[str]) -> Node:
        """Replace the node's manual route approvals (``[]`` withdraws them all);
        approving either exit route approves both."""
        try:
            approved = routes.parse_approval(prefixes)
        except ValueError as e:
            raise Invalid(f"cannot approve: {e}") from None

        def apply(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            if node.approved_routes == approved:
                return node
            return tx.update_node(node_id, approved_routes=approved)

        node = self.db.write(apply)
        self.db.feed.publish()
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
            record(tx, now, "node.register", "node", node.id, user=owner.name, code=code[:8])
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
