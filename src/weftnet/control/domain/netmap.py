"""What each node sees: itself and its peers, as a full map and then as deltas (pure).

Theory of operation: after every change the hub loads a ``Snapshot`` (all node and
user records) and wraps it in a ``NetMap`` with the set of nodes that have a live map
stream and the time. ``NetMap`` turns each record into its wire ``tailcfg.Node`` once;
``view_for(id)`` picks the node itself and the peers it may see, and ``delta`` compares
two views of the same node into the frame that moves one to the other
(``peers_changed`` upserts, ``peers_removed`` ids, ``node`` when the node itself
changed), or None when nothing it sees changed.

Every map also carries the relay map: the regions a node may relay through
(``tailcfg.RelayRegion``). The coordination server's own relay comes first - its URL
depends on how the node reached the server, so each stream passes it to ``view_for`` -
then the standalone relays registered with the server (``NetMap.relays``). The full
frame carries it, and a delta carries it again whenever it changed.

Device approval: a node waiting for an admin's approval (``authorized_at`` None) is in
no other node's map, gets a map with no peers and a filter that admits nothing, its wire
node says ``machine_authorized=False``, and no relay admits it (``in_tailnet``).

A node's key is admitted to a relay while the node exists, is authorized and its key
has not expired (``NetMap.admits``); the hub cuts relay clients whose key stops being admitted.

Who sees whom follows the access policy (docs/policy.md). Each node's packet filter is
``policy.compile_filter`` of the policy at the NetMap's time, over the nodes whose keys
have not expired: what may reach that node. A node's map lists the peers it may reach
or that may reach it (``visible_peers``), and carries its filter (``packet_filter``),
again in a delta whenever it changed. With no policy set everyone sees everyone and
every filter accepts everything. Filters with schedules hold until
``next_policy_edge_at``; the hub rebuilds then.

Routes (docs/routes.md, ``routes``): each node's candidate prefixes are its approved
(manual, or by the policy's autoApprovers at this NetMap's time) and announced ones;
``routes.elect`` picks a primary per subnet prefix among the online, unexpired
candidates, keeping the previous NetMap's choice (``previous_primaries``, carried by the
hub) while it stands. A router's wire node carries the prefixes it is primary for, and an
online exit node both /0s, in ``allowed_ips`` (and the subnet ones in
``primary_routes``) - per viewer, only the prefixes the router's filter lets that viewer
reach (the /0s: when it may reach autogroup:internet through it); viewers older than
``tailcfg.ROUTES_VERSION`` get ``allowed_ips == addresses``. The policy compiles rules
towards routed prefixes into the router's own filter (``NodeInfo.routes`` / ``exit``),
so such a rule also makes the router visible to the viewer.

DNS settings (``tailcfg.DNSConfig``, the same for every node) ride the same way: in
every full frame, and in a delta whenever they changed, with ``dns_domain`` again when
the tailnet's domain changed (for nodes that read only that).

Endpoints rule (the node side depends on it): ``Node.endpoints[0]`` is the address the
server saw the node's last map request come from, with the UDP port of the node's first
reported endpoint; then come the node's reported endpoints in its order, as the server
kept them (``clean_endpoints``: usable, canonical, no duplicates, at most 32). A node
that reported no endpoint has none; a node the server has not yet seen has only the
ones it reported.

Cost (bench/controlload.py measures it): a NetMap takes over from the previous one the
wire nodes of unchanged records and the wire filter rules still in use, so deltas
compare mostly by identity; the policy compiles each rule's sources once per NetMap
(``policy.FilterCompiler``), and who sees whom is one pass over the filters' sources,
looked up by address (``_visibility``), not a test per pair of nodes. ``affected``
names the nodes whose view may have changed, so the hub wakes only their streams.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from weftnet import endpoint, tailcfg
from weftnet.control import policy as pol
from weftnet.control.domain import dnsdoc, names, routes
from weftnet.control.domain.access import node_info
from weftnet.control.domain.records import Node, User


def in_tailnet(node: Node, now: float) -> bool:
    """Whether the node takes part in the tailnet: approved and its key not expired."""
    return node.authorized_at is not None and not node.expired_at(now)


def clean_endpoints(reported: Iterable[str]) -> tuple[str, ...]:
    """The endpoints a node reported, as the server keeps them: canonical text, without
    malformed or unusable ones (loopback, multicast, unspecified, link-local, port 0)
    and duplicates, at most ``tailcfg.MAX_ENDPOINTS`` (the first ones, in its order)."""
    out: list[str] = []
    for text in reported:
        ep = endpoint.try_parse_endpoint(text) if isinstance(text, str) else None
        if ep is None or not endpoint.is_usable_peer_address(ep):
            continue
        canonical = endpoint.format_endpoint(ep)
        if canonical not in out:
            out.append(canonical)
            if len(out) == tailcfg.MAX_ENDPOINTS:
                break
    return tuple(out)


def normalize_ip(ip: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4) as plain IPv4."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def node_endpoints(observed_ip: str | None, reported: Iterable[str]) -> list[str]:
    reported = list(reported)
    if observed_ip is None or not reported:
        return reported
    first = endpoint.try_parse_endpoint(reported[0])
    if first is None or first.port == 0:
        return reported
    return [endpoint.format_endpoint((observed_ip, first.port)), *reported]


def wire_node(node: Node, users: Mapping[int, User], online: bool, now: float) -> tailcfg.Node:
    user = users.get(node.user_id) if node.user_id is not None else None
    addresses = [f"{node.ipv4}/32", f"{node.ipv6}/128"]
    return tailcfg.Node(
        id=node.id,
        name=names.clean_hostname(node.hostname),
        given_name=node.given_name,
        user=tailcfg.UserInfo(id=user.id, name=user.name) if user else None,
        tags=list(node.tags),
        node_key=node.node_key,
        disco_key=node.disco_key,
        addresses=addresses,
        allowed_ips=list(addresses),
        endpoints=node_endpoints(node.observed_ip, node.endpoints),
        online=online,
        last_seen=node.last_seen,
        key_expiry=node.key_expiry,
        expired=node.expired_at(now),
        ephemeral=node.ephemeral,
        home_relay=node.home_relay,
        os=node.os,
        client_version=node.client_version,
        machine_authorized=node.authorized_at is not None,
    )


def wire_rule(r: pol.FilterRule) -> tailcfg.FilterRule:
    return tailcfg.FilterRule(
        src_ips=list(r.src_ips),
        dst_ports=[
            tailcfg.NetPortRange(ip=cidr, ports=tailcfg.PortRange(first=lo, last=hi))
            for cidr, lo, hi in r.dst_ports
        ],
        ip_proto=list(r.protos),
    )


def wire_filter(rules: Iterable[pol.FilterRule]) -> tuple[tailcfg.FilterRule, ...]:
    return tuple(wire_rule(r) for r in rules)


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """One node's routes, as ``weft-control nodes routes`` shows them."""

    announced: tuple[str, ...]  # what the node offers (Hostinfo.routable_ips, kept)
    approved: tuple[str, ...]  # by an admin
    auto_approved: tuple[str, ...]  # by the policy's autoApprovers, now
    serving: tuple[str, ...]  # primary for (subnets), or offered (exit routes, when online)


