"""Which WireGuard peers the device should have for a network map. Pure.

``plan(netmap, current, own_key)`` compares the map's peers with the device's (node id
-> public key) and answers what to add, update and remove. A peer that cannot be set up
is skipped with a reason, never raised: one bad member of the tailnet must not stop
this node from following the map (review defect D2). Skipped:

* a node key that does not parse (``nodekey:<64 hex>``);
* a low-order key (all-zero and the other small-subgroup points): no Diffie-Hellman
  with it gives a secret, so no session could ever be made (crypto.is_low_order);
* our own key: a peer cannot be ourselves;
* a key another peer of the map already has: the one already configured keeps it,
  otherwise the lowest node id.

A peer's allowed IPs are limited to the tailnet's ranges (``OVERLAY_RANGES``), so a
compromised or buggy control server cannot let a peer send with, or receive for,
addresses outside the tailnet, with two exceptions this node opts in to (``Routes``,
docs/routes.md):

* the peer's ``primary_routes`` (subnet routes), with ``--accept-routes``;
* ``0.0.0.0/0`` and ``::/0`` of the peer chosen with ``--exit-node``.

Even then a route is left out (``PeerOps.shadowed``, shown in Health) when it overlaps a
network this node is directly on (its underlay prefixes: the kernel would send the
node's own LAN into the tunnel), one it advertises itself, or the tailnet's ranges.
Subnet routes not accepted and other nodes' exit routes are left out silently; any
other prefix outside the tailnet is dropped and reported (``PeerOps.narrowed``).

Expired peers are left out without a reason (``weft status`` shows them as expired), and
with our own node expired no peer is wanted at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from weftnet import controlbox, tailcfg
from weftnet.node.mapsession import NetworkMap
from weftnet.wireguard import crypto

# The tailnet's addresses (control/domain/ipam.py allocates from them): the only
# prefixes a peer's allowed IPs may cover.
OVERLAY_RANGES = (
    ipaddress.IPv4Network("100.64.0.0/10"),
    ipaddress.IPv6Network("fd7a:115c:a1e0::/48"),
)


EXIT_ROUTES = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Routes:
    """What this node accepts beyond the tailnet's ranges (prefs and the host)."""

    accept_routes: bool = False  # --accept-routes: peers' primary subnet routes
    exit_node_id: int | None = None  # the peer chosen with --exit-node, found in the map
    local_prefixes: tuple[str, ...] = ()  # networks this node is directly on (underlay)
    advertised: tuple[str, ...] = ()  # the subnet routes this node advertises itself


@dataclass(frozen=True)
class Wanted:
    node: tailcfg.Node
    key: bytes  # the parsed node key: the WireGuard public key
    allowed_ips: tuple[str, ...] = ()  # overlay addresses + ``routes``
    routes: tuple[str, ...] = ()  # accepted subnet and exit routes: the OS routes them here


@dataclass(frozen=True)
class Skip:
    node_id: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"peer {self.name} skipped: {self.reason}"


@dataclass(frozen=True)
class Narrowed(Skip):
    """A peer set up with fewer allowed IPs than the map gave (it is not skipped)."""

    def __str__(self) -> str:
        return f"peer {self.name}: {self.reason}"


@dataclass
class PeerOps:
    add: list[Wanted] = field(default_factory=list)
    update: list[Wanted] = field(default_factory=list)  # same key: allowed IPs, paths
    remove: list[int] = field(default_factory=list)  # node ids
    skipped: list[Skip] = field(default_factory=list)
    narrowed: list[Narrowed] = field(default_factory=list)  # allowed IPs dropped
    shadowed: list[Narrowed] = field(default_factory=list)  # routes left out (Routes)

    @property
    def exit_routes(self) -> tuple[str, ...]:
        """The /0s of the chosen exit node, as accepted."""
        return tuple(r for w in self.add + self.update for r in w.routes if r in EXIT_ROUTES)

    @property
    def subnet_routes(self) -> list[str]:
        """Every accepted subnet route, sorted, once."""
        found = {r for w in self.add + self.update for r in w.routes if r not in EXIT_ROUTES}
        return sorted(found, key=lambda r: (":" in r, ipaddress.ip_network(r)))


