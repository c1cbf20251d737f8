"""STAND-INS, DELETE AT MERGE: service methods the web console calls that other branches
of issue 15 implement (device approval, key expiry, tags, tailnet settings, the audit
log reader, pre-authorized auth keys).

``install(service)`` adds each one to a ``ControlService`` only where the service does
not have it yet (for ``create_auth_key``: where it takes no ``preauthorized``), so once
the real ones are merged this module does nothing and can be deleted with its one call
in ``service/__init__.py``. Each is a minimal real implementation with an audit entry.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weftnet.control.domain import credentials, names
from weftnet.control.domain.records import AuditEntry, AuthKey, NewAuthKey, Node, Tx
from weftnet.control.service.audit import record
from weftnet.control.service.core import (
    DEFAULT_AUTH_KEY_EXPIRY_S,
    MAX_AUTH_KEY_EXPIRY_S,
    Invalid,
    find_node,
    find_user,
    parse_duration,
)

if TYPE_CHECKING:
    from weftnet.control.service import ControlService

DEVICE_APPROVAL_SETTING = "device_approval"


@dataclass(frozen=True, slots=True)
class TailnetSettings:
    device_approval: bool = False


def install(service: ControlService) -> None:
    db = service.db

    def update_node(node_id: int, action: str, **changes: object) -> Node:
        def apply(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            updated = tx.update_node(node.id, **changes)
            record(tx, time.time(), action, "node", node.id, name=node.given_name)
            return updated

        node = db.write(apply)
        db.feed.publish()
        return node

    def authorize_node(node_id: int) -> Node:
        return update_node(node_id, "node.authorize", authorized_at=time.time())

    def set_key_expiry_disabled(node_id: int, disabled: bool) -> Node:
        return update_node(node_id, "node.key_expiry_disabled", key_expiry_disabled=disabled)

    def set_node_tags(node_id: int, tags: list[str] | tuple[str, ...]) -> Node:
        try:
            checked = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if not checked:
            raise Invalid("a tagged node needs at least one tag")
        return update_node(node_id, "node.set_tags", tags=checked, user_id=None)

    def tailnet_settings() -> TailnetSettings:
        value = db.read(lambda tx: tx.get_setting(DEVICE_APPROVAL_SETTING))
        return TailnetSettings(device_approval=value == "1")

    def set_tailnet_settings(*, device_approval: bool) -> TailnetSettings:
        def apply(tx: Tx) -> None:
            tx.set_setting(DEVICE_APPROVAL_SETTING, "1" if device_approval else "0")
            record(tx, time.time(), "settings.set", "tailnet", "", device_approval=device_approval)

        db.write(apply)
        return TailnetSettings(device_approval=device_approval)

    def list_audit(
        limit: int = 100, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        return db.read(lambda tx: tx.audit_entries(limit=limit, before_id=before_id, since=since))

    def create_auth_key(
        now: float,
        user: str | None = None,
        *,
        reusable: bool = False,
        ephemeral: bool = False,
        tags: tuple[str, ...] | list[str] = (),
        expiration: str | None = None,
        preauthorized: bool = False,
    ) -> tuple[str, AuthKey]:
        try:
            tag_set = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if user is None and not tag_set:
            raise Invalid("an auth key needs a user, or tags for tagged nodes")
        lifetime = parse_duration(expiration) if expiration else DEFAULT_AUTH_KEY_EXPIRY_S
        if lifetime > MAX_AUTH_KEY_EXPIRY_S:
            raise Invalid(f"auth key expiration {expiration} is too long")
        text, prefix = credentials.new_key(credentials.AUTH_KEY_KIND, db.random)

        def add(tx: Tx) -> AuthKey:
            owner = find_user(tx, user) if user is not None else None
            service.policy_rules.check_tag_owner(tx, user, tag_set)
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
            record(tx, now, "auth_key.create", "auth_key", key.prefix, user=user)
            return key

        return text, db.write(add)

    stand_ins: dict[str, Any] = {
        "authorize_node": authorize_node,
        "set_key_expiry_disabled": set_key_expiry_disabled,
        "set_node_tags": set_node_tags,
        "tailnet_settings": tailnet_settings,
        "set_tailnet_settings": set_tailnet_settings,
        "list_audit": list_audit,
    }
    for name, fn in stand_ins.items():
        if not hasattr(service, name):
            setattr(service, name, fn)
    if "preauthorized" not in inspect.signature(service.create_auth_key).parameters:
        service.create_auth_key = create_auth_key
