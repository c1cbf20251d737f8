"""The access policy as the server's rules use it (pure): a node as the policy sees it,
tag ownership, and the parsed policy cached per stored text.

A stored policy that no longer parses (only one an older server accepted can) turns into
``DENY_ALL``: the server fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from weftnet.control import policy as pol
from weftnet.control.domain.records import Node, User

log = logging.getLogger(__name__)


def node_info(node: Node, users: Mapping[int, User]) -> pol.NodeInfo:
    """A node as the policy sees it."""
    user = users.get(node.user_id) if node.user_id is not None else None
    return pol.NodeInfo(
        id=node.id,
        user=user.name if user is not None else None,
        tags=node.tags,
        ips=(node.ipv4, node.ipv6),
        os=node.os,
        attrs=dict(node.attrs),
        client_version=node.client_version,
        hostname=node.hostname,
    )


def owns_tag(policy: pol.Policy, user: str, tag: str) -> bool:
    """Whether ``user`` may create keys for ``tag`` (tagOwners: users, groups, members)."""
    for owner in policy.tag_owners.get(tag, ()):
        if owner in (user, "autogroup:member"):
            return True
        if owner.startswith("group:") and user in policy.groups.get(owner, frozenset()):
            return True
    return False


# What a stored policy that no longer parses turns into: nothing reaches anything.
DENY_ALL = pol.Policy(groups={}, hosts={}, tag_owners={}, acls=(), tests=())


class PolicyCache:
    """Parses each stored policy text once."""

    def __init__(self) -> None:
        self._text: str | None = None
        self._policy: pol.Policy | None = None

    def get(self, text: str | None) -> pol.Policy | None:
        if text is None:
            return None
        if text != self._text:
            try:
                self._policy = pol.parse_policy(text)
            except pol.PolicyError as e:
                # Only a stored policy an older server accepted can get here: fail closed.
                log.error("the stored policy does not parse (%s): denying all traffic", e)
                self._policy = DENY_ALL
            self._text = text
        return self._policy
