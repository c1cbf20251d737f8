"""The node protocol's rules: registration, login, logout, map requests. No HTTP or SQL.

Theory of operation: every operation is one transaction on the ``Store``; a rule that
refuses raises before anything commits, so a refused request leaves nothing behind.
Registration has three ways in (issue 3):

- with an auth key: the key is looked up by its prefix, its hash compared in constant
  time, and its use counted by ``Tx.use_auth_key`` - an atomic conditional update in
  the same transaction that creates the node - so a single-use key gives exactly one
  node however many registrations race for it;
- interactively: a pending registration with a random code; the node gets
  ``<server>/register/<code>`` and re-sends its request with ``followup`` until an
  admin approves the code (``register_by_code``);
- again from a machine that has a node: the same row, the same addresses, the new
  node key (node keys rotate on re-login; a node key belongs to one machine only).

Protocol refusals (a bad auth key, a node key of another machine) raise ``Refused``;
the API layer puts the message in the sealed answer's ``error``. Admin mistakes raise
``Invalid``/``NotFound``/``Conflict``. Every method takes ``now`` (unix seconds).
After a commit that changes what some node sees, the service publishes on the
``ChangeFeed``.
"""

from __future__ import annotations

import logging
import time

from weftnet import serverkey, tailcfg
from weftnet.control.domain import credentials, names, netmap, relays, routes
from weftnet.control.domain.records import (
    DISCO_KEY_UNIQUE,
    NewPending,
    Node,
    Tx,
)
from weftnet.control.service.audit import record as audit
from weftnet.control.service.core import (
    Db,
    Refused,
    Registered,
    Snapshot,
    check_key,
    check_node_key_owner,
    check_version,
    device_info,
    registered,
    upsert_node,
)
from weftnet.control.service.dnsrules import DnsRules
from weftnet.control.service.policyrules import PolicyRules

log = logging.getLogger(__name__)

DISCO_KEY_TAKEN = "this disco key is used by another node: restart weftd"


