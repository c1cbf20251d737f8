"""What the policy says about routes (pure): autoApprovers, and autogroup:internet.

Theory of operation: a node announces prefixes (``Hostinfo.routable_ips``); the policy's
``autoApprovers`` approve some of them without an admin. ``auto_approved`` answers which,
from the policy and the node alone, so the server computes it whenever it builds a map and
never stores it: removing an approver (or the tag that matched) revokes at once.

- A subnet prefix P is approved when some ``autoApprovers.routes`` key contains it (the
  key's prefix length is at most P's, same family) and the node matches one of that
  key's owners.
- An exit route (a /0) is approved only through ``autoApprovers.exitNode``, and then both
  /0s are approved together (an exit node is one thing, as in Headscale).
- Owners match as in ``tagOwners``: a tagged node by its tags only, an untagged node by
  its user (the user itself, a group holding it, or autogroup:member).

``THE_INTERNET`` is what ``autogroup:internet`` stands for: every address outside the
tailnet's ranges and the private, link-local and multicast ones (Headscale's
``TheInternet``), as a short list of CIDRs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from weftnet.control.policy.model import IPNetwork, NodeInfo, Policy

EXIT_ROUTES = ("0.0.0.0/0", "::/0")

_NOT_INTERNET_V4 = (
    "10.0.0.0/8",
    "100.64.0.0/10",  # the tailnet (CGNAT range)
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
)
_NOT_INTERNET_V6 = ("fc00::/7", "fe80::/10")  # ULA (holds the tailnet's fd7a:115c:a1e0::/48)


def _without(whole: str, holes: Sequence[str]) -> list[IPNetwork]:
    nets: list[IPNetwork] = [ipaddress.ip_network(whole)]
    for hole_text in holes:
        hole = ipaddress.ip_network(hole_text)
        out: list[IPNetwork] = []
        for net in nets:
            if net.version == hole.version and hole.subnet_of(net):  # type: ignore[arg-type]
                out.extend(net.address_exclude(hole))  # type: ignore[arg-type]
            elif not (net.version == hole.version and net.subnet_of(hole)):  # type: ignore[arg-type]
                out.append(net)
        nets = out
    return sorted(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]


# autogroup:internet: IPv4 outside the ranges above, and global unicast IPv6 (2000::/3).
THE_INTERNET: tuple[str, ...] = tuple(
    str(n)
    for n in (*_without("0.0.0.0/0", _NOT_INTERNET_V4), *_without("2000::/3", _NOT_INTERNET_V6))
)
_INTERNET_NETS = tuple(ipaddress.ip_network(c) for c in THE_INTERNET)


def is_exit_route(prefix: str) -> bool:
    return prefix in EXIT_ROUTES


def overlaps(a: str, b: str) -> bool:
    na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
    return na.version == nb.version and na.overlaps(nb)


def touches_internet(cidr: str) -> bool:
    """Whether ``cidr`` overlaps autogroup:internet."""
    net = ipaddress.ip_network(cidr)
    return any(n.version == net.version and n.overlaps(net) for n in _INTERNET_NETS)


def in_internet(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == n.version and ip in n for n in _INTERNET_NETS)


def approver_matches(policy: Policy, owners: Iterable[str], node: NodeInfo) -> bool:
    """Whether ``node`` is one of ``owners`` (a tagged node by its tags only)."""
    for owner in owners:
        if node.tags:
            if owner in node.tags:
                return True
            continue
        if node.user is None:
            continue
        if owner in (node.user, "autogroup:member"):
            return True
        if owner.startswith("group:") and node.user in policy.groups.get(owner, frozenset()):
            return True
    return False


def auto_approved(
    policy: Policy | None, node: NodeInfo, announced: Iterable[str]
) -> tuple[str, ...]:
    """The announced prefixes the policy's autoApprovers approve for ``node``."""
    if policy is None:
        return ()
    auto = policy.auto_approvers
    approved: list[str] = []
    announced = list(announced)
    if any(is_exit_route(p) for p in announced) and approver_matches(policy, auto.exit_node, node):
        approved.extend(EXIT_ROUTES)
    for prefix in announced:
        if is_exit_route(prefix):
            continue
        net = ipaddress.ip_network(prefix)
        for key, owners in auto.routes:
            if (
                key.version == net.version
                and net.subnet_of(key)  # type: ignore[arg-type]
                and approver_matches(policy, owners, node)
            ):
                approved.append(prefix)
                break
    return tuple(approved)
