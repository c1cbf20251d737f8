"""One map session: the frames of the map stream folded into a network map. Pure.

The first frame of a stream is full (``peers`` set: it replaces every peer known);
later frames are deltas: ``peers_changed`` upserts by node id, ``peers_removed`` drops
ids, and ``node``, ``packet_filter``, ``dns_domain``, ``dns_config`` and ``relay_map``
replace what we had only when present. Keepalives change nothing. As Tailscale's controlclient
mapSession: the I/O lives in controlclient and mapstream, this only folds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from weftnet import tailcfg


@dataclass(frozen=True)
class NetworkMap:
    self_node: tailcfg.Node | None = None
    peers: dict[int, tailcfg.Node] = field(default_factory=dict)  # node id -> Node
    # None until a frame carries a filter: nothing gets in (but replies) until then.
    packet_filter: list[tailcfg.FilterRule] | None = None
    dns_domain: str | None = None
    relay_map: list[tailcfg.RelayRegion] | None = None
    dns_config: tailcfg.DNSConfig | None = None  # as the server sent it (None: never)

    @property
    def self_expired(self) -> bool:
        return self.self_node is not None and self.self_node.expired

    @property
    def self_authorized(self) -> bool:
        """False while the device waits for an admin's approval (device approval)."""
        return self.self_node is None or self.self_node.machine_authorized

    @property
    def dns(self) -> tailcfg.DNSConfig | None:
        """The DNS config in effect: the server's ``dns_config``; from a server that sends
        only ``dns_domain`` (capability 1), MagicDNS on under that domain; else None."""
        if self.dns_config is not None:
            return self.dns_config
        if self.dns_domain:
            return tailcfg.DNSConfig(
                magic_dns=True, domain=self.dns_domain, search_domains=[self.dns_domain]
            )
        return None

    def to_cache(self) -> dict[str, Any]:
        """As a full MapResponse in JSON (what ``NodeState.save_netmap`` writes)."""
        frame = tailcfg.MapResponse(
            node=self.self_node,
            peers=list(self.peers.values()),
            dns_domain=self.dns_domain,
            packet_filter=self.packet_filter,
            dns_config=self.dns_config,
        )
        cached: dict[str, Any] = json.loads(frame.model_dump_json(exclude_defaults=True))
        cached.setdefault("peers", [])
        return cached


class MapSession:
    def __init__(self, netmap: NetworkMap | None = None) -> None:
        self.netmap = netmap or NetworkMap()

    def apply(self, resp: tailcfg.MapResponse) -> NetworkMap:
        """Fold one frame in; the new network map (the old one when nothing changed)."""
        if resp.keepalive:
            return self.netmap
        nm = self.netmap
        peers = dict(nm.peers) if resp.peers is None else {n.id: n for n in resp.peers}
        for n in resp.peers_changed:
            peers[n.id] = n
        for node_id in resp.peers_removed:
            peers.pop(node_id, None)
        self_node = resp.node if resp.node is not None else nm.self_node
        if self_node is not None:
            peers.pop(self_node.id, None)  # never our own peer
        self.netmap = replace(
            nm,
            self_node=self_node,
            peers=peers,
            packet_filter=nm.packet_filter if resp.packet_filter is None else resp.packet_filter,
            dns_domain=nm.dns_domain if resp.dns_domain is None else resp.dns_domain,
            relay_map=nm.relay_map if resp.relay_map is None else resp.relay_map,
            dns_config=nm.dns_config if resp.dns_config is None else resp.dns_config,
        )
        return self.netmap
