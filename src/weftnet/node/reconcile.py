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

A peer's allowed IPs are limited to the tailnet's ranges (``OVERLAY_RANGES``): any
other prefix in the map (``0.0.0.0/0``, a LAN) is dropped and reported
(``PeerOps.narrowed``, shown with the skip reasons), so a compromised or buggy control
server cannot let a peer send with, or receive for, addresses outside the tailnet.
Subnet routes will come through approval, not through this list.

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


@dataclass(frozen=True)
class Wanted:
    node: tailcfg.Node
    key: bytes  # the parsed node key: the WireGuard public key
    allowed_ips: tuple[str, ...] = ()  # node.allowed_ips inside OVERLAY_RANGES


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


def node_name(n: tailcfg.Node) -> str:
    return n.given_name or n.name or f"node {n.id}"


def plan(netmap: NetworkMap, current: Mapping[int, bytes], own_key: bytes) -> PeerOps:
    """What turns the device's peers ``current`` into the map's."""
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
            if outside:
                reason = f"ignored allowed IPs outside the tailnet: {', '.join(outside)}"
                ops.narrowed.append(Narrowed(n.id, node_name(n), reason))
            wanted[n.id] = Wanted(n, key, allowed)
    for node_id, key in current.items():
        w = wanted.get(node_id)
        if w is None or w.key != key:
            ops.remove.append(node_id)  # gone, or logged in again with a new key
    for node_id, w in sorted(wanted.items()):
        (ops.update if current.get(node_id) == w.key else ops.add).append(w)
    ops.remove.sort()
    return ops
