"""The service's foundations: errors, settings, and the transaction plumbing.

``Db`` holds what the rule classes share - the store, the change feed, the settings and
the source of randomness - and runs their transactions (``write``, retried on a unique
constraint, and ``read``). Each rule class (``policyrules.PolicyRules``,
``admin.AdminRules``, ``registration.NodeRules``) gets the one ``Db`` by composition;
``service.ControlService`` is the facade over them. The module functions below are the
lookups and the node upsert that more than one rule class needs; they work on a ``Tx``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from weftnet import controlbox, tailcfg
from weftnet.control.domain import ipam, names
from weftnet.control.domain.records import (
    ChangeFeed,
    NewNode,
    Node,
    NullFeed,
    Pending,
    Store,
    StoreConflict,
    Tx,
    User,
)
from weftnet.control.policy import Policy
from weftnet.wireguard import crypto

DEFAULT_NODE_KEY_EXPIRY_S = 180 * 86400.0
DEFAULT_AUTH_KEY_EXPIRY_S = 90 * 86400.0
MAX_AUTH_KEY_EXPIRY_S = 365 * 86400.0  # a longer auth key --expiration is refused
DEFAULT_API_KEY_EXPIRY_S = 90 * 86400.0
MAX_API_KEY_EXPIRY_S = 365 * 86400.0
DEFAULT_DNS_DOMAIN = "weft.internal"
DEVICE_APPROVAL_SETTING = "device_approval"  # "on": new devices wait for an admin
PENDING_TTL_S = 30 * 60.0  # an interactive login code is good for this long
WRITE_ATTEMPTS = 8  # a transaction refused by a unique constraint is retried this often
MAX_ENDPOINTS = tailcfg.MAX_ENDPOINTS  # endpoints kept from one map request

T = TypeVar("T")


class ServiceError(Exception):
    """A refusal with a message a user can act on."""


class Invalid(ServiceError):
    pass


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class Unauthorized(ServiceError):
    pass


class Forbidden(ServiceError):
    """A valid API key whose scope does not allow this."""


class Refused(ServiceError):
    """The node protocol refuses this request; the message goes into ``error`` and
    ``kind`` (one of ``tailcfg.ERROR_KINDS``) into ``error_kind``."""

    def __init__(self, message: str, kind: str = tailcfg.ERROR_BAD_REQUEST) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Settings:
    node_key_expiry_s: float = DEFAULT_NODE_KEY_EXPIRY_S
    dns_domain: str = DEFAULT_DNS_DOMAIN
    pending_ttl_s: float = PENDING_TTL_S


@dataclass(frozen=True, slots=True)
class TailnetSettings:
    """The tailnet's settings an admin changes at run time (the settings table)."""

    device_approval: bool = False  # new devices wait for an admin before joining


