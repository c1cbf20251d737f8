"""Carrying out a reconcile plan on the WireGuard device and the path layer.

``PeerTable.apply(netmap)`` asks reconcile.plan what to change and does it, one peer at
a time: a peer whose setup fails anyway (an error no check foresaw) is logged with its
traceback and reported as skipped, and the others still get configured. The map's
peers are never written into ``peer.endpoint`` here: where packets go is the path
layer's decision (``magic.set_peer``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from weftnet import tailcfg
from weftnet.node import reconcile
from weftnet.node.mapsession import NetworkMap
from weftnet.node.reconcile import Skip
from weftnet.wireguard.device import Peer

log = logging.getLogger("weftd")

PEER_KEEPALIVE_S = 25  # keeps NAT mappings open until path discovery takes this over


class PathLayer(Protocol):
    def set_peer(self, node: tailcfg.Node, peer: Peer, self_endpoints: list[str]) -> None: ...
    def remove_peer(self, node_id: int) -> None: ...


class PeerTable:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.by_id: dict[int, Peer] = {}  # node id -> the device's peer
        self.skipped: list[Skip] = []  # from the last apply, for `weft status`
        self.subnet_routes: list[str] = []  # accepted peers' routes (reconcile.Routes)
        self.exit_routes: tuple[str, ...] = ()  # the chosen exit node's /0s, if accepted

    def apply(
        self, netmap: NetworkMap, magic: PathLayer | None, routes: reconcile.Routes | None = None
    ) -> None:
        """Make the device's peers the map's."""
        device = self.engine.device
        current = {pid: p.public_key for pid, p in self.by_id.items()}
        ops = reconcile.plan(netmap, current, device.identity.public_key, routes)
        self.subnet_routes, self.exit_routes = ops.subnet_routes, ops.exit_routes
        skipped: list[Skip] = [*ops.skipped, *ops.narrowed, *ops.shadowed]
        for skip in skipped:
            if skip not in self.skipped:
                log.warning("%s", skip)
        for pid in ops.remove:
            self.remove(pid, magic)
        mine = netmap.self_node.endpoints if netmap.self_node is not None else []
        now = time.monotonic()
        transmits = []
        for w in ops.add + ops.update:
            name = reconcile.node_name(w.node)
            try:
                peer = self.by_id.get(w.node.id)
                if peer is None:
                    peer = device.add_peer(
                        w.key, w.allowed_ips, persistent_keepalive_s=PEER_KEEPALIVE_S
                    )
                    self.by_id[w.node.id] = peer
                    if magic is not None:
                        magic.set_peer(w.node, peer, mine)
                    # Speak first: a node behind NAT opens its mapping, the peer learns it.
                    transmits += device.send_keepalive(peer, now)
                else:
                    device.set_allowed_ips(peer, w.allowed_ips)
                    if magic is not None:
                        magic.set_peer(w.node, peer, mine)
            except Exception as e:  # one peer must not stop the others (D2)
                log.exception("peer %s could not be set up", name)
                self.remove(w.node.id, magic)
                skipped.append(Skip(w.node.id, name, f"cannot be set up: {e}"))
        self.skipped = skipped
        self.engine.dp.config_changed()
        if transmits:
            self.engine.dp.send_transmits(transmits)
        self.engine.rearm()

    def remove(self, node_id: int, magic: PathLayer | None) -> None:
        peer = self.by_id.pop(node_id, None)
        if magic is not None:
            magic.remove_peer(node_id)
        if peer is not None:
            self.engine.dp.retire_peer(peer)
            self.engine.device.remove_peer(peer.public_key)

    def clear(self, magic: PathLayer | None) -> None:
        for node_id in list(self.by_id):
            self.remove(node_id, magic)
        self.skipped = []
        self.subnet_routes, self.exit_routes = [], ()
        self.engine.dp.config_changed()