@dataclass(frozen=True, slots=True)
class MapView:
    node: tailcfg.Node
    peers: dict[int, tailcfg.Node]
    relay_map: tuple[tailcfg.RelayRegion, ...] = ()
    packet_filter: tuple[tailcfg.FilterRule, ...] = ()
    dns_config: tailcfg.DNSConfig | None = None

    def full(self, dns_domain: str) -> tailcfg.MapResponse:
        return tailcfg.MapResponse(
            node=self.node,
            peers=sorted(self.peers.values(), key=lambda n: n.id),
            dns_domain=dns_domain,
            relay_map=list(self.relay_map),
            packet_filter=list(self.packet_filter),
            dns_config=self.dns_config,
        )


class NetMap:
    """One snapshot of the tailnet, ready to answer every node's view of it."""

    def __init__(
        self,
        nodes: Mapping[int, Node],
        users: Mapping[int, User],
        online: Iterable[int],
        now: float,
        dns_domain: str,
        relays: Sequence[tailcfg.RelayRegion] = (),
        policy: pol.Policy | None = None,
        policy_now: float | None = None,
        dns_config: tailcfg.DNSConfig | None = None,
        previous_primaries: Mapping[str, int] | None = None,
        previous: NetMap | None = None,
    ) -> None:
        """``previous``: the NetMap this one follows; what did not change is taken from it
        (wire nodes, wire filter rules), so building and comparing costs what changed."""
        self.nodes = dict(nodes)
        self.users = users
        self.policy = policy
        # The time schedules are judged at: the hub's policy clock (normally ``now``).
        self.policy_now = now if policy_now is None else policy_now
        self.online = frozenset(online)
        self.now = now
        self.dns_domain = dns_domain
        # The same for every node; without DNS settings, the default under dns_domain.
        self.dns_config = dns_config or dnsdoc.compile_config(dnsdoc.DEFAULT_DOCUMENT, dns_domain)
        self.relays = tuple(relays)  # standalone relays, after the server's own
        self._by_node_key = {n.node_key: n for n in self.nodes.values()}
        self._wire = {n.id: self._wire_node(n, previous) for n in self.nodes.values()}
        future = [
            n.key_expiry
            for n in self.nodes.values()
            if n.key_expiry is not None and n.key_expiry > now
        ]
        # When the next key expires: the hub rebuilds the map then, with no other change.
        self.next_expiry_at: float | None = min(future, default=None)
        # When a policy schedule next opens or closes: filters change then.
        self.next_policy_edge_at = pol.next_edge(policy, self.policy_now)
        infos = {n.id: node_info(n, users) for n in self.nodes.values()}
        self._auto = {
            n.id: pol.auto_approved(policy, infos[n.id], n.announced_routes)
            for n in self.nodes.values()
            if n.announced_routes
        }
        self._candidates = {
            i: routes.candidates(self.nodes[i].announced_routes, self.nodes[i].approved_routes, a)
            for i, a in self._auto.items()
        }
        eligible = {i for i in self.online if i in self.nodes and in_tailnet(self.nodes[i], now)}
        # Prefix -> primary router: the hub hands it to the next NetMap (no flapping).
        self.primaries = routes.elect(self._candidates, eligible, previous_primaries or {})
        self._serving: dict[int, tuple[str, ...]] = {}
        for prefix, router in self.primaries.items():
            self._serving[router] = (*self._serving.get(router, ()), prefix)
        for i, cands in self._candidates.items():
            if i in eligible:  # exit routes: every online candidate offers them
                exits = tuple(p for p in cands if pol.is_exit_route(p))
                self._serving[i] = (*self._serving.get(i, ()), *exits)
        self._serving = {i: routes.sort_prefixes(p) for i, p in self._serving.items() if p}
        self._live = {
            n.id: dataclasses.replace(
                infos[n.id],
                routes=tuple(p for p in self._serving.get(n.id, ()) if not pol.is_exit_route(p)),
                exit=any(pol.is_exit_route(p) for p in self._serving.get(n.id, ())),
            )
            for n in self.nodes.values()
            if in_tailnet(n, now)
        }
        self._filters: dict[int, list[pol.FilterRule]] = {}
        self._wire_filters: dict[int, tuple[tailcfg.FilterRule, ...]] = {}
        self._compiler: pol.FilterCompiler | None = None
        # The last map's compiler: its filters are reused where nothing they drew on changed.
        self._previous_compiler: pol.FilterCompiler | None = (
            (previous._compiler or previous._previous_compiler) if previous is not None else None
        )
        # Wire filter rules by rule; a miss looks in the previous NetMap's (a policy change
        # rebuilds only the rules it changed; only the rules in use are carried on).
        self._wire_rules: dict[pol.FilterRule, tailcfg.FilterRule] = {}
        self._previous_rules = previous._wire_rules if previous is not None else {}
        self._visible: dict[int, set[int]] | None = None  # node id -> peers it sees

    def _wire_node(self, node: Node, previous: NetMap | None) -> tailcfg.Node:
        online = node.id in self.online
        if previous is not None:
            wire = previous._wire.get(node.id)
            if (
                wire is not None
                and previous.nodes[node.id] == node
                and wire.online == online
                and wire.expired == node.expired_at(self.now)
                and (
                    node.user_id is None
                    or previous.users.get(node.user_id) == self.users.get(node.user_id)
                )
            ):
                return wire
        return wire_node(node, self.users, online, self.now)

    def _wire_rule(self, rule: pol.FilterRule) -> tailcfg.FilterRule:
        wire = self._wire_rules.get(rule)
        if wire is None:
            wire = self._previous_rules.get(rule) or wire_rule(rule)
            self._wire_rules[rule] = wire
        return wire

    def filter_for(self, node_id: int) -> list[pol.FilterRule]:
        """What may reach node ``node_id`` (compiled once per NetMap)."""
        rules = self._filters.get(node_id)
        if rules is None:
            info = self._live.get(node_id)
            if info is None:  # expired or waiting for approval: nothing reaches it
                rules = []
            else:
                if self._compiler is None:
                    live = list(self._live.values())
                    self._compiler = pol.FilterCompiler(
                        self.policy, live, self.policy_now, self._previous_compiler
                    )
                    self._previous_compiler = None
                rules = self._compiler.compile(info)
            self._filters[node_id] = rules
        return rules

    def route_status(self, node_id: int) -> RouteStatus | None:
        node = self.nodes.get(node_id)
        if node is None:
            return None
        return RouteStatus(
            announced=node.announced_routes,
            approved=node.approved_routes,
            auto_approved=routes.sort_prefixes(self._auto.get(node_id, ())),
            serving=self._serving.get(node_id, ()),
        )

    def serves_routes(self, node_id: int) -> bool:
        """Whether the node may serve some route (its stream keeps a shorter keepalive)."""
        return bool(self._candidates.get(node_id))

    def usable_routes(self, router_id: int, viewer_id: int) -> tuple[str, ...]:
        """The prefixes ``router_id`` serves that ``viewer_id`` may use: a subnet prefix
        when a rule in the router's filter admits the viewer towards some of it, the exit
        routes when one admits it towards autogroup:internet. No policy: all."""
        serving = self._serving.get(router_id, ())
        if not serving or self.policy is None:
            return serving
        viewer = self._live.get(viewer_id)
        if viewer is None:
            return ()
        rules = [r for r in self.filter_for(router_id) if pol.admits([r], viewer)]
        dsts = [cidr for r in rules for cidr, _lo, _hi in r.dst_ports]
        exit_ok = any(pol.touches_internet(d) for d in dsts)
        return tuple(
            p
            for p in serving
            if (exit_ok if pol.is_exit_route(p) else any(pol.overlaps(p, d) for d in dsts))
        )

    def _wire_for(self, node_id: int, viewer_id: int, version: int) -> tailcfg.Node:
        """Node ``node_id`` as ``viewer_id`` sees it, with the routes it may use."""
        wire = self._wire[node_id]
        if version < tailcfg.ROUTES_VERSION or node_id not in self._serving:
            return wire
        usable = (
            self._serving[node_id]
            if node_id == viewer_id
            else self.usable_routes(node_id, viewer_id)
        )
        if not usable:
            return wire
        return wire.model_copy(
            update={
                "allowed_ips": [*wire.addresses, *usable],
                "primary_routes": [p for p in usable if not pol.is_exit_route(p)],
            }
        )

    def visible_peers(self, node_id: int) -> list[int]:
        """The live nodes ``node_id`` may reach or that may reach it, by id."""
        if node_id not in self._live:
            return []
        if self.policy is None:
            return [i for i in self._live if i != node_id]
        return sorted(self._visibility()[node_id])

    def _visibility(self) -> dict[int, set[int]]:
        """Who sees whom, for every live node at once: each filter's sources are found
        by address (a set look-up per source host; a scan only for wider networks), and
        a node sees the sources of its own filter and the nodes whose filters name it.
        The cost follows the size of the filters, not the square of the node count."""
        if self._visible is None:
            by_host: dict[str, int] = {}  # canonical host CIDR ("100.64.0.1/32") -> node id
            for i, info in self._live.items():
                for cidr in pol.host_cidrs(info):
                    by_host[cidr] = i
            admitted: dict[tuple[str, ...], set[int]] = {}  # source CIDRs -> their nodes
            visible: dict[int, set[int]] = {i: set() for i in self._live}
            for target in self._live:
                sources: set[int] = set()
                for rule in self.filter_for(target):
                    ids = admitted.get(rule.src_ips)
                    if ids is None:
                        ids = admitted[rule.src_ips] = pol.Admission(rule.src_ips).members(by_host)
                    sources |= ids
                sources.discard(target)
                visible[target] |= sources
                for source in sources:
                    visible[source].add(target)
            self._visible = visible
        return self._visible

    def view_for(
        self,
        node_id: int,
        own_relays: Sequence[tailcfg.RelayRegion] = (),
        version: int = tailcfg.CAPABILITY_VERSION,
    ) -> MapView | None:
        """What node ``node_id`` sees; None when the node no longer exists.

        ``own_relays`` (the server's embedded relay, as this node reaches it) lead the
        relay map; ``version`` is the viewer's capability version (routes from 3)."""
        viewer = self.nodes.get(node_id)
        if viewer is None:
            return None
        del viewer
        wire_rules = self._wire_filters.get(node_id)
        if wire_rules is None:
            wire_rules = tuple(self._wire_rule(r) for r in self.filter_for(node_id))
            self._wire_filters[node_id] = wire_rules
        return MapView(
            self._wire_for(node_id, node_id, version),
            {i: self._wire_for(i, node_id, version) for i in self.visible_peers(node_id)},
            (*own_relays, *self.relays),
            wire_rules,
            self.dns_config,
        )

    def affected(self, previous: NetMap | None) -> set[int] | None:
        """The nodes whose view may differ from their view in ``previous`` (the NetMap
        this one was built after); None when it may differ for every node (the first
        map, other relays, DNS or routes).

        A node is affected when it changed itself, its filter changed, whom it sees
        changed, or one it sees changed. The others' views are equal to the last one
        they were sent, so the hub need not wake their streams: a later delta is still
        computed against the view they hold. Costs O(nodes + peers seen), a set and a
        list comparison per node, instead of a view and a delta per stream."""
        if (
            previous is None
            or self.relays != previous.relays
            or self.dns_config != previous.dns_config
            or self.dns_domain != previous.dns_domain
            or self._serving
            or previous._serving
            or (self.policy is None) != (previous.policy is None)
        ):
            return None
        changed = {i for i, w in self._wire.items() if previous._wire.get(i) is not w}
        changed.update(i for i in previous._wire if i not in self._wire)
        if self.policy is None:  # everyone sees everyone: a change reaches all
            return set(self._wire) | changed if changed else set()  # with the deleted
        visible = self._visibility()
        before = previous._visibility()
        affected = set(changed)
        for i, seen in visible.items():
            if i in affected:
                continue
            if (
                seen != before.get(i)
                or not seen.isdisjoint(changed)
                or self.filter_for(i) != previous.filter_for(i)
            ):
                affected.add(i)
        return affected

    def wire(self, node_id: int) -> tailcfg.Node | None:
        return self._wire.get(node_id)

    def admits(self, node_key: str, now: float) -> bool:
        """Whether a relay may take ``node_key``: its node exists, is authorized, its key
        not expired."""
        node = self._by_node_key.get(node_key)
        return node is not None and in_tailnet(node, now)

    def admitted_keys(self, now: float) -> list[str]:
        """Every node key a relay may take at ``now``, sorted."""
        return sorted(k for k, n in self._by_node_key.items() if in_tailnet(n, now))


