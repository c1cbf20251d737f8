"""weftd's metrics collector over two real DataPlanes: direct over loopback UDP, and
through a relay stand-in (a Bind that hands relay frames to the other plane)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_dataplane_loopback import PING4, Node, make_node, pump

from weftnet.endpoint import Endpoint
from weftnet.node.datapath import DataPlane
from weftnet.node.metrics import NodeMetrics
from weftnet.node.tun import VIRTIO_NET_HDR_GSO_NONE, VNET_HDR
from weftnet.wireguard.device import Peer

RELAY_EP = Endpoint("relay:default", 0)
PING_FRAME = VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0) + PING4


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text())
        for s in family.samples
    }


def get(metrics: NodeMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def metrics_of(node: Node) -> NodeMetrics:
    engine: Any = SimpleNamespace(dp=node.dp, device=node.dp.device)
    return NodeMetrics(engine)


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    a, b = make_node("a"), make_node("b")
    a.dp.device.add_peer(
        b.dp.device.identity.public_key, ["100.64.0.2/32"],
        endpoint=("127.0.0.1", b.udp.getsockname()[1]),
    )  # fmt: skip
    b.dp.device.add_peer(a.dp.device.identity.public_key, ["100.64.0.1/32"])
    yield a, b
    for n in (a, b):
        for s in (n.tun, n.tun_end, n.udp):
            s.close()


def test_direct_traffic_counts_bytes_packets_and_handshakes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    ma, mb = metrics_of(a), metrics_of(b)
    assert get(ma, "weftd_bytes_total", direction="tx", path="direct") == 0
    a.tun.send(PING_FRAME)
    pump(a, b, lambda: bool(b.read_tun()))
    assert get(ma, "weftd_handshakes_total", event="initiated") == 1
    assert get(ma, "weftd_handshakes_total", event="completed") == 1
    assert get(mb, "weftd_handshakes_total", event="completed") == 1
    sent = get(ma, "weftd_bytes_total", direction="tx", path="direct")
    assert sent >= len(PING4) + 32  # the packet, sealed
    assert get(mb, "weftd_bytes_total", direction="rx", path="direct") == sent
    assert get(ma, "weftd_packets_total", direction="tx", path="direct") == 1
    assert get(mb, "weftd_packets_total", direction="rx", path="direct") == 1
    assert get(ma, "weftd_bytes_total", direction="tx", path="relay") == 0
    assert get(ma, "weftd_peers") == 1
    # A peer leaving the device keeps its bytes in the totals: counters never go down.
    peer = a.dp.device.peers[b.dp.device.identity.public_key]
    a.dp.retire_peer(peer)
    a.dp.device.remove_peer(peer.public_key)
    assert get(ma, "weftd_bytes_total", direction="tx", path="direct") == sent
    assert get(ma, "weftd_handshakes_total", event="completed") == 1
    assert get(ma, "weftd_peers") == 0


def test_drops_are_counted_by_reason(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.tun.send(VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0) + bytes(20))  # not IP
    pump(a, b, lambda: a.dp.counters.drop_malformed == 1 or bool(a.dp.on_tun_readable()))
    assert get(metrics_of(a), "weftd_drops_total", reason="malformed") == 1
    assert get(metrics_of(a), "weftd_drops_total", reason="filtered") == 0


class QueueRelay:
    """A Bind whose relay is a queue: ``deliver()`` hands its frames to ``other``."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.queue: list[tuple[bytes, int]] = []
        self.other: DataPlane | None = None

    def send_to_pseudo(self, peer_key: bytes, ep: Endpoint, data: bytes) -> None:
        self.queue.append((data, len(data)))

    def send_to_pseudo_batch(self, peer_key: bytes, ep: Endpoint, data: bytes, seg: int) -> None:
        self.queue.append((data, seg))

    def receive_other(self, data: bytes, src: Endpoint) -> bool:
        return False

    def authenticated(self, peer: Peer, src: Endpoint) -> None:
        pass

    def deliver(self) -> bool:
        assert self.other is not None
        frames, self.queue = self.queue, []
        for data, seg in frames:
            self.other.receive_from_relay_batch(data, seg, self.key, "default")
        return bool(frames)


def test_relay_traffic_is_counted_on_the_relay_path(pair: tuple[Node, Node]) -> None:
    a, b = pair
    ka, kb = a.dp.device.identity.public_key, b.dp.device.identity.public_key
    ra, rb = QueueRelay(ka), QueueRelay(kb)
    ra.other, rb.other = b.dp, a.dp
    a.dp.set_bind(ra)
    b.dp.set_bind(rb)
    a.dp.device.peers[kb].endpoint = RELAY_EP
    b.dp.device.peers[ka].endpoint = RELAY_EP
    a.tun.send(PING_FRAME)
    a.dp.on_tun_readable()
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while not got:
        assert time.monotonic() < deadline, "the ping did not cross the relay"
        ra.deliver()
        rb.deliver()
        got += b.read_tun()
    a.tun.send(PING_FRAME)  # a session now: sealed and sent through the relay as data
    a.dp.on_tun_readable()
    ra.deliver()
    got += b.read_tun()
    ma, mb = metrics_of(a), metrics_of(b)
    # The first ping waited for the handshake (sent by the device), the second took the
    # fast path: both through the relay.
    assert get(ma, "weftd_packets_total", direction="tx", path="relay") == 2
    relay_tx = get(ma, "weftd_bytes_total", direction="tx", path="relay")
    assert relay_tx >= 2 * (len(PING4) + 32)
    assert get(mb, "weftd_bytes_total", direction="rx", path="relay") == relay_tx
    assert get(mb, "weftd_packets_total", direction="rx", path="relay") == 2
    assert get(ma, "weftd_bytes_total", direction="tx", path="direct") == 0
    assert get(mb, "weftd_bytes_total", direction="rx", path="direct") == 0
