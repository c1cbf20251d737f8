"""The coordination server's rules, in one object: ``ControlService``. No HTTP, no SQL.

Theory of operation: every operation is one transaction on the ``Store``
(``records.Store``); a rule that refuses raises before anything commits, so a refused
request leaves nothing behind. After a commit that changes what some node sees, the
service calls ``ChangeFeed.publish()`` and the map hub recomputes maps.

The rules live by concern, as plain classes that share one ``core.Db`` (store, change
feed, settings, entropy) by composition: ``policyrules.PolicyRules`` (the access policy,
device attributes), ``dnsrules.DnsRules`` (the DNS document), ``admin.AdminRules``
(users, keys, approving logins), ``nodeadmin.NodeAdminRules`` (an admin's changes to a
node: device approval, key expiry, tags...), ``tailnet.TailnetRules`` (run-time settings,
the audit log) and ``registration.NodeRules`` (what nodes ask:
register, log in, log out, map); ``identityrules.IdentityRules`` maps logins at the
OpenID provider to users. The two latter ask ``PolicyRules`` for the policy in
force; the node rules ask ``DnsRules`` for the DNS settings of the map.
``ControlService`` is the facade the server talks to: it builds the four and forwards each public rule to its owner. The
API layer maps ``Refused`` into the sealed answer's ``error`` and the other errors into
HTTP statuses of the admin API.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from weftnet.control.domain.records import ChangeFeed, Store
from weftnet.control.service.admin import AdminRules
from weftnet.control.service.consoleauth import ConsoleAuth
from weftnet.control.service.core import (
    DEFAULT_AUTH_KEY_EXPIRY_S,
    DEFAULT_DNS_DOMAIN,
    DEFAULT_NODE_KEY_EXPIRY_S,
    Conflict,
    Db,
    Forbidden,
    Invalid,
    NotFound,
    Refused,
    Registered,
    ServiceError,
    Settings,
    Snapshot,
    TailnetSettings,
    Unauthorized,
)
from weftnet.control.service.dnsrules import DnsRules
from weftnet.control.service.identityrules import IdentityRules, LoginDenied, SignInRules
from weftnet.control.service.nodeadmin import NodeAdminRules
from weftnet.control.service.policyrules import PolicyRules
from weftnet.control.service.registration import NodeRules
from weftnet.control.service.tailnet import TailnetRules

__all__ = [
    "DEFAULT_AUTH_KEY_EXPIRY_S",
    "DEFAULT_DNS_DOMAIN",
    "DEFAULT_NODE_KEY_EXPIRY_S",
    "Conflict",
    "ControlService",
    "Forbidden",
    "Invalid",
    "LoginDenied",
    "NotFound",
    "Refused",
    "Registered",
    "ServiceError",
    "Settings",
    "SignInRules",
    "Snapshot",
    "TailnetSettings",
    "Unauthorized",
]


class ControlService:
    """Everything the API layer may ask of the server; see the three rule classes."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        feed: ChangeFeed | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.db = Db(store, settings, feed, random_bytes)
        self.policy_rules = PolicyRules(self.db)
        self.admin_rules = AdminRules(self.db, self.policy_rules)
        self.dns_rules = DnsRules(self.db)
        self.node_rules = NodeRules(self.db, self.policy_rules, self.dns_rules)
        self.identity_rules = IdentityRules(self.db)
        self.node_admin_rules = NodeAdminRules(self.db, self.policy_rules)
        self.tailnet_rules = TailnetRules(self.db)
        self.console_auth = ConsoleAuth(self.db)
        # The access policy and device attributes.
        self.get_policy = self.policy_rules.get_policy
        self.check_policy = self.policy_rules.check_policy
        self.set_policy = self.policy_rules.set_policy
        self.set_node_attr = self.policy_rules.set_node_attr
        # The DNS settings.
        self.get_dns = self.dns_rules.get_dns
        self.check_dns = self.dns_rules.check_dns
        self.set_dns = self.dns_rules.set_dns
        # What an admin does.
        self.load_settings = self.admin_rules.load_settings
        self.create_user = self.admin_rules.create_user
        self.list_users = self.admin_rules.list_users
        self.delete_user = self.admin_rules.delete_user
        self.create_auth_key = self.admin_rules.create_auth_key
        self.list_auth_keys = self.admin_rules.list_auth_keys
        self.revoke_auth_key = self.admin_rules.revoke_auth_key
        self.create_api_key = self.admin_rules.create_api_key
        self.check_api_key = self.admin_rules.check_api_key
        self.list_api_keys = self.admin_rules.list_api_keys
        self.revoke_api_key = self.admin_rules.revoke_api_key
        self.list_nodes = self.admin_rules.list_nodes
        self.get_node = self.admin_rules.get_node
        self.node_owner = self.admin_rules.node_owner
        self.register_by_code = self.admin_rules.register_by_code
        # Logins at the OpenID provider, and links of identities to users.
        self.sign_in = self.identity_rules.sign_in
        self.begin_oidc_login = self.identity_rules.begin_login
        self.take_oidc_login = self.identity_rules.take_login
        self.open_pending = self.identity_rules.open_pending
        self.attach_login = self.identity_rules.attach_login
        self.confirm_login = self.identity_rules.confirm_login
        self.list_identities = self.identity_rules.identities
        self.link_identity = self.identity_rules.link
        self.unlink_identity = self.identity_rules.unlink
        # What an admin does to a node.
        self.delete_node = self.node_admin_rules.delete_node
        self.expire_node = self.node_admin_rules.expire_node
        self.rename_node = self.node_admin_rules.rename_node
        self.approve_routes = self.node_admin_rules.approve_routes
        self.authorize_node = self.node_admin_rules.authorize_node
        self.set_key_expiry_disabled = self.node_admin_rules.set_key_expiry_disabled
        self.set_node_tags = self.node_admin_rules.set_node_tags
        # The tailnet's settings and the audit log.
        self.tailnet_settings = self.tailnet_rules.tailnet_settings
        self.set_tailnet_settings = self.tailnet_rules.set_tailnet_settings
        self.list_audit = self.tailnet_rules.list_audit
        # What nodes ask, and what the map hub reads.
        self.register = self.node_rules.register
        self.map_request = self.node_rules.map_request
        self.snapshot = self.node_rules.snapshot
        self.node_disconnected = self.node_rules.node_disconnected
        self.delete_ephemeral = self.node_rules.delete_ephemeral
        self.purge_expired_logins = self.node_rules.purge_expired_logins
        # The web console: local passwords, sessions, roles.
        self.set_user_password = self.console_auth.set_password
        self.set_user_role = self.console_auth.set_user_role

    @property
    def store(self) -> Store:
        return self.db.store

    @property
    def settings(self) -> Settings:
        return self.db.settings

    @property
    def feed(self) -> ChangeFeed:
        return self.db.feed
