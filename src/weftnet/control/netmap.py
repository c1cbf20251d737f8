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

A node's key is admitted to a relay while the node exists and its key has not expired
(``NetMap.admits``); the hub cuts relay clients whose key stops being admitted.

Who sees whom is ``visible_peers``: for now every other node whose key has not expired.
Issue 6 replaces that one function with policy filtering.

Endpoints rule (the node side depends on it): ``Node.endpoints[0]`` is the address the
server saw the node's last map request come from, with the UDP port of the node's first
reported endpoint; then come the node's reported endpoints in its order (duplicates
allowed). A node that reported no endpoint has none; a node the server has not yet seen
has only the ones it reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from weftnet import tailcfg
from weftnet.control.records import Node, User


def split_endpoint(endpoint: str) -> tuple[str, int] | None:
    """(ip, port) of "1.2.3.4:5" or "[2001:db8::1]:5"; None when malformed."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        addr = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if bracketed != (addr.version == 6):
        return None
    return str(addr), int(port)


def join_endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
    first = split_endpoint(reported[0])
    if first is None:
        return reported
    return [join_endpoint(observed_ip, first[1]), *reported]


def wire_node(node: Node, users: Mapping[int, User], online: bool, now: float) -> tailcfg.Node:
    user = users.get(node.user_id) if node.user_id is not None else None
    addresses = [f"{node.ipv4}/32", f"{node.ipv6}/128"]
    return tailcfg.Node(
        id=node.id,
        name=node.hostname,
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
    )


def visible_peers(viewer: Node, nodes: Iterable[Node], now: float) -> list[Node]:
    """The nodes ``viewer`` may see and reach. Issue 6 replaces this with policy."""
    return [n for n in nodes if n.id != viewer.id and not n.expired_at(now)]


@dataclass(frozen=True, slots=True)
class MapView:
    node: tailcfg.Node
    peers: dict[int, tailcfg.Node]
    relay_map: tuple[tailcfg.RelayRegion, ...] = ()

    def full(self, dns_domain: str) -> tailcfg.MapResponse:
        return tailcfg.MapResponse(
            node=self.node,
            peers=sorted(self.peers.values(), key=lambda n: n.id),
            dns_domain=dns_domain,
            relay_map=list(self.relay_map),
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
    ) -> None:
        self.nodes = dict(nodes)
        self.online = frozenset(online)
        self.now = now
        self.dns_domain = dns_domain
        self.relays = tuple(relays)  # standalone relays, after the server's own
        self._by_node_key = {n.node_key: n for n in self.nodes.values()}
        self._wire = {
            n.id: wire_node(n, users, n.id in self.online, now) for n in self.nodes.values()
        }
        future = [
            n.key_expiry
            for n in self.nodes.values()
            if n.key_expiry is not None and n.key_expiry > now
        ]
        # When the next key expires: the hub rebuilds the map then, with no other change.
        self.next_expiry_at: float | None = min(future, default=None)

    def view_for(
        self, node_id: int, own_relays: Sequence[tailcfg.RelayRegion] = ()
    ) -> MapView | None:
        """What node ``node_id`` sees; None when the node no longer exists.

        ``own_relays`` (the server's embedded relay, as this node reaches it) lead the
        relay map."""
        viewer = self.nodes.get(node_id)
        if viewer is None:
            return None
        peers = visible_peers(viewer, self.nodes.values(), self.now)
        return MapView(
            self._wire[node_id],
            {p.id: self._wire[p.id] for p in peers},
            (*own_relays, *self.relays),
        )

    def wire(self, node_id: int) -> tailcfg.Node | None:
        return self._wire.get(node_id)

    def admits(self, node_key: str, now: float) -> bool:
        """Whether a relay may take ``node_key``: its node exists, its key not expired."""
        node = self._by_node_key.get(node_key)
        return node is not None and not node.expired_at(now)

    def admitted_keys(self, now: float) -> list[str]:
        """Every node key a relay may take at ``now``, sorted."""
        return sorted(k for k, n in self._by_node_key.items() if not n.expired_at(now))


def delta(prev: MapView, new: MapView) -> tailcfg.MapResponse | None:
    changed = [n for i, n in sorted(new.peers.items()) if prev.peers.get(i) != n]
    removed = sorted(i for i in prev.peers if i not in new.peers)
    node = new.node if new.node != prev.node else None
    relay_map = list(new.relay_map) if new.relay_map != prev.relay_map else None
    if not changed and not removed and node is None and relay_map is None:
        return None
    return tailcfg.MapResponse(
        node=node, peers_changed=changed, peers_removed=removed, relay_map=relay_map
    )
