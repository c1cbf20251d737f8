"""weftd's metrics: `weft metrics` and ``weftd --metrics-listen`` (docs/metrics.md).

Theory of operation: nothing here runs per packet. The data plane already counts
packets and drops, each peer its bytes and handshakes, the relay clients their
packets; the data plane also counts what went through relays, once per relay frame.
A collector reads all of that at scrape time, on the daemon's event loop (the local
API and weftnet.metrics.http both run there), and derives the direct path as the
total minus the relays. Peers that leave the device hand their counts to the data
plane's ``retired_*`` counters first (``DataPlane.retire_peer``), so totals only grow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from weftnet import fastpath
from weftnet.metrics import http as metrics_http

if TYPE_CHECKING:
    from weftnet.magicsock.conn import MagicSock
    from weftnet.node.engine import BaseEngine

log = logging.getLogger("weftd")

# The data plane's drop counters, by the reason label they get.
DROP_REASONS = (
    ("replay_or_auth", "drop_replay_or_auth"),  # a replayed or forged transport message
    ("unknown_index", "drop_unknown_index"),  # for no session we know
    ("bad_source", "drop_bad_source"),  # decrypted, from outside the peer's allowed IPs
    ("no_peer", "drop_no_peer"),  # to an address no peer routes, or from an unknown key
    ("malformed", "drop_malformed"),
    ("filtered", "drop_filtered"),  # the packet filter (the policy) did not let it in
    ("service_ip", "drop_service_ip"),  # a peer's packet to the local resolver
    ("not_local", "drop_not_local"),  # to none of our addresses or served routes
)


class NodeCollector(Collector):
    def __init__(
        self, engine: BaseEngine, magic: Callable[[], MagicSock | None] = lambda: None
    ) -> None:
        self.engine = engine
        self.magic = magic  # the daemon's path layer now (a re-login makes a new one)

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        c = engine.dp.counters
        device = engine.device
        peers = list(device.peers.values())
        tx = c.retired_tx_bytes + sum(p.tx_bytes for p in peers)
        rx = c.retired_rx_bytes + sum(p.rx_bytes for p in peers)
        yield _by_path(
            "weftd_bytes",
            "WireGuard transport data bytes (as sent on the wire), by direction and path.",
            (tx, c.relay_tx_bytes, rx, c.relay_rx_bytes),
        )
        yield _by_path(
            "weftd_packets",
            "Packets sent to peers and packets from peers delivered, by direction and path.",
            (c.tx_packets, c.relay_tx_packets, c.rx_packets, c.relay_rx_packets),
        )
        handshakes = CounterMetricFamily(
            "weftd_handshakes", "WireGuard handshakes, initiated and completed.", labels=["event"]
        )
        handshakes.add_metric(["initiated"], c.retired_initiations + device.handshakes_initiated)
        handshakes.add_metric(
            ["completed"], c.retired_handshakes + sum(p.handshakes_completed for p in peers)
        )
        yield handshakes
        drops = CounterMetricFamily(
            "weftd_drops", "Packets the data plane dropped, by reason.", labels=["reason"]
        )
        for reason, field in DROP_REASONS:
            drops.add_metric([reason], getattr(c, field))
        drops.add_metric(["handshake"], sum(c.drop_handshake.values()))
        yield drops
        refused = CounterMetricFamily(
            "weftd_handshake_drops", "Handshake messages refused, by reason.", labels=["reason"]
        )
        for reason, n in sorted(c.drop_handshake.items()):
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily("weftd_peers", "Peers configured on the device.", len(peers))
        info = GaugeMetricFamily(
            "weftd_info", "Always 1: the data path in use.", labels=["datapath"]
        )
        info.add_metric([fastpath.IMPLEMENTATION], 1)
        yield info
        magic = self.magic()
        if magic is not None:
            yield from _paths(magic)


def _by_path(name: str, what: str, values: tuple[int, int, int, int]) -> Metric:
    """A counter by direction and path from (tx total, tx relay, rx total, rx relay)."""
    tx, tx_relay, rx, rx_relay = values
    family = CounterMetricFamily(name, what, labels=["direction", "path"])
    family.add_metric(["tx", "direct"], tx - tx_relay)
    family.add_metric(["tx", "relay"], tx_relay)
    family.add_metric(["rx", "direct"], rx - rx_relay)
    family.add_metric(["rx", "relay"], rx_relay)
    return family


def _paths(magic: MagicSock) -> Iterator[Metric]:
    """Path choices and relay use (tailnet mode)."""
    kinds = {"direct": 0, "relay": 0, "none": 0}
    for node_id in list(magic.peers):
        kind = magic.path_of(node_id)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    paths = GaugeMetricFamily("weftd_peer_paths", "Peers by their best path now.", labels=["path"])
    for kind, n in sorted(kinds.items()):
        paths.add_metric([kind], n)
    yield paths
    changes = CounterMetricFamily(
        "weftd_path_changes", "Changes of a peer's best path, by the new path.", labels=["to"]
    )
    for kind in sorted({"direct", "relay", "none", *magic.path_changes}):
        changes.add_metric([kind], magic.path_changes.get(kind, 0))
    yield changes
    relays = magic.relays
    connected = GaugeMetricFamily(
        "weftd_relay_connected", "1 while connected to the region's relay.", labels=["region"]
    )
    home = GaugeMetricFamily("weftd_relay_home", "1 for the home relay region.", labels=["region"])
    packets = CounterMetricFamily(
        "weftd_relay_client_packets",
        "Datagrams (WireGuard and disco) through the region's relay, by direction.",
        labels=["region", "direction"],
    )
    drops = CounterMetricFamily(
        "weftd_relay_client_drops",
        "Datagrams not sent to the region's relay: its send queue was full.",
        labels=["region"],
    )
    connections = CounterMetricFamily(
        "weftd_relay_connections", "Connections made to the region's relay.", labels=["region"]
    )
    for region, client in sorted(relays.clients.items()):
        connected.add_metric([region], 1 if client.connected else 0)
        home.add_metric([region], 1 if region == relays.home else 0)
        packets.add_metric([region, "tx"], client.packets_sent)
        packets.add_metric([region, "rx"], client.packets_received)
        drops.add_metric([region], client.drops)
        connections.add_metric([region], client.connections)
    yield from (connected, home, packets, drops, connections)


class NodeMetrics:
    """The daemon's registry (its own, not prometheus_client's global one)."""

    def __init__(
        self, engine: BaseEngine, magic: Callable[[], MagicSock | None] = lambda: None
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(engine, magic))

    def text(self) -> str:
        """Every metric in the Prometheus text format (`weft metrics`)."""
        return generate_latest(self.registry).decode()

    async def listen(self, listen: str | None) -> asyncio.Server | None:
        """Serve the metrics at http://``listen``/metrics (``--metrics-listen``); None: off."""
        if listen is None:
            return None
        sock = metrics_http.bind(*metrics_http.parse_listen(listen))
        server = await metrics_http.serve(self.registry, sock)
        log.info("metrics on http://%s/metrics", listen)
        return server
