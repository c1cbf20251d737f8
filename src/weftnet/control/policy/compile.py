"""Policy compiler: from a Policy and the nodes of a network to packet filters.

Theory of operation: a rule accepts traffic from principals matched by its
``src`` to principals matched by its ``dst`` on the listed ports and protocols.
A principal is a user (untagged node), a set of tags (a tagged node is owned
by its tags and has no user) and some addresses. ``compile_filter`` answers
"what may reach this node", turning each rule that covers the target into a
``FilterRule`` of source CIDRs, destination (cidr, lo, hi) and protocols, the
inbound filter a node enforces after decryption. ``autogroup:self`` in dst
limits the sources to untagged nodes of the target's own user that src names
("*" there means "each user", never a wildcard address). Rules from "grants"
are compiled like acls. A router (``NodeInfo.routes``) also receives the rules whose
dst is an address or host inside its routes, for the part inside them, and an exit node
(``NodeInfo.exit``) the rules towards autogroup:internet: it filters what it forwards.
``allows`` judges the rules directly, as the policy's
tests do; the compiled filters must agree with it. No policy
(None) means everyone may reach everything; with a policy, whatever no rule
accepts is denied.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weftnet.control.policy.conditions import any_open
from weftnet.control.policy.hujson import PolicyError
from weftnet.control.policy.model import (
    DEFAULT_PROTOS,
    MAX_PORT,
    Acl,
    FilterRule,
    IPNetwork,
    NodeInfo,
    Policy,
    Selector,
    parse_ports,
    parse_selector,
)
from weftnet.control.policy.routes import THE_INTERNET, in_internet

__all__ = [
    "ALLOW_ALL",
    "Admission",
    "FilterCompiler",
    "admits",
    "allows",
    "can_reach",
    "compile_filter",
    "host_cidrs",
    "next_edge",
    "run_tests",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
WILDCARD_CIDRS = ("0.0.0.0/0", "::/0")

ALLOW_ALL = FilterRule(
    src_ips=WILDCARD_CIDRS,
    dst_ports=tuple((cidr, 0, MAX_PORT) for cidr in WILDCARD_CIDRS),
    protos=DEFAULT_PROTOS,
)


@dataclass(frozen=True, slots=True)
class _Principal:
    user: str | None
    tags: tuple[str, ...]
    ips: tuple[IPAddress, ...]
    device: dict[str, Any] | None = None  # None: not one device (postures never hold)


# Parsing addresses dominates compiling filters for many nodes; the texts repeat from one
# map to the next, so their parses are kept (bounded: a few entries per node).
PARSE_CACHE_SIZE = 1 << 16


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _address(text: str) -> IPAddress:
    return ipaddress.ip_interface(text).ip


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr)


def _principal(node: NodeInfo) -> _Principal:
    user = None if node.tags else node.user
    return _Principal(user, node.tags, tuple(_address(ip) for ip in node.ips))


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _host_cidr(ip: IPAddress) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def _in(ips: Iterable[IPAddress], net: IPNetwork | None) -> bool:
    return net is not None and any(ip.version == net.version and ip in net for ip in ips)


def _matches(sel: Selector, who: _Principal, policy: Policy) -> bool:
    """Whether sel names who. autogroup:self is decided by the caller."""
    match sel.kind:
        case "any":
            return True
        case "user":
            return who.user == sel.value
        case "group":
            return who.user is not None and who.user in policy.groups[sel.value]
        case "tag":
            return sel.value in who.tags
        case "member":
            return who.user is not None
        case "tagged":
            return bool(who.tags)
        case "net":
            return _in(who.ips, sel.network)
        case "internet":  # no node's address is in it; an address outside the tailnet is
            return any(in_internet(ip) for ip in who.ips)
    return False  # "self" is handled by the caller


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


Principals = Sequence[tuple[NodeInfo, _Principal]]


def _sources(acl: Acl, nodes: Principals, policy: Policy) -> list[str]:
    """Source CIDRs of acl. With postures, only the addresses of devices meeting one:
    then "*" and address selectors also stand for the nodes they cover, no more."""
    cidrs: list[str] = []
    if acl.postures:
        nodes = [(n, who) for n, who in nodes if any(p.holds(n.device) for p in acl.postures)]
    for sel in acl.src:
        if sel.kind == "any" and not acl.postures:
            cidrs.extend(WILDCARD_CIDRS)
        elif sel.kind == "net" and not acl.postures:
            cidrs.append(str(sel.network))
        else:
            for _node, who in nodes:
                if _matches(sel, who, policy):
                    cidrs.extend(_host_cidr(ip) for ip in who.ips)
    return cidrs


def _own_sources(acl: Acl, own: Principals, policy: Policy) -> list[str]:
    """Source CIDRs of acl towards autogroup:self: only the addresses of the target
    user's own untagged nodes that acl's src names (and that meet its postures).

    Never a wildcard or a CIDR: "*" here stands for "each user", so it may only
    bring in the target's own devices (Tailscale's autogroup:self semantics)."""
    if acl.postures:
        own = [(n, who) for n, who in own if any(p.holds(n.device) for p in acl.postures)]
    cidrs: list[str] = []
    for _node, who in own:
        if who.user is not None and any(_matches(sel, who, policy) for sel in acl.src):
            cidrs.extend(_host_cidr(ip) for ip in who.ips)
    return cidrs


def _active(acl: Acl, now: float | None) -> bool:
    """A rule with schedules holds only while one is open (never when now is None)."""
    return not acl.schedules or (now is not None and any_open(acl.schedules, now))


def next_edge(policy: Policy | None, now: float) -> float | None:
    """When a schedule a rule uses next opens or closes after ``now``: the filters
    compiled at ``now`` hold until then."""
    if policy is None:
        return None
    used = {s.name: s for acl in policy.acls for s in acl.schedules}
    edges = [e for s in used.values() if (e := s.next_edge(now)) is not None]
    return min(edges, default=None)


def compile_filter(
    policy: Policy | None,
    target: NodeInfo,
    nodes: Sequence[NodeInfo],
    now: float | None = None,
) -> list[FilterRule]:
    """The inbound filter of target at ``now``: which sources may reach which ports.

    Rules with a schedule count only when ``now`` (unix seconds) falls in one of its
    windows; the result holds until ``next_edge(policy, now)``. For many targets over the
    same nodes, a ``FilterCompiler`` does the work that does not depend on the target
    once."""
    return FilterCompiler(policy, nodes, now).compile(target)


# What a compiled filter drew its sources from: an acl's sources ``(index,)``, or its
# sources towards autogroup:self for one user ``(index, user)``.
SourceKey = tuple[int] | tuple[int, str | None]


class FilterCompiler:
    """``compile_filter`` for every target over one set of nodes at one time.

    A rule's sources do not depend on the target: each rule's source CIDRs are worked
    out once (and towards autogroup:self once per user), so filters for N targets cost
    O(N) per rule in all, not O(N) per target.

    ``previous``: the compiler of the last set of nodes (the last network map). Under the
    same policy and the same open schedules, a target whose NodeInfo did not change gets
    the filter compiled for it last time, as long as each source set that filter drew on
    is the same; a new node then costs a compile of its own user's and its sources'
    filters, not of every filter. Each source set is compared once."""

    def __init__(
        self,
        policy: Policy | None,
        nodes: Sequence[NodeInfo],
        now: float | None = None,
        previous: FilterCompiler | None = None,
    ) -> None:
        self.policy = policy
        self.now = now
        self._nodes = [(n, _principal(n)) for n in nodes]
        self._sources: dict[SourceKey, tuple[str, ...]] = {}
        self._by_user: dict[str | None, list[tuple[NodeInfo, _Principal]]] | None = None
        # target -> its rules and the source sets they drew on
        self._compiled: dict[NodeInfo, tuple[list[FilterRule], tuple[SourceKey, ...]]] = {}
        self._open = self._open_acls()
        if previous is not None and (
            previous._open != self._open
            or not (previous.policy is policy or previous.policy == policy)
        ):
            previous = None  # another policy or other open schedules: nothing carries over
        # The previous compiler's tables (not the compiler: no chain of old maps).
        self._old_compiled = previous._compiled if previous is not None else {}
        self._old_sources = previous._sources if previous is not None else {}
        self._same: dict[SourceKey, bool] = {}

    def _open_acls(self) -> tuple[bool, ...]:
        if self.policy is None:
            return ()
        return tuple(_active(acl, self.now) for acl in self.policy.acls)

    def compile(self, target: NodeInfo) -> list[FilterRule]:
        if self.policy is None:
            return [ALLOW_ALL]
        done = self._compiled.get(target)
        if done is None:
            old = self._old_compiled.get(target)
            if old is not None and all(self._unchanged(key) for key in old[1]):
                done = old
            else:
                done = self._compile(target)
            self._compiled[target] = done
        return done[0]

    def _compile(self, target: NodeInfo) -> tuple[list[FilterRule], tuple[SourceKey, ...]]:
        policy = self.policy
        assert policy is not None
        me = _principal(target)
        rules: list[FilterRule] = []
        keys: list[SourceKey] = []
        for index, acl in enumerate(policy.acls):
            if not self._open[index]:
                continue
            dst, self_dst = _destinations(acl, target, me, policy)
            if dst:
                keys.append((index,))
                src = self._source_set((index,))
                if src:
                    rules.append(FilterRule(src, _unique_ports(dst), acl.protos))
            if self_dst:
                keys.append((index, me.user))
                src = self._source_set((index, me.user))
                if src:
                    rules.append(FilterRule(src, _unique_ports(self_dst), acl.protos))
        return rules, tuple(keys)

    def _unchanged(self, key: SourceKey) -> bool:
        same = self._same.get(key)
        if same is None:
            same = self._same[key] = self._source_set(key) == self._old_sources.get(key)
        return same

    def _source_set(self, key: SourceKey) -> tuple[str, ...]:
        src = self._sources.get(key)
        if src is None:
            assert self.policy is not None
            acl = self.policy.acls[key[0]]
            if len(key) == 1:
                src = _unique(_sources(acl, self._nodes, self.policy))
            else:
                src = _unique(_own_sources(acl, self._own(key[1]), self.policy))
            self._sources[key] = src
        return src

    def _own(self, user: str | None) -> list[tuple[NodeInfo, _Principal]]:
        if self._by_user is None:
            self._by_user = {}
            for n, who in self._nodes:
                if not n.tags:
                    self._by_user.setdefault(n.user, []).append((n, who))
        return self._by_user.get(user, [])


def _destinations(
    acl: Acl, target: NodeInfo, me: _Principal, policy: Policy
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """The (cidr, lo, hi) of ``target`` that acl's dst names: towards any source, and
    towards autogroup:self (its user's own devices only)."""
    dst: list[tuple[str, int, int]] = []
    self_dst: list[tuple[str, int, int]] = []
    for entry in acl.dst:
        sel = entry.selector
        if sel.kind == "self":
            if me.user is not None:
                self_dst.extend((_host_cidr(ip), lo, hi) for ip in me.ips for lo, hi in entry.ports)
        elif sel.kind == "any":
            dst.extend((c, lo, hi) for c in WILDCARD_CIDRS for lo, hi in entry.ports)
        elif sel.kind == "net":
            if _in(me.ips, sel.network):
                dst.extend((str(sel.network), lo, hi) for lo, hi in entry.ports)
            # A router forwards into its routes: the part of them the rule names.
            dst.extend(
                (str(part), lo, hi)
                for part in _route_parts(sel.network, target.routes)
                for lo, hi in entry.ports
            )
        elif sel.kind == "internet":
            if target.exit:
                dst.extend((c, lo, hi) for c in THE_INTERNET for lo, hi in entry.ports)
        elif _matches(sel, me, policy):
            dst.extend((_host_cidr(ip), lo, hi) for ip in me.ips for lo, hi in entry.ports)
    return dst, self_dst


def _route_parts(sel: IPNetwork | None, routes: Sequence[str]) -> list[IPNetwork]:
    """The intersection of ``sel`` with each of ``routes`` it overlaps."""
    parts: list[IPNetwork] = []
    if sel is None:
        return parts
    for text in routes:
        route = ipaddress.ip_network(text)
        if route.version != sel.version or not route.overlaps(sel):
            continue
        parts.append(sel if sel.prefixlen >= route.prefixlen else route)
    return parts


def _unique_ports(items: Iterable[tuple[str, int, int]]) -> tuple[tuple[str, int, int], ...]:
    return tuple(dict.fromkeys(items))


def can_reach(
    policy: Policy | None,
    src: NodeInfo,
    dst: NodeInfo,
    nodes: Sequence[NodeInfo],
    now: float | None = None,
) -> bool:
    """Whether src may send anything to dst. A map lists a peer if either direction holds."""
    if policy is None:
        return True
    return admits(compile_filter(policy, dst, nodes, now), src)


def admits(rules: Sequence[FilterRule], src: NodeInfo) -> bool:
    """Whether a compiled filter lets src send anything at all."""
    admission = Admission(c for rule in rules for c in rule.src_ips)
    return admission.admits(host_cidrs(src))


def host_cidrs(node: NodeInfo) -> tuple[str, ...]:
    """The node's addresses as canonical host CIDRs ("100.64.0.1/32"), as filters name
    them."""
    return tuple(_host_cidr(_address(ip)) for ip in node.ips)


class Admission:
    """Source CIDRs ready for many questions: single addresses as canonical host CIDR
    texts in a set (one look-up each), wider networks in a list."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        hosts: set[str] = set()
        self.networks: list[IPNetwork] = []
        for cidr in dict.fromkeys(cidrs):
            net = _network(cidr)
            if net.prefixlen == net.max_prefixlen:
                hosts.add(_host_cidr(net.network_address))
            else:
                self.networks.append(net)
        self.hosts = frozenset(hosts)

    def admits(self, host_cidrs: Iterable[str]) -> bool:
        """Whether any of the addresses (canonical host CIDRs) may send."""
        for cidr in host_cidrs:
            if cidr in self.hosts:
                return True
            ip = _network(cidr).network_address
            if any(ip.version == net.version and ip in net for net in self.networks):
                return True
        return False

    def members(self, by_host: Mapping[str, int]) -> set[int]:
        """The ids of ``by_host`` (canonical host CIDR -> id) that may send."""
        ids = {by_host[h] for h in self.hosts if h in by_host}
        if self.networks:
            ids.update(i for cidr, i in by_host.items() if i not in ids and self.admits((cidr,)))
        return ids


def _resolve(name: str, where: str, policy: Policy, nodes: Sequence[NodeInfo]) -> _Principal:
    """A test's src or dst name as a principal; an address takes the node that holds it."""
    if name.startswith(("group:", "autogroup:")) or name == "*":
        raise PolicyError(
            f"{where}: {name!r} is not one principal; name a user, tag, host or address"
        )
    sel = parse_selector(name, where, policy.groups, policy.hosts, policy.tag_owners, frozenset())
    if sel.kind in ("tag", "user"):
        # A user or tag also holds the addresses of its nodes, so rules on hosts apply.
        who = (
            _Principal(None, (sel.value,), ())
            if sel.kind == "tag"
            else _Principal(sel.value, (), ())
        )
        ips = tuple(
            ip for n in nodes if _matches(sel, _principal(n), policy) for ip in _principal(n).ips
        )
        return _Principal(who.user, who.tags, ips)
    assert sel.network is not None
    addr = sel.network.network_address
    for node in nodes:
        who = _principal(node)
        if addr in who.ips:
            return _Principal(who.user, who.tags, (addr,), node.device)
    return _Principal(None, (), (addr,))


def _resolve_src(
    name: str, where: str, policy: Policy, nodes: Sequence[NodeInfo]
) -> list[tuple[str, _Principal]]:
    """A test's src as the principals it stands for: a group stands for each of its
    members (the test must hold for every one), anything else for itself."""
    if name.startswith("group:"):
        if name not in policy.groups:
            raise PolicyError(f'{where}: unknown group {name!r}; define it under "groups"')
        members = sorted(policy.groups[name])
        if not members:
            raise PolicyError(f"{where}: {name!r} has no members to test")
        return [(m, _resolve(m, where, policy, nodes)) for m in members]
    return [(name, _resolve(name, where, policy, nodes))]


def _allows(
    policy: Policy, src: _Principal, dst: _Principal, port: int, proto: int, at: float | None
) -> bool:
    for acl in policy.acls:
        if proto not in acl.protos or not any(_matches(s, src, policy) for s in acl.src):
            continue
        if not _active(acl, at):
            continue
        if acl.postures and (
            src.device is None or not any(p.holds(src.device) for p in acl.postures)
        ):
            continue
        for entry in acl.dst:
            if not any(lo <= port <= hi for lo, hi in entry.ports):
                continue
            sel = entry.selector
            if sel.kind == "self":
                if src.user is not None and src.user == dst.user:
                    return True
            elif _matches(sel, dst, policy):
                return True
    return False


def allows(
    policy: Policy,
    nodes: Sequence[NodeInfo],
    src: str,
    dst: str,
    port: int,
    proto: int = 6,
    at: float | None = None,
) -> bool:
    """Whether the policy lets ``src`` reach ``dst`` on ``port`` over ``proto``, judged
    from the rules themselves, as the policy's ``tests`` are (not from a compiled filter).

    ``src`` and ``dst`` are a user, a tag, a host name or an address (an address takes
    the node that holds it); ``src`` may also be a group, which must be allowed for
    every member."""
    dst_who = _resolve(dst, "dst", policy, nodes)
    return all(
        _allows(policy, who, dst_who, port, proto, at)
        for _, who in _resolve_src(src, "src", policy, nodes)
    )


def run_tests(policy: Policy, nodes: Sequence[NodeInfo]) -> None:
    """Run the policy's tests; raise PolicyError naming the first failing case."""
    for i, test in enumerate(policy.tests, 1):
        where = f"tests[{i}]"
        sources = _resolve_src(test.src, f"{where} src", policy, nodes)
        for expect, targets in ((True, test.accept), (False, test.deny)):
            for target in targets:
                name, sep, port_text = target.rpartition(":")
                twhere = f"{where} {target!r}"
                if not sep or not name:
                    raise PolicyError(f"{twhere}: write HOST:PORT")
                ports = parse_ports(port_text, twhere)
                if len(ports) != 1 or ports[0][0] != ports[0][1]:
                    raise PolicyError(f"{twhere}: a test names one port")
                dst = _resolve(name, twhere, policy, nodes)
                for label, src in sources:
                    if _allows(policy, src, dst, ports[0][0], test.proto, test.at) == expect:
                        continue
                    want, got = ("reach", "denies") if expect else ("not reach", "accepts")
                    who = test.src if label == test.src else f"{test.src} ({label})"
                    raise PolicyError(
                        f"policy test failed: {where} expects {who} to {want} "
                        f"{target}, but the policy {got} it; fix the acls or the test"
                    )
