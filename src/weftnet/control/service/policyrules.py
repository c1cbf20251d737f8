"""Rules for the access policy and device attributes: set, check and read the policy.

The policy is one HuJSON text in the settings table ("policy"). Setting it parses it,
runs its tests against the nodes there are, and stores it in one write transaction, so
a policy that fails (bad syntax, unknown names, a failing test) is refused with the
reason and the one in force stays. No policy set means everyone may reach everything
(``compile_filter(None, ...)``). The map hub reads the policy with every snapshot and
pushes each node its new filter and peers.

Device attributes (``custom:NAME`` in postures) are set by the admin per node; they
change what postures hold, so they publish a change like any other.
"""

from __future__ import annotations

import hashlib
import re
import time

from weftnet.control import policy as pol
from weftnet.control.domain.access import PolicyCache, node_info, owns_tag
from weftnet.control.domain.records import Node, Tx
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import Conflict, Db, Invalid, NotFound

POLICY_SETTING = "policy"
MAX_POLICY_BYTES = 1 << 20  # a policy file larger than 1 MiB is refused
MAX_ATTRS = 64  # custom attributes per node
_ATTR_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
AttrValue = str | float | bool


def policy_hash(text: str | None) -> str:
    """The version of a policy text an editor sends back with its change: the SHA-256
    of the text ("" when no policy is set)."""
    return hashlib.sha256(text.encode()).hexdigest() if text is not None else ""


class PolicyRules:
    def __init__(self, db: Db) -> None:
        self.db = db
        self._policy_cache = PolicyCache()

    def policy(self, tx: Tx) -> pol.Policy | None:
        """The parsed policy in force in ``tx``; None when none is set."""
        return self._policy_cache.get(tx.get_setting(POLICY_SETTING))

    def get_policy(self) -> str | None:
        """The policy text in force; None when none is set (everyone reaches everyone)."""
        return self.db.read(lambda tx: tx.get_setting(POLICY_SETTING))

    @staticmethod
    def _checked(tx: Tx, text: str) -> pol.Policy:
        if len(text.encode()) > MAX_POLICY_BYTES:
            raise Invalid(f"policy refused: larger than {MAX_POLICY_BYTES} bytes")
        try:
            policy = pol.parse_policy(text)
            if policy.tests:  # reading every node costs O(N): only for tests to run
                users = {u.id: u for u in tx.users()}
                pol.run_tests(policy, [node_info(n, users) for n in tx.nodes()])
        except pol.PolicyError as e:
            raise Invalid(f"policy refused: {e}") from None
        return policy

    def check_policy(self, text: str) -> pol.Policy:
        """Parse ``text`` and run its tests against today's nodes; change nothing."""
        return self.db.read(lambda tx: self._checked(tx, text))

    def set_policy(self, text: str, expected_hash: str | None = None) -> pol.Policy:
        """Check and store ``text`` in one transaction; Invalid leaves the old one.

        With ``expected_hash`` (``policy_hash`` of the text the editor started from),
        Conflict if the policy changed since: another session saved first."""

        def store(tx: Tx) -> pol.Policy:
            current = tx.get_setting(POLICY_SETTING)
            if expected_hash is not None and policy_hash(current) != expected_hash:
                raise Conflict(
                    "the policy was changed by someone else since you opened it:"
                    " reload it, then make your change again"
                )
            policy = self._checked(tx, text)
            tx.set_setting(POLICY_SETTING, text)
            audit(tx, time.time(), "policy.set", "policy", "policy", sha256=policy_hash(text))
            return policy

        policy = self.db.write(store)
        self.db.feed.publish()
        return policy

    def check_tag_owner(self, tx: Tx, user: str | None, tags: tuple[str, ...]) -> None:
        """Only a tag's owners may create keys for it. With no policy any tag goes; an
        admin key with no user (the API key's holder) owns every tag the policy names."""
        policy = self.policy(tx)
        if policy is None or not tags:
            return
        for tag in tags:
            if tag not in policy.tag_owners:
                raise Invalid(f'{tag} is not in the policy\'s "tagOwners": add it there first')
            if user is not None and not owns_tag(policy, user, tag):
                raise Invalid(
                    f'user {user} does not own {tag}: the policy\'s "tagOwners" lists'
                    f" {', '.join(policy.tag_owners[tag]) or 'no one'}"
                )

    # -- device attributes ---------------------------------------------------------

    def set_node_attr(self, node_id: int, name: str, value: AttrValue | None) -> Node:
        """Set (or with None remove) custom attribute ``name`` of a node."""
        name = name.removeprefix("custom:")
        if not _ATTR_NAME.match(name):
            raise Invalid(f"invalid attribute name {name!r}: a letter, then letters, digits, _ . -")
        if isinstance(value, str) and (len(value) > 256 or not value.isprintable()):
            raise Invalid("invalid attribute value: at most 256 printable characters")

        def apply(tx: Tx) -> Node:
            node = tx.node_by_id(node_id)
            if node is None:
                raise NotFound(f"no node with id {node_id}: see `weft-control nodes list`")
            attrs = dict(node.attrs)
            if value is None:
                if name not in attrs:
                    raise NotFound(f"node {node_id} has no attribute custom:{name}")
                del attrs[name]
            else:
                attrs[name] = value
                if len(attrs) > MAX_ATTRS:
                    raise Invalid(f"a node has at most {MAX_ATTRS} attributes")
            audit(tx, time.time(), "node.attribute", "node", node_id,
                  name=f"custom:{name}", value=value)  # fmt: skip
            return tx.update_node(node_id, attrs=tuple(sorted(attrs.items())))

        node = self.db.write(apply)
        self.db.feed.publish()
        return node
