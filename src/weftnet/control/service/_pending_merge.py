"""STAND-INS, DELETE AT MERGE: service methods the web console calls that other branches
of issue 15 implement (device approval, key expiry, tags, tailnet settings, the audit
log reader, pre-authorized auth keys).

``PendingMerge`` is a base class of ``ControlService``: the real methods, once merged
(set as instance attributes in its ``__init__``), take precedence over these.
``install_create_auth_key`` replaces ``create_auth_key`` only where it takes no
``preauthorized``. At merge: delete this module, the base class and the one call in
``service/__init__.py``. Each is a minimal real implementation with an audit entry.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weftnet.control.domain import credentials, names
from weftnet.control.domain.records import AuditEntry, AuthKey, NewAuthKey, Node, Tx
from weftnet.control.service.admin import _lifetime
from weftnet.control.service.audit import record
from weftnet.control.service.core import (
    DEFAULT_AUTH_KEY_EXPIRY_S,
    MAX_AUTH_KEY_EXPIRY_S,
    Db,
    Invalid,
    find_node,
    find_user,
)
from weftnet.control.service.policyrules import PolicyRules

if TYPE_CHECKING:
    from weftnet.control.service import ControlService

DEVICE_APPROVAL_SETTING = "device_approval"


@dataclass(frozen=True, slots=True)
class TailnetSettings:
    device_approval: bool = False


class PendingMerge:
    """A base class of ``ControlService``: the stand-ins. A real method merged into the
    service (an instance attribute set in its ``__init__``) takes precedence."""

    db: Db
    policy_rules: PolicyRules

    def _update_node(self, node_id: int, action: str, **changes: object) -> Node:
        def apply(tx: Tx) -> Node:
            node = find_node(tx, node_id)
            updated = tx.update_node(node.id, **changes)
            record(tx, time.time(), action, "node", node.id, name=node.given_name)
            return updated

        node = self.db.write(apply)
        self.db.feed.publish()
        return node

    def authorize_node(self, node_id: int) -> Node:
        return self._update_node(node_id, "node.authorize", authorized_at=time.time())

    def set_key_expiry_disabled(self, node_id: int, disabled: bool) -> Node:
        return self._update_node(node_id, "node.key_expiry_disabled", key_expiry_disabled=disabled)

    def set_node_tags(self, node_id: int, tags: list[str] | tuple[str, ...]) -> Node:
        try:
            checked = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if not checked:
            raise Invalid("a tagged node needs at least one tag")
        return self._update_node(node_id, "node.set_tags", tags=checked, user_id=None)

    def tailnet_settings(self) -> TailnetSettings:
        value = self.db.read(lambda tx: tx.get_setting(DEVICE_APPROVAL_SETTING))
        return TailnetSettings(device_approval=value == "1")

    def set_tailnet_settings(self, *, device_approval: bool) -> TailnetSettings:
        def apply(tx: Tx) -> None:
            tx.set_setting(DEVICE_APPROVAL_SETTING, "1" if device_approval else "0")
            record(tx, time.time(), "settings.set", "tailnet", "", device_approval=device_approval)

        self.db.write(apply)
        return TailnetSettings(device_approval=device_approval)

    def list_audit(
        self, limit: int = 100, before_id: int | None = None, since: float | None = None
    ) -> list[AuditEntry]:
        return self.db.read(
            lambda tx: tx.audit_entries(limit=limit, before_id=before_id, since=since)
        )


def install_create_auth_key(service: ControlService) -> None:
    """``create_auth_key`` with ``preauthorized``, where the service's lacks it: keys
    without it are still made by the service's own method."""
    original = service.create_auth_key
    if "preauthorized" in inspect.signature(original).parameters:
        return
    db = service.db

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
        if not preauthorized:
            return original(
                now, user, reusable=reusable, ephemeral=ephemeral, tags=tags, expiration=expiration
            )
        try:
            tag_set = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None
        if user is None and not tag_set:
            raise Invalid("an auth key needs --user, or --tags for tagged nodes")
        lifetime = _lifetime(expiration, DEFAULT_AUTH_KEY_EXPIRY_S, MAX_AUTH_KEY_EXPIRY_S, "auth")
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

    service.create_auth_key = create_auth_key
