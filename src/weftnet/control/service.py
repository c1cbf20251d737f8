"""The coordination server's rules, in one object: ``ControlService``. No HTTP, no SQL.

Theory of operation: every operation is one transaction on the ``Store``
(``records.Store``); a rule that refuses raises before anything commits, so a refused
request leaves nothing behind. After a commit that changes what some node sees, the
service calls ``ChangeFeed.publish()`` and the map hub recomputes maps.

The rules live by concern: ``admin.AdminRules`` (users, keys, nodes, approving logins)
and ``registration.NodeRules`` (what nodes ask: register, log in, log out, map). Both
stand on ``core.ServiceCore``. The API layer maps ``Refused`` into the sealed answer's
``error`` and the other errors into HTTP statuses of the admin API.
"""

from __future__ import annotations

from weftnet.control.admin import AdminRules
from weftnet.control.core import (
    DEFAULT_AUTH_KEY_EXPIRY_S,
    DEFAULT_DNS_DOMAIN,
    DEFAULT_NODE_KEY_EXPIRY_S,
    Conflict,
    Invalid,
    NotFound,
    Refused,
    Registered,
    ServiceError,
    Settings,
    Snapshot,
    Unauthorized,
)
from weftnet.control.registration import NodeRules

__all__ = [
    "DEFAULT_AUTH_KEY_EXPIRY_S",
    "DEFAULT_DNS_DOMAIN",
    "DEFAULT_NODE_KEY_EXPIRY_S",
    "Conflict",
    "ControlService",
    "Invalid",
    "NotFound",
    "Refused",
    "Registered",
    "ServiceError",
    "Settings",
    "Snapshot",
    "Unauthorized",
]


class ControlService(AdminRules, NodeRules):
    """Everything the API layer may ask of the server; see the two rule classes."""
