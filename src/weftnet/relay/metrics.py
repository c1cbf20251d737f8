"""The relay's metrics, read from its own counters at scrape time (docs/metrics.md).

One collector serves the embedded relay of ``weft-control serve`` and a standalone
``weft-control relay`` alike; registered on the process's registry, it runs on the
relay's event loop (weftnet.metrics.http), so it reads a consistent state.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from weftnet.relay.server import RelayServer


class RelayCollector(Collector):
    def __init__(self, server: RelayServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        clients = server.clients()
        t = server.ended.plus(clients)
        yield GaugeMetricFamily("weft_relay_clients", "Relay clients connected now.", len(clients))
        for name, what, value in (
            ("received_packets", "Datagrams accepted from clients (within their rate limits).",
             t.packets_in),
            ("received_bytes", "Bytes of the datagrams accepted from clients.", t.bytes_in),
            ("forwarded_packets", "Datagrams queued to the clients they were addressed to.",
             t.packets_out),
            ("forwarded_bytes", "Bytes of the datagrams forwarded.", t.bytes_out),
        ):  # fmt: skip
            yield CounterMetricFamily(f"weft_relay_{name}", what, value)
        drops = CounterMetricFamily(
            "weft_relay_drops", "Datagrams the relay dropped, by reason.", labels=["reason"]
        )
        for reason, value in (
            ("rate_limit", t.drops_rate),
            ("queue_full", t.drops_queue),
            ("no_peer", t.drops_no_peer),
            ("to_self", t.drops_self),
        ):
            drops.add_metric([reason], value)
        yield drops
        yield GaugeMetricFamily(
            "weft_relay_queue_bytes",
            "Frame bytes queued to clients and not yet taken by their sockets.",
            server.budget.used,
        )
        yield GaugeMetricFamily(
            "weft_relay_queue_bytes_peak", "The most weft_relay_queue_bytes has been.",
            server.budget.peak,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "weft_relay_queued_frames", "Frames waiting in clients' send queues now.",
            sum(c.queued for c in clients),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "weft_relay_mesh_peers", "Relays of this relay's mesh watching it now.",
            server.mesh_peer_count(),
        )  # fmt: skip
        for name, what, value in (
            ("mesh_forwarded_packets", "Datagrams from clients here handed to a mesh peer.",
             server.mesh_forwarded),
            ("mesh_delivered_packets", "Datagrams from mesh peers delivered to clients here.",
             server.mesh_delivered),
            ("mesh_drops", "Datagrams from mesh peers for keys not here, or a peer's queue full.",
             server.mesh_drops),
        ):  # fmt: skip
            yield CounterMetricFamily(f"weft_relay_{name}", what, value)