class NodeRules:
    def __init__(self, db: Db, policy: PolicyRules, dns: DnsRules | None = None) -> None:
        self.db = db
        self.policy = policy
        self.dns = dns

    def register(
        self, machine_key: str, req: tailcfg.RegisterRequest, now: float, server_url: str
    ) -> tailcfg.RegisterResponse | Registered:
        """Answer a RegisterRequest. Returns Registered when the node is authorized, else
        the RegisterResponse to send (a login URL, a logout, or an ``error``).
        Raises Refused for a request that must be refused."""
        check_version(req.version)
        check_key(tailcfg.NODE_KEY_PREFIX, req.node_key, "node key")
        if req.old_node_key:
            check_key(tailcfg.NODE_KEY_PREFIX, req.old_node_key, "old node key")
        if req.logout:
            return self._logout(machine_key, req, now)
        if req.followup:
            return self._followup(machine_key, req, now)
        if req.auth_key:
            registered = self._register_with_key(machine_key, req, now)
            self.db.feed.publish()
            return registered
        return self._register_interactive(machine_key, req, now, server_url)

    def _register_with_key(
        self, machine_key: str, req: tailcfg.RegisterRequest, now: float
    ) -> Registered:
        assert req.auth_key is not None
        text, _ = serverkey.split_auth_key(req.auth_key)  # the node checked the fingerprint
        try:
            prefix = credentials.key_prefix(credentials.AUTH_KEY_KIND, text)
        except ValueError:
            raise Refused(
                "auth key not valid: expected weftkey-<prefix>-<secret>;"
                " create one with `weft-control keys create`"
            ) from None

        def register(tx: Tx) -> Registered:
            tx.lock_addresses()
            key = tx.auth_key_by_prefix(prefix)
            if key is None or not credentials.key_matches(text, key.key_hash):
                raise Refused("auth key not valid: check it, or create a new one")
            if key.revoked_at is not None:
                raise Refused("auth key has been revoked: create a new one")
            if key.expires_at <= now:
                raise Refused("auth key has expired: create a new one")
            if not key.reusable and key.used_count > 0:
                raise Refused("auth key has already been used (it is single-use): create a new one")
            check_node_key_owner(tx, machine_key, req.node_key)
            if not tx.use_auth_key(key.id, now):
                # Another registration took this single-use key between our read and now.
                raise Refused("auth key has already been used (it is single-use): create a new one")
            owner = tx.user_by_id(key.user_id) if key.user_id and not key.tags else None
            node = upsert_node(
                tx,
                self.db.settings,
                machine_key=machine_key,
                node_key=req.node_key,
                hostname=req.hostinfo.hostname,
                user_id=owner.id if owner else None,
                tags=key.tags,
                ephemeral=key.ephemeral,
                auth_key_id=key.id,
                now=now,
                auth_method="authkey",
                preauthorized=key.preauthorized,
            )
            audit(
                tx,
                now,
                "node.register",
                "node",
                node.id,
                name=node.given_name,
                auth_method="authkey",
                auth_key=key.prefix,
                user=owner.name if owner else None,
                tags=list(node.tags),
                authorized=node.authorized_at is not None,
            )
            return Registered(node, owner)

        return self.db.write(register)

    def _register_interactive(
        self, machine_key: str, req: tailcfg.RegisterRequest, now: float, server_url: str
    ) -> tailcfg.RegisterResponse | Registered:
        rotated = False

        def login(tx: Tx) -> tailcfg.RegisterResponse | Registered:
            nonlocal rotated
            check_node_key_owner(tx, machine_key, req.node_key)
            node = tx.node_by_machine_key(machine_key)
            if node is not None and not node.expired_at(now):
                if node.node_key == req.node_key:
                    return registered(tx, node)
                if req.old_node_key == node.node_key:
                    # A key rotation while logged in: proven by the machine key.
                    rotated = True
                    audit(tx, now, "node.rotate_key", "node", node.id, name=node.given_name)
                    return registered(tx, tx.update_node(node.id, node_key=req.node_key))
            tx.delete_expired_pending(now)
            tx.delete_open_pending(machine_key)  # one open login per machine: the newest
            code = credentials.new_code(self.db.random)
            tx.add_pending(
                NewPending(
                    code=code,
                    machine_key=machine_key,
                    node_key=req.node_key,
                    hostname=names.clean_hostname(req.hostinfo.hostname),
                    os=device_info(req.hostinfo)[0],
                    created_at=now,
                    expires_at=now + self.db.settings.pending_ttl_s,
                )
            )
            return tailcfg.RegisterResponse(
                machine_authorized=False, auth_url=f"{server_url.rstrip('/')}/register/{code}"
            )

        answer = self.db.write(login)
        if rotated:
            self.db.feed.publish()
        return answer

    def _followup(
        self, machine_key: str, req: tailcfg.RegisterRequest, now: float
    ) -> tailcfg.RegisterResponse | Registered:
        """Registered once the login was approved; a "still waiting" answer before."""
        assert req.followup is not None
        try:
            code = credentials.code_from_url(req.followup)
        except ValueError as e:
            raise Refused(str(e)) from None

        def check(tx: Tx) -> tailcfg.RegisterResponse | Registered:
            pending = tx.pending_by_code(code)
            if pending is None or pending.machine_key != machine_key:
                raise Refused("this login URL is unknown: run weft up again")
            if pending.node_id is None:
                if pending.expires_at <= now:
                    raise Refused("this login URL has expired: run weft up again")
                return tailcfg.RegisterResponse(machine_authorized=False, auth_url=req.followup)
            node = tx.node_by_id(pending.node_id)
            if node is None or node.machine_key != machine_key:
                raise Refused("the node approved for this login was deleted: run weft up again")
            if node.node_key != req.node_key:
                raise Refused("the node key changed during login: run weft up again")
            return registered(tx, node)

        return self.db.read(check)

    def _logout(
        self, machine_key: str, req: tailcfg.RegisterRequest, now: float
    ) -> tailcfg.RegisterResponse:
        def logout(tx: Tx) -> bool:
            node = tx.node_by_machine_key(machine_key)
            if node is None or node.node_key not in (req.node_key, req.old_node_key):
                return False
            if node.ephemeral:
                tx.delete_node(node.id)
            elif not node.expired_at(now):
                tx.update_node(node.id, key_expiry=now)
            else:
                return True
            audit(tx, now, "node.logout", "node", node.id, name=node.given_name)
            return True

        if self.db.write(logout):
            self.db.feed.publish()
        return tailcfg.RegisterResponse(machine_authorized=False, node_key_expired=True)

    def map_request(
        self, machine_key: str, req: tailcfg.MapRequest, observed_ip: str | None, now: float
    ) -> Node:
        """Check a MapRequest and record what it reports; the node it is for."""
        check_version(req.version)
        check_key(tailcfg.NODE_KEY_PREFIX, req.node_key, "node key")
        if req.disco_key is not None:
            check_key(tailcfg.DISCO_KEY_PREFIX, req.disco_key, "disco key")
        # Endpoints are hints: unusable or malformed ones are dropped, not refused (a
        # refusal would take the node off the tailnet for one odd interface address).
        endpoints = netmap.clean_endpoints(req.endpoints)
        if req.home_relay is not None:
            try:
                relays.check_region_name(req.home_relay)
            except ValueError as e:
                raise Refused(f"home_relay: {e}") from None
        # Routes too: a bad prefix is dropped with a log line, the others still count.
        announced, dropped = routes.clean_announced(req.hostinfo.routable_ips)
        changed = False

        def record(tx: Tx) -> Node:
            nonlocal changed
            node = tx.node_by_machine_key(machine_key)
            if node is None:
                raise Refused(
                    "this machine is not registered: run weft up to log in",
                    tailcfg.ERROR_LOGGED_OUT,
                )
            if node.node_key != req.node_key:
                raise Refused(
                    "this node key is not the one registered for this machine: log in again",
                    tailcfg.ERROR_LOGGED_OUT,
                )
            if node.expired_at(now):
                raise Refused(
                    "node key expired: run weft up to log in again", tailcfg.ERROR_EXPIRED
                )
            changes: dict[str, object] = {"last_seen": now}
            if endpoints != node.endpoints:
                changes["endpoints"] = endpoints
            if req.disco_key is not None and req.disco_key != node.disco_key:
                holder = tx.node_by_disco_key(req.disco_key)
                if holder is not None and holder.id != node.id:
                    # Peers attribute disco messages by this key: one node only (L1).
                    raise Refused(DISCO_KEY_TAKEN)
                changes["disco_key"] = req.disco_key
            hostname = names.clean_hostname(req.hostinfo.hostname)
            if hostname and hostname != node.hostname:
                changes["hostname"] = hostname
            if observed_ip is not None and observed_ip != node.observed_ip:
                changes["observed_ip"] = observed_ip
            if req.home_relay != node.home_relay:
                changes["home_relay"] = req.home_relay
            os_name, version = device_info(req.hostinfo)
            if os_name != node.os:
                changes["os"] = os_name
            if version != node.client_version:
                changes["client_version"] = version
            if announced != node.announced_routes:
                changes["announced_routes"] = announced
            if dropped:
                log.warning(
                    "node %d announced routes the server ignores: %s", node.id, "; ".join(dropped)
                )
            changed = len(changes) > 1
            return tx.update_node(node.id, **changes)

        # Two nodes reporting one new disco key at once: the index refuses the second.
        node = self.db.write(record, {DISCO_KEY_UNIQUE: lambda: Refused(DISCO_KEY_TAKEN)})
        if changed:
            self.db.feed.publish()
        return node

    def snapshot(self) -> Snapshot:
        def read(tx: Tx) -> Snapshot:
            return Snapshot(
                nodes={n.id: n for n in tx.nodes()},
                users={u.id: u for u in tx.users()},
                policy=self.policy.policy(tx),
                dns_config=self.dns.config(tx) if self.dns is not None else None,
            )

        return self.db.read(read)

    def node_disconnected(self, node_id: int, now: float) -> None:
        """Remember when a node's last map stream ended (its last_seen)."""

        def touch(tx: Tx) -> None:
            if tx.node_by_id(node_id) is not None:
                tx.update_node(node_id, last_seen=now)

        self.db.write(touch)

    def delete_ephemeral(self, node_id: int, now: float | None = None) -> bool:
        """Delete ``node_id`` if it (still) is ephemeral; the hub calls this after grace."""

        def delete(tx: Tx) -> bool:
            node = tx.node_by_id(node_id)
            if node is None or not node.ephemeral:
                return False
            tx.delete_node(node_id)
            when = time.time() if now is None else now
            audit(tx, when, "node.delete", "node", node_id, name=node.given_name, ephemeral=True)
            return True

        deleted = self.db.write(delete)
        if deleted:
            self.db.feed.publish()
        return deleted

    def purge_expired_logins(self, now: float) -> int:
        """Delete the pending-login rows past their expiry (approved or not); how many.

        A new interactive login also deletes them; the hub calls this periodically so
        the rows go even when no login follows."""
        return self.db.write(lambda tx: tx.delete_expired_pending(now))