def overlay_only(prefixes: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(the prefixes inside OVERLAY_RANGES, the others): malformed ones are others."""
    kept: list[str] = []
    dropped: list[str] = []
    for text in prefixes:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            dropped.append(text)
            continue
        inside = any(
            net.version == r.version and net.subnet_of(r)  # type: ignore[arg-type]
            for r in OVERLAY_RANGES
        )
        (kept if inside else dropped).append(text)
    return tuple(kept), dropped


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _overlaps(net: ipaddress.IPv4Network | ipaddress.IPv6Network, others: list[str]) -> str | None:
    """The first of ``others`` that ``net`` overlaps, if any."""
    for text in others:
        other = _net(text)
        if other is not None and other.version == net.version and net.overlaps(other):
            return text
    return None


def accept_routes(
    n: tailcfg.Node, outside: list[str], routes: Routes
) -> tuple[list[str], list[str], list[str]]:
    """Of a peer's prefixes outside the tailnet: (accepted, shadowed with why, reported)."""
    accepted: list[str] = []
    shadowed: list[str] = []
    reported: list[str] = []
    primary = set(n.primary_routes)
    overlay = [str(r) for r in OVERLAY_RANGES]
    for text in outside:
        net = _net(text)
        if net is None:
            reported.append(text)
            continue
        canon = str(net)
        if canon in EXIT_ROUTES:
            if routes.exit_node_id == n.id:
                accepted.append(canon)
            continue  # another node's exit route: not ours to use
        if text not in primary and canon not in primary:
            reported.append(text)
            continue
        if not routes.accept_routes:
            continue
        why = None
        if hit := _overlaps(net, overlay):
            why = f"overlaps the tailnet's range {hit}"
        elif hit := _overlaps(net, list(routes.local_prefixes)):
            why = f"overlaps {hit}, a network this node is on"
        elif hit := _overlaps(net, list(routes.advertised)):
            why = f"overlaps {hit}, which this node advertises"
        if why:
            shadowed.append(f"{canon} ({why})")
        else:
            accepted.append(canon)
    return accepted, shadowed, reported


def node_name(n: tailcfg.Node) -> str:
    return n.given_name or n.name or f"node {n.id}"


def plan(
    netmap: NetworkMap,
    current: Mapping[int, bytes],
    own_key: bytes,
    routes: Routes | None = None,
) -> PeerOps:
    """What turns the device's peers ``current`` into the map's."""
    routes = routes or Routes()
    ops = PeerOps()
    wanted: dict[int, Wanted] = {}
    if not netmap.self_expired:
        holder: dict[bytes, int] = {}
        # Peers already on the device claim their keys first, then by node id.
        order = sorted(netmap.peers.values(), key=lambda n: (n.id not in current, n.id))
        for n in order:
            if n.expired:
                continue
            try:
                key = controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, n.node_key)
            except ValueError:
                ops.skipped.append(Skip(n.id, node_name(n), "malformed node key"))
                continue
            if crypto.is_low_order(key):
                ops.skipped.append(Skip(n.id, node_name(n), "low-order node key"))
                continue
            if key == own_key:
                ops.skipped.append(Skip(n.id, node_name(n), "node key is our own"))
                continue
            if key in holder:
                other = node_name(netmap.peers[holder[key]])
                ops.skipped.append(Skip(n.id, node_name(n), f"node key already used by {other}"))
                continue
            holder[key] = n.id
            allowed, outside = overlay_only(n.allowed_ips)
            accepted, shadowed, reported = accept_routes(n, outside, routes)
            if reported:
                reason = f"ignored allowed IPs outside the tailnet: {', '.join(reported)}"
                ops.narrowed.append(Narrowed(n.id, node_name(n), reason))
            if shadowed:
                reason = f"route not installed: {', '.join(shadowed)}"
                ops.shadowed.append(Narrowed(n.id, node_name(n), reason))
            wanted[n.id] = Wanted(n, key, allowed + tuple(accepted), tuple(accepted))
    for node_id, key in current.items():
        w = wanted.get(node_id)
        if w is None or w.key != key:
            ops.remove.append(node_id)  # gone, or logged in again with a new key
    for node_id, w in sorted(wanted.items()):
        (ops.update if current.get(node_id) == w.key else ops.add).append(w)
    ops.remove.sort()
    return ops
