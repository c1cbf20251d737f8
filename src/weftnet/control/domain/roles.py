"""Who may do what in the web console and the admin API: roles and their permissions.

The roles are Tailscale's standard ones (and Headplane's): an owner and admins may do
everything; a network admin the policy, DNS, routes and auth keys; an IT admin the
machines, users and auth keys; an auditor reads everything (the audit log included) and
changes nothing; a member sees and manages only their own devices. An admin API key
(``weftapi-...``, the CLI's credential) acts with the owner's permissions.

Pure: no I/O. ``allows(role, permission)`` is the one check every route makes.
"""

from __future__ import annotations

OWNER = "owner"
ADMIN = "admin"
NETWORK_ADMIN = "network_admin"
IT_ADMIN = "it_admin"
AUDITOR = "auditor"
MEMBER = "member"
ROLES = (OWNER, ADMIN, NETWORK_ADMIN, IT_ADMIN, AUDITOR, MEMBER)

# Permissions. READ_ALL: see every machine, user, key, the policy, DNS, relays and the
# audit log. OWN_MACHINES: see and manage one's own machines (everyone has it).
READ_ALL = "read_all"
OWN_MACHINES = "own_machines"
MACHINES = "machines"  # approve, rename, expire, key expiry, tags, delete any machine
USERS = "users"  # create, delete, roles of users other than owners
AUTH_KEYS = "auth_keys"  # create and revoke auth keys for any user
POLICY = "policy"  # the access policy, DNS settings, route approvals
API_KEYS = "api_keys"  # admin API keys
SETTINGS = "settings"  # tailnet settings (device approval), relays
OWNERS = "owners"  # make or unmake an owner

_ALL = frozenset({READ_ALL, OWN_MACHINES, MACHINES, USERS, AUTH_KEYS, POLICY, API_KEYS, SETTINGS})
PERMISSIONS: dict[str, frozenset[str]] = {
    OWNER: _ALL | {OWNERS},
    ADMIN: _ALL,
    NETWORK_ADMIN: frozenset({READ_ALL, OWN_MACHINES, POLICY, AUTH_KEYS}),
    IT_ADMIN: frozenset({READ_ALL, OWN_MACHINES, MACHINES, USERS, AUTH_KEYS}),
    AUDITOR: frozenset({READ_ALL, OWN_MACHINES}),
    MEMBER: frozenset({OWN_MACHINES}),
}
LABELS = {
    OWNER: "Owner",
    ADMIN: "Admin",
    NETWORK_ADMIN: "Network admin",
    IT_ADMIN: "IT admin",
    AUDITOR: "Auditor",
    MEMBER: "Member",
}


def allows(role: str, permission: str) -> bool:
    """True if ``role`` has ``permission``; an unknown role has none (fail closed)."""
    return permission in PERMISSIONS.get(role, frozenset())


def check_role(text: str) -> str:
    """The role named by ``text``, or ValueError with the list of roles."""
    role = text.strip().lower().replace("-", "_").replace(" ", "_")
    if role not in ROLES:
        raise ValueError(f"no role {text!r}: one of {', '.join(ROLES)}")
    return role


def may_assign(actor_role: str, old_role: str, new_role: str) -> bool:
    """Whether ``actor_role`` may change a user from ``old_role`` to ``new_role``: only
    an owner makes or unmakes an owner."""
    if not allows(actor_role, USERS):
        return False
    if OWNER in (old_role, new_role):
        return allows(actor_role, OWNERS)
    return True