def delta(prev: MapView, new: MapView) -> tailcfg.MapResponse | None:
    # Wire nodes a NetMap took over from the one before are the same objects: "is" first.
    changed = [
        n for i, n in sorted(new.peers.items()) if (p := prev.peers.get(i)) is not n and p != n
    ]
    removed = sorted(i for i in prev.peers if i not in new.peers)
    node = new.node if new.node != prev.node else None
    relay_map = list(new.relay_map) if new.relay_map != prev.relay_map else None
    packet_filter = list(new.packet_filter) if new.packet_filter != prev.packet_filter else None
    dns_config = new.dns_config if new.dns_config != prev.dns_config else None
    if (
        not changed
        and not removed
        and node is None
        and relay_map is None
        and packet_filter is None
        and dns_config is None
    ):
        return None
    old_domain = prev.dns_config.domain if prev.dns_config is not None else None
    new_domain = new.dns_config.domain if new.dns_config is not None else None
    return tailcfg.MapResponse(
        node=node,
        peers_changed=changed,
        peers_removed=removed,
        # For nodes that know only dns_domain: a new domain in a delta too.
        dns_domain=new_domain if new_domain != old_domain else None,
        relay_map=relay_map,
        packet_filter=packet_filter,
        dns_config=dns_config,
    )
