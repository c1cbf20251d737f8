"""The node's route preferences checked and put in canonical form. Pure.

``weft up`` and ``weft set`` take ``--advertise-routes``, ``--advertise-exit-node``,
``--accept-routes``, ``--exit-node``, ``--exit-node-allow-lan-access`` and
``--snat-subnet-routes`` (docs/routes.md). What a user can get wrong is refused here,
with one line that says what to type instead (the words follow Tailscale's):

* a prefix that is not an IP or CIDR, or has bits set below its length;
* a prefix overlapping the tailnet's ranges or the service address 100.100.100.100:
  those are weftd's own and never routed to a LAN;
* a /0 in ``--advertise-routes``: an exit node is ``--advertise-exit-node``;
* ``--exit-node-allow-lan-access`` without an exit node;
* ``--exit-node`` naming this node, or a peer that offers no exit route.

``advertised(prefs)`` is what every map request carries as ``Hostinfo.routable_ips``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from weftnet import tailcfg
from weftnet.node.reconcile import OVERLAY_RANGES, node_name

SERVICE_IP = ipaddress.IPv4Network("100.100.100.100/32")  # quad-100, the node's resolver
EXIT_ROUTES = ("0.0.0.0/0", "::/0")  # what an exit node advertises and is approved for

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RoutePrefError(ValueError):
    """A preference a user gave that cannot be used: the text says why and what to do."""


def parse_prefix(text: str) -> Network:
    """One advertised route, canonical; RoutePrefError if it cannot be advertised."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RoutePrefError(f"{text!r} is not a valid IP address or CIDR prefix") from None
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise RoutePrefError(f"{text} has non-address bits set; expected {net}") from None
    if net.prefixlen == 0:
        raise RoutePrefError(
            f"{net} is an exit route: use --advertise-exit-node instead of --advertise-routes"
        )
    for reserved in (*OVERLAY_RANGES, SERVICE_IP):
        if net.version == reserved.version and net.overlaps(reserved):
            raise RoutePrefError(
                f"{net} overlaps the tailnet's own range {reserved}: it cannot be advertised"
            )
    return net


def parse_routes(texts: str | Iterable[str]) -> list[str]:
    """``--advertise-routes`` ("a,b" or a list) as sorted canonical CIDRs, duplicates
    dropped; "" is none."""
    items = texts.split(",") if isinstance(texts, str) else list(texts)
    nets = {parse_prefix(t) for t in items if t.strip()}
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def advertised(advertise_routes: list[str], advertise_exit_node: bool) -> list[str]:
    """``Hostinfo.routable_ips``: the routes, then both /0 for an exit node."""
    return [*advertise_routes, *(EXIT_ROUTES if advertise_exit_node else ())]


def is_exit_node(n: tailcfg.Node) -> bool:
    """The peer offers this node an exit route (the server put a /0 in its allowed IPs)."""
    return any(a in EXIT_ROUTES for a in n.allowed_ips)


def node_ips(n: tailcfg.Node) -> list[str]:
    return [a.split("/")[0] for a in n.addresses]


def matches(n: tailcfg.Node, target: str) -> bool:
    """``target`` names ``n``: one of its overlay addresses, its given name or hostname,
    or its given name's first label."""
    names = {n.given_name, n.name, n.given_name.split(".")[0]}
    return target in node_ips(n) or target in names


def find_exit_node(
    target: str, self_node: tailcfg.Node | None, peers: Iterable[tailcfg.Node]
) -> tailcfg.Node:
    """The peer ``--exit-node`` names; RoutePrefError when it is this node, unknown, or
    not an exit node."""
    if self_node is not None and matches(self_node, target):
        raise RoutePrefError(f"{target} is this node: choose another node as the exit node")
    for n in peers:
        if matches(n, target):
            if not is_exit_node(n):
                raise RoutePrefError(
                    f"{node_name(n)} is not an exit node (see weft exit-node list)"
                )
            return n
    raise RoutePrefError(f"no peer {target!r} in the tailnet (see weft exit-node list)")


def resolve_exit_node(target: str, peers: Iterable[tailcfg.Node]) -> tailcfg.Node | None:
    """The selected exit node in the current map, if it is there and offers exit routes
    (None: traffic for the internet is blocked, never sent around the tunnel)."""
    for n in peers:
        if matches(n, target):
            return n if is_exit_node(n) and not n.expired else None
    return None


def forwarding_warning(
    routes: list[str], exit_node: bool, ipv4_forward: bool | None, ipv6_forward: bool | None
) -> str | None:
    """Why a router cannot forward what it advertises (None: it can, or advertises
    nothing). ``ipv*_forward`` are the sysctls as read (None: unknown). A /32 or /128
    route names one host: if that is this host, no forwarding is needed, but we cannot
    tell from here, so it still needs the sysctl, as with any other route."""
    need4 = exit_node or any(":" not in r for r in routes)
    need6 = exit_node or any(":" in r for r in routes)
    off = []
    if need4 and ipv4_forward is False:
        off.append("net.ipv4.ip_forward")
    if need6 and ipv6_forward is False:
        off.append("net.ipv6.conf.all.forwarding")
    if not off:
        return None
    what = "exit node" if exit_node and not routes else "subnet router"
    sets = " ".join(f"{k}=1" for k in off)
    return (
        f"IP forwarding is off ({', '.join(k + ' = 0' for k in off)}): this {what} cannot"
        f" forward traffic; run `sysctl -w {sets}` (weftd does not change it)"
    )
