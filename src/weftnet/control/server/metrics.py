"""The coordination server's metrics (``weft-control serve --metrics-listen``).

What the server already keeps - the map hub's streams and online set, the embedded
relay's per-client counters - is read by collectors at scrape time. What nothing counted
before has an instrument here, fed at one place each: map pushes and their latency
(node_api's stream, after a frame is written), registration outcomes (node_api's
register), and database transactions (SQLAlchemy's begin/commit/rollback events on the
store's engine, so the store itself stays unaware). Every server has its own registry.
docs/metrics.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.engine import Engine

from weftnet import tailcfg
from weftnet.control.server.hub import Hub
from weftnet.relay.metrics import RelayCollector
from weftnet.relay.server import RelayServer

# Push latency: a change usually reaches every stream within milliseconds.
PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Registration outcomes: a node's answer, or the kind of refusal (tailcfg.ERROR_KINDS;
# "logged_out" is both a logout's answer and a refusal's kind).
OUTCOMES = tuple(
    dict.fromkeys(
        ("authorized", "pending_approval", "login_url", "waiting", "logged_out",
         *sorted(tailcfg.ERROR_KINDS))
    )
)  # fmt: skip
_TX_STARTED = "weft_metrics_tx_started"  # in a connection's info dict: perf_counter()


def registration_outcome(answer: tailcfg.RegisterResponse, followup: bool = False) -> str:
    """What a register request came to, as one word of OUTCOMES (``followup``: the
    request asked after an interactive login it had started)."""
    if answer.error_kind is not None:
        return answer.error_kind
    if answer.error is not None:
        return tailcfg.ERROR_BAD_REQUEST
    if answer.machine_authorized:
        return "authorized"
    if answer.node_key_expired:
        return "logged_out"
    if answer.node is not None:
        return "pending_approval"  # registered; an admin approves the device
    return "login_url" if answer.auth_url and not followup else "waiting"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.map_pushes = Counter(
            "weft_control_map_pushes",
            "Network maps written to map streams: the first full map, then deltas.",
            ["kind"],
            registry=self.registry,
        )
        self.map_push_latency = Histogram(
            "weft_control_map_push_latency_seconds",
            "From a change being published to the map holding it being written to a stream.",
            buckets=PUSH_BUCKETS,
            registry=self.registry,
        )
        self.registrations = Counter(
            "weft_control_registrations",
            "Register requests answered, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.db_transactions = Histogram(
            "weft_control_db_transaction_seconds",
            "Database transactions, from begin to commit or rollback, by mode.",
            ["mode"],
            buckets=DB_BUCKETS,
            registry=self.registry,
        )
        for kind in ("full", "delta"):  # every series exists from the start, at 0
            self.map_pushes.labels(kind)
        for outcome in OUTCOMES:
            self.registrations.labels(outcome)
        for mode in ("read", "write"):
            self.db_transactions.labels(mode)

    # -- what the server's parts call ---------------------------------------------------

    def map_pushed(self, kind: str, changed_at: float | None) -> None:
        """A map frame (``kind`` "full" or "delta") has been written to a stream; it
        holds the change published at ``changed_at`` (monotonic), if known."""
        self.map_pushes.labels(kind).inc()
        if changed_at is not None:
            self.map_push_latency.observe(max(0.0, time.monotonic() - changed_at))

    def registered(self, answer: tailcfg.RegisterResponse, followup: bool = False) -> None:
        self.registrations.labels(registration_outcome(answer, followup)).inc()

    # -- what it reads at scrape time -----------------------------------------------------

    def watch_hub(self, hub: Hub) -> None:
        self.registry.register(HubCollector(hub))

    def watch_relay(self, relay: RelayServer) -> None:
        self.registry.register(RelayCollector(relay))

    def watch_store(self, engine: Engine) -> None:
        """Time every transaction on ``engine`` (in the worker threads that run them)."""
        histogram = self.db_transactions

        def begin(conn: Any) -> None:
            conn.info[_TX_STARTED] = time.perf_counter()

        def end(conn: Any) -> None:
            started = conn.info.pop(_TX_STARTED, None)
            if started is not None:
                mode = "write" if conn.get_execution_options().get("weft_write") else "read"
                histogram.labels(mode).observe(time.perf_counter() - started)

        event.listen(engine, "begin", begin)
        event.listen(engine, "commit", end)
        event.listen(engine, "rollback", end)


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        netmap = hub.current
        yield GaugeMetricFamily(
            "weft_control_nodes", "Nodes in the newest network map.",
            len(netmap.nodes) if netmap is not None else 0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "weft_control_nodes_online", "Nodes with at least one live map stream.",
            len(hub.online()),
        )  # fmt: skip
        yield GaugeMetricFamily("weft_control_map_streams", "Live map streams.", hub.stream_count())
        yield GaugeMetricFamily(
            "weft_control_relay_regions", "Standalone relay regions registered now.",
            len(hub.relays.regions()),
        )  # fmt: skip