def tailnet_settings(tx: Tx) -> TailnetSettings:
    return TailnetSettings(device_approval=tx.get_setting(DEVICE_APPROVAL_SETTING) == "on")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every node and user at one moment: what the map hub builds maps from."""

    nodes: dict[int, Node] = field(default_factory=dict)
    users: dict[int, User] = field(default_factory=dict)
    policy: Policy | None = None  # None: no policy set, everyone reaches everyone
    dns_config: tailcfg.DNSConfig | None = None  # None: the default under settings.dns_domain


@dataclass(frozen=True, slots=True)
class Registered:
    node: Node
    user: User | None


class Db:
    """The store, the change feed, the settings and entropy, shared by the rule classes."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        feed: ChangeFeed | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.feed: ChangeFeed = feed or NullFeed()
        self.random = random_bytes

    def write(
        self,
        fn: Callable[[Tx], T],
        refusals: Mapping[str, Callable[[], ServiceError]] | None = None,
    ) -> T:
        """Run ``fn`` in a write transaction; retry when a unique constraint refused it,
        or raise ``refusals[constraint]()`` if it names that constraint (a race the rule
        in ``fn`` lost: the database's unique index is the last word)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.store.transaction(write=True) as tx:
                    return fn(tx)
            except StoreConflict as e:
                refusal = refusals.get(e.constraint) if refusals and e.constraint else None
                if refusal is not None:
                    raise refusal() from None
                if attempt == WRITE_ATTEMPTS - 1:
                    raise Conflict(
                        "the database stayed busy with conflicting writes; try again"
                    ) from None
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[Tx], T]) -> T:
        with self.store.transaction(write=False) as tx:
            return fn(tx)


def parse_duration(text: str) -> float:
    try:
        return names.parse_duration(text)
    except ValueError as e:
        raise Invalid(str(e)) from None


def find_user(tx: Tx, name: str) -> User:
    user = tx.user_by_name(name)
    if user is None:
        raise NotFound(f"no user named {name}: see `weft-control users list`")
    return user


def find_node(tx: Tx, node_id: int) -> Node:
    node = tx.node_by_id(node_id)
    if node is None:
        raise NotFound(f"no node with id {node_id}: see `weft-control nodes list`")
    return node


def registered(tx: Tx, node: Node) -> Registered:
    return Registered(node, tx.user_by_id(node.user_id) if node.user_id else None)


def check_node_key_owner(tx: Tx, machine_key: str, node_key: str) -> None:
    holder = tx.node_by_node_key(node_key)
    if holder is not None and holder.machine_key != machine_key:
        raise Refused("this node key is registered to another machine: refused")


def upsert_node(
    tx: Tx,
    settings: Settings,
    *,
    machine_key: str,
    node_key: str,
    hostname: str,
    user_id: int | None,
    tags: tuple[str, ...],
    ephemeral: bool,
    auth_key_id: int | None,
    now: float,
    auth_method: str,
    preauthorized: bool = False,
) -> Node:
    """The machine's node, with the new key and owner; created with fresh addresses
    and a unique name if the machine has none. Addresses never change.

    Device approval (``authorized_at``): authorized now when the tailnet does not ask
    for approval or the login was pre-authorized; a re-login by the same owner (user
    and tags) keeps the node's authorization; else it waits for an admin (None)."""
    hostname = names.clean_hostname(hostname)
    expiry: float | None = now + settings.node_key_expiry_s
    existing = tx.node_by_machine_key(machine_key)
    authorized_at: float | None = now
    if tailnet_settings(tx).device_approval and not preauthorized:
        same_owner = existing is not None and existing.user_id == user_id and existing.tags == tags
        authorized_at = existing.authorized_at if existing is not None and same_owner else None
    elif existing is not None and existing.authorized_at is not None:
        authorized_at = existing.authorized_at
    if existing is not None:
        if existing.key_expiry_disabled:
            expiry = None
        return tx.update_node(
            existing.id,
            node_key=node_key,
            hostname=hostname or existing.hostname,
            user_id=user_id,
            tags=tags,
            ephemeral=ephemeral,
            auth_key_id=auth_key_id,
            key_expiry=expiry,
            authorized_at=authorized_at,
            auth_method=auth_method,
        )
    used = {ipam.host_number(ip) for ip in tx.used_ipv4s()}
    try:
        ipv4, ipv6 = ipam.addresses(ipam.allocate(used))
    except ipam.AddressPoolExhausted as e:
        raise Refused(str(e)) from None
    return tx.add_node(
        NewNode(
            machine_key=machine_key,
            node_key=node_key,
            user_id=user_id,
            tags=tags,
            hostname=hostname,
            given_name=names.unique_given_name(hostname, tx.given_name_taken),
            ipv4=ipv4,
            ipv6=ipv6,
            ephemeral=ephemeral,
            created_at=now,
            key_expiry=expiry,
            auth_key_id=auth_key_id,
            authorized_at=authorized_at,
            auth_method=auth_method,
        )
    )


def approve_pending(
    tx: Tx,
    settings: Settings,
    pending: Pending,
    owner: User,
    now: float,
    *,
    key_expiry: float | None = None,
    auth_method: str = "admin",
) -> Node:
    """Register the node of an unexpired pending login as ``owner`` (created, or the
    machine's node re-keyed and re-owned); ``key_expiry`` None: the server's default."""
    if pending.node_id is not None:
        raise Conflict(f"the login with code {pending.code} was already approved")
    try:
        check_node_key_owner(tx, pending.machine_key, pending.node_key)
    except Refused as e:
        raise Conflict(str(e)) from None
    node = upsert_node(
        tx,
        settings,
        machine_key=pending.machine_key,
        node_key=pending.node_key,
        hostname=pending.hostname,
        user_id=owner.id,
        tags=(),
        ephemeral=False,
        auth_key_id=None,
        now=now,
        auth_method=auth_method,
    )
    changes: dict[str, object] = {}
    if key_expiry is not None:
        changes["key_expiry"] = key_expiry
    if pending.os and not node.os:
        changes["os"] = pending.os
    node = tx.update_node(node.id, **changes)
    tx.approve_pending(pending.id, node.id)
    return node


def device_info(hostinfo: tailcfg.Hostinfo) -> tuple[str, str]:
    """(os, client_version) as stored: printable, lowercased OS, bounded lengths."""
    os_name = "".join(c for c in hostinfo.os.strip().lower() if c.isprintable())[:32]
    version = "".join(c for c in hostinfo.client_version.strip() if c.isprintable())[:64]
    return os_name, version


def check_version(version: int) -> None:
    if version < tailcfg.MIN_CAPABILITY_VERSION:
        raise Refused(
            f"client capability version {version} is too old: this server needs at least"
            f" {tailcfg.MIN_CAPABILITY_VERSION}; upgrade weftd"
        )


def check_key(prefix: str, text: str, what: str) -> None:
    """Refuse a key that is malformed or a low-order X25519 point: every peer would fail
    to make a session (or seal a disco message) with it."""
    try:
        raw = controlbox.key_from_text(prefix, text)
    except ValueError as e:
        raise Refused(f"{what}: {e}") from None
    if crypto.is_low_order(raw):
        shown = f"{prefix}{raw.hex()[:4]}\N{HORIZONTAL ELLIPSIS}"
        raise Refused(f"{what} {shown}: a low-order X25519 point, no session can use it")
