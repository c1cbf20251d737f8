"""Subnet routes and exit nodes on the server (pure): what is announced, approved, served.

Theory of operation (docs/routes.md):

- A node announces prefixes in every map request (``Hostinfo.routable_ips``); the server
  keeps the valid ones (``clean_announced``: canonical CIDRs, outside the tailnet's own
  ranges and the service address) as ``Node.announced_routes``.
- An admin approves prefixes (``Node.approved_routes``, ``parse_approval``); the policy's
  autoApprovers approve more, computed when a map is built and never stored
  (``policy.auto_approved``). approved = manual | auto; a node is a *candidate* for the
  approved prefixes it also announces.
- ``elect`` picks one primary per subnet prefix among the candidates that are online and
  not expired: the previous primary while it is still one (no flapping: a router that
  comes back does not take the prefix back), else the lowest node id. Exit routes are
  not elected: every online candidate offers them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Set

from weftnet.control.domain import ipam
from weftnet.control.policy import EXIT_ROUTES, is_exit_route

MAX_ROUTES = 256  # prefixes the server keeps from one node's announcement
SERVICE_IP = ipaddress.ip_address("100.100.100.100")  # the tailnet's own DNS address
_OVERLAY = (ipam.IPV4_RANGE, ipam.IPV6_RANGE)


def check_prefix(text: str) -> str:
    """``text`` as a canonical CIDR; ValueError (one line saying why) if it may not be
    routed: malformed, host bits set, or inside the tailnet's own ranges."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid IP address or CIDR prefix") from None
    if "/" not in text:
        raise ValueError(f"{text!r} is an address; write a prefix such as {net}")
    if str(net) != text:
        if net.network_address != ipaddress.ip_interface(text).ip:
            raise ValueError(f"{text} has non-address bits set; expected {net}")
        raise ValueError(f"{text} is not canonical; write {net}")
    if net.prefixlen and any(net.version == o.version and net.overlaps(o) for o in _OVERLAY):
        raise ValueError(f"{text} overlaps the tailnet's own addresses; it cannot be routed")
    if SERVICE_IP in net and net.prefixlen:
        raise ValueError(f"{text} holds the tailnet's service address {SERVICE_IP}")
    return text


def _sort_key(text: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(text)
    return (net.version, int(net.network_address), net.prefixlen)


def sort_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(prefixes), key=_sort_key))


def clean_announced(reported: Iterable[object]) -> tuple[tuple[str, ...], list[str]]:
    """(the prefixes the server keeps, sorted; why each other one was dropped)."""
    kept: list[str] = []
    dropped: list[str] = []
    for text in reported:
        if not isinstance(text, str):
            dropped.append(f"{text!r} is not a string")
            continue
        try:
            kept.append(check_prefix(text))
        except ValueError as e:
            dropped.append(str(e))
    routes = sort_prefixes(kept)
    if len(routes) > MAX_ROUTES:
        dropped.append(f"{len(routes) - MAX_ROUTES} prefixes past the first {MAX_ROUTES}")
        routes = routes[:MAX_ROUTES]
    return routes, dropped


def parse_approval(prefixes: Iterable[str]) -> tuple[str, ...]:
    """An admin's approval, checked and sorted; approving either /0 approves both.
    ValueError names the first bad prefix."""
    out = {check_prefix(p.strip()) for p in prefixes if p.strip()}
    if out & set(EXIT_ROUTES):
        out |= set(EXIT_ROUTES)
    return sort_prefixes(out)


def candidates(
    announced: Iterable[str], manual: Iterable[str], auto: Iterable[str]
) -> tuple[str, ...]:
    """The prefixes a node may serve: approved (manual or auto) and announced."""
    approved = set(manual) | set(auto)
    return sort_prefixes(p for p in announced if p in approved)


def elect(
    serving: Mapping[int, Iterable[str]],
    eligible: Set[int],
    previous: Mapping[str, int],
) -> dict[str, int]:
    """Prefix -> primary node id, for every subnet (non-/0) prefix some eligible
    (online, unexpired) node may serve. ``previous`` is the last election."""
    by_prefix: dict[str, list[int]] = {}
    for node_id, prefixes in serving.items():
        if node_id not in eligible:
            continue
        for prefix in prefixes:
            if not is_exit_route(prefix):
                by_prefix.setdefault(prefix, []).append(node_id)
    primaries: dict[str, int] = {}
    for prefix, ids in by_prefix.items():
        kept = previous.get(prefix)
        primaries[prefix] = kept if kept in ids else min(ids)
    return primaries
