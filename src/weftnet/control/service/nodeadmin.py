"""Rules for what an admin does to nodes: delete, expire, rename, routes, device
approval, key expiry and tags.

Every method is one write transaction that records its audit entry (``audit.record``)
before it commits, and publishes on the change feed after; a refusal raises before
anything commits, so it leaves no entry. A change that changes nothing (renaming a node
to its own name) commits nothing and records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from weftnet.control.domain import names, routes
from weftnet.control.domain.records import Node, Tx
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import Conflict, Db, Invalid, find_node
from weftnet.control.service.policyrules import PolicyRules


class NodeAdminRules:
    def __init__(self, db: Db, policy: PolicyRules) -> None:
        self.db = db
        self.policy = policy

    def _change(
        self, node_id: int, apply: Callable[[Tx, Node, float], Node], now: float | None
    ) -> Node:
        """Run ``apply(tx, node, now)`` on the node in a write transaction, then publish."""
        at = time.time() if now is None else now
        node = self.db.write(lambda tx: apply(tx, find_node(tx, node_id), at))
        self.db.feed.publish()
        return node

    def delete_node(self, node_id: int, now: float | None = None) -> Node:
        def delete(tx: Tx, node: Node, now: float) -> Node:
            tx.delete_node(node.id)
            audit(tx, now, "node.delete", "node", node.id, name=node.given_name)
            return node

        return self._change(node_id, delete, now)

    def expire_node(self, node_id: int, now: float | None = None) -> Node:
        def expire(tx: Tx, node: Node, now: float) -> Node:
            if node.expired_at(now):
                return node
            audit(tx, now, "node.expire", "node", node.id, name=node.given_name)
            return tx.update_node(node.id, key_expiry=now)

        return self._change(node_id, expire, now)

    def rename_node(self, node_id: int, name: str, now: float | None = None) -> Node:
        try:
            name = names.check_given_name(name)
        except ValueError as e:
            raise Invalid(str(e)) from None

        def rename(tx: Tx, node: Node, now: float) -> Node:
            if node.given_name == name:
                return node
            if tx.given_name_taken(name):
                raise Conflict(f"the name {name} is taken by another node")
            audit(tx, now, "node.rename", "node", node.id, old=node.given_name, new=name)
            return tx.update_node(node.id, given_name=name)

        return self._change(node_id, rename, now)

    def approve_routes(self, node_id: int, prefixes: list[str], now: float | None = None) -> Node:
        """Replace the node's manual route approvals (``[]`` withdraws them all);
        approving either exit route approves both."""
        try:
            approved = routes.parse_approval(prefixes)
        except ValueError as e:
            raise Invalid(f"cannot approve: {e}") from None

        def apply(tx: Tx, node: Node, now: float) -> Node:
            if node.approved_routes == approved:
                return node
            audit(tx, now, "node.routes", "node", node.id, name=node.given_name,
                  old=list(node.approved_routes), new=list(approved))  # fmt: skip
            return tx.update_node(node.id, approved_routes=approved)

        return self._change(node_id, apply, now)

    def authorize_node(self, node_id: int, now: float | None = None) -> Node:
        """Approve a device waiting for approval: it joins every map it may be in."""

        def authorize(tx: Tx, node: Node, now: float) -> Node:
            if node.authorized_at is not None:
                return node
            audit(tx, now, "node.authorize", "node", node.id, name=node.given_name)
            return tx.update_node(node.id, authorized_at=now)

        return self._change(node_id, authorize, now)

    def set_key_expiry_disabled(
        self, node_id: int, disabled: bool, now: float | None = None
    ) -> Node:
        """Turn the node's key expiry off (which revives an expired node: its key never
        expires) or on again (it expires ``node_key_expiry`` from now)."""

        def apply(tx: Tx, node: Node, now: float) -> Node:
            expiry = None if disabled else now + self.db.settings.node_key_expiry_s
            if node.key_expiry_disabled == disabled and (node.key_expiry is None) == disabled:
                return node  # already so (an enabled expiry keeps its date)
            audit(tx, now, "node.key_expiry", "node", node.id, name=node.given_name,
                  disabled=disabled)  # fmt: skip
            return tx.update_node(node.id, key_expiry_disabled=disabled, key_expiry=expiry)

        return self._change(node_id, apply, now)

    def set_node_tags(self, node_id: int, tags: list[str], now: float | None = None) -> Node:
        """Make the node a tagged node with ``tags`` (checked as an admin's auth key's
        tags are: with a policy, each must be in its "tagOwners"). A tagged node has no
        user (as with a tagged auth key), so at least one tag is needed."""
        try:
            tag_set = names.check_tags(tags)
        except ValueError as e:
            raise Invalid(str(e)) from None

        def apply(tx: Tx, node: Node, now: float) -> Node:
            if not tag_set:
                raise Invalid("a node needs at least one tag: tags replace its user as owner")
            self.policy.check_tag_owner(tx, None, tag_set)
            if node.tags == tag_set and node.user_id is None:
                return node
            audit(tx, now, "node.tags", "node", node.id, name=node.given_name,
                  old=list(node.tags), new=list(tag_set))  # fmt: skip
            return tx.update_node(node.id, tags=tag_set, user_id=None)

        return self._change(node_id, apply, now)
