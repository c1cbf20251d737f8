"""The packet filter in the data plane: two real DataPlanes over UDP on loopback.

B lets A reach TCP port 5201 only; A lets nothing in. Packets are judged after
decryption and after the AllowedIPs source check, and what is dropped is counted.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest
from tests.unit.test_dataplane_loopback import PING4, Node, make_node, pump
from tests.unit.test_filter import ACK, SYN, SYN_ACK, rule, tcp4, udp4
from tests.unit.test_offload import super_packet

from weftnet.node.filter import PacketFilter
from weftnet.node.localnets import LocalDestinations
from weftnet.node.tun import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR,
)

A, B = "100.64.0.1", "100.64.0.2"
PLAIN = VNET_HDR.pack(0, 0, 0, 0, 0, 0)


@pytest.fixture
def pair() -> Iterator[tuple[Node, Node]]:
    a, b = make_node("a"), make_node("b")
    a.dp.device.add_peer(
        b.dp.device.identity.public_key,
        [B + "/32"],
        endpoint=("127.0.0.1", b.udp.getsockname()[1]),
    )
    b.dp.device.add_peer(a.dp.device.identity.public_key, [A + "/32"])
    a.dp.filter = PacketFilter([])
    b.dp.filter = PacketFilter([rule([A + "/32"], [(B + "/32", 5201, 5201)], [6])])
    yield a, b
    for n in (a, b):
        for s in (n.tun, n.tun_end, n.udp):
            s.close()


def handshake(a: Node, b: Node) -> None:
    """A's ping starts the handshake; B's filter drops the echo request itself."""
    a.tun.send(PLAIN + PING4)
    pump(a, b, lambda: b.dp.counters.drop_filtered == 1)
    assert b.read_tun() == []


def deliver(src: Node, dst: Node, packet: bytes) -> list[bytes]:
    """Send ``packet`` from ``src``'s TUN; what reached ``dst``'s TUN (the filter may
    drop it: then wait until it is counted)."""
    before = dst.dp.counters.drop_filtered
    src.tun.send(PLAIN + packet)
    got: list[bytes] = []
    pump(src, dst, lambda: bool(got.extend(dst.read_tun()) or got)
         or dst.dp.counters.drop_filtered > before)  # fmt: skip
    return [g[len(PLAIN) :] for g in got]


def test_denied_port_dropped_after_decryption_allowed_and_replies_pass(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    handshake(a, b)
    syn = tcp4(A, B, 40000, 5201, SYN)
    assert deliver(a, b, syn) == [syn]
    assert deliver(b, a, tcp4(B, A, 5201, 40000, SYN_ACK)) == [tcp4(B, A, 5201, 40000, SYN_ACK)]
    assert deliver(a, b, tcp4(A, B, 40000, 5202, SYN)) == []  # not port 5201
    assert deliver(b, a, udp4(B, A, 53, 5353)) == []  # A started nothing of the kind
    cb, ca = b.dp.counters, a.dp.counters
    assert cb.drop_filtered == 2 and b.dp.filter is not None and b.dp.filter.drop_denied == 2
    assert ca.drop_filtered == 1
    # Every drop was an authenticated packet from the right source: a filter decision.
    for c in (ca, cb):
        assert c.drop_replay_or_auth == 0 and c.drop_bad_source == 0 and c.drop_malformed == 0
    assert cb.rx_packets == 1 and ca.rx_packets == 1


def test_allowed_tso_stream_still_coalesces(pair: tuple[Node, Node]) -> None:
    a, b = pair
    handshake(a, b)
    payload = bytes((i * 7) & 0xFF for i in range(30000))
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, 1200, 20, 16)
    a.tun.send(hdr + super_packet(True, payload, ACK))
    frames: list[bytes] = []

    def all_payload() -> bool:
        frames.extend(b.read_tun())
        return sum(len(f) - 10 - 40 for f in frames) >= len(payload)

    pump(a, b, all_payload)
    assert b"".join(f[50:] for f in frames) == payload
    assert len(frames) < len(payload) // 1200 // 2
    assert struct.unpack_from("<BB", frames[0])[1] == VIRTIO_NET_HDR_GSO_TCPV4
    # A's super-packet was one flow of A's: B's replies on it pass A's deny-all filter.
    assert deliver(b, a, tcp4(B, A, 5201, 40000)) == [tcp4(B, A, 5201, 40000)]
    assert a.dp.filter is not None and a.dp.filter.tracked_flows == 1


def test_without_a_filter_everything_passes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.dp.filter = b.dp.filter = None  # plain WireGuard (weftd --wg-config)
    a.tun.send(PLAIN + PING4)
    got: list[bytes] = []
    pump(a, b, lambda: bool(got.extend(b.read_tun()) or got))
    assert got[0][len(PLAIN) :] == PING4
    assert deliver(b, a, udp4(B, A, 53, 5353)) == [udp4(B, A, 53, 5353)]
    assert a.dp.counters.drop_filtered == b.dp.counters.drop_filtered == 0


def test_changing_the_rules_takes_effect_at_the_next_packet(pair: tuple[Node, Node]) -> None:
    a, b = pair
    handshake(a, b)
    data = tcp4(A, B, 40000, 5201)
    assert deliver(a, b, data) == [data]
    assert b.dp.filter is not None
    b.dp.filter.set_rules([])
    assert deliver(a, b, data) == []
    assert socket.inet_aton(B) == data[16:20]  # (the packet is the one A addressed to B)


def test_a_peer_cannot_reach_the_resolver_through_the_tunnel() -> None:
    """S2 (docs/dns.md): A, ignoring its map, routes 100.100.100.100 to B; B drops the
    decrypted packets before its filter (which would accept them) and counts them."""
    a, b = make_node("a"), make_node("b")
    try:
        a.dp.device.add_peer(
            b.dp.device.identity.public_key,
            [B + "/32", "100.100.100.100/32"],
            endpoint=("127.0.0.1", b.udp.getsockname()[1]),
        )
        b.dp.device.add_peer(a.dp.device.identity.public_key, [A + "/32"])
        b.dp.filter = PacketFilter([rule([A + "/32"], [("0.0.0.0/0", 0, 65535)])])
        a.tun.send(PLAIN + PING4)  # the handshake, and a ping B lets in
        got: list[bytes] = []
        pump(a, b, lambda: bool(got.extend(b.read_tun()) or got))
        for dport in (53, 80):
            a.tun.send(PLAIN + udp4(A, "100.100.100.100", 40000, dport))
        pump(a, b, lambda: b.dp.counters.drop_service_ip == 2)
        assert b.read_tun() == [] and b.dp.counters.drop_filtered == 0
    finally:
        for n in (a, b):
            for s in (n.tun, n.tun_end, n.udp):
                s.close()


def test_a_peer_cannot_use_a_node_to_reach_networks_it_does_not_serve() -> None:
    """node.localnets: A routes 198.18.5.0/24 to B; B delivers a decrypted packet only to
    its own addresses or the routes it serves (all for an exit node), whatever its
    filter says, and counts the rest."""
    a, b = make_node("a"), make_node("b")
    try:
        a.dp.device.add_peer(
            b.dp.device.identity.public_key,
            [B + "/32", "198.18.5.0/24"],
            endpoint=("127.0.0.1", b.udp.getsockname()[1]),
        )
        b.dp.device.add_peer(a.dp.device.identity.public_key, [A + "/32"])
        b.dp.filter = PacketFilter([rule([A + "/32"], [("0.0.0.0/0", 0, 65535)])])
        b.dp.local = LocalDestinations([B + "/32"])
        a.tun.send(PLAIN + PING4)  # the handshake, and a ping to B itself
        got: list[bytes] = []
        pump(a, b, lambda: bool(got.extend(b.read_tun()) or got))
        a.tun.send(PLAIN + udp4(A, "198.18.5.9", 40000, 80))
        pump(a, b, lambda: b.dp.counters.drop_not_local == 1)
        assert b.read_tun() == [] and b.dp.counters.drop_filtered == 0
        for served in (["198.18.5.0/24"], ["0.0.0.0/0"]):  # a subnet router, an exit node
            b.dp.local = LocalDestinations([B + "/32"], served)
            a.tun.send(PLAIN + udp4(A, "198.18.5.9", 40000, 80))
            got.clear()
            pump(a, b, lambda: bool(got.extend(b.read_tun()) or got))
            assert got[0][len(PLAIN) :] == udp4(A, "198.18.5.9", 40000, 80)
        assert b.dp.counters.drop_not_local == 1
    finally:
        for n in (a, b):
            for s in (n.tun, n.tun_end, n.udp):
                s.close()


def test_local_destinations() -> None:
    loc = LocalDestinations(["100.64.0.2/32", "fd7a:115c:a1e0::2/128"], ["198.18.20.0/24"])
    ip4 = ipaddress.IPv4Address
    assert loc.allows4(ip4("100.64.0.2").packed) and loc.allows4(ip4("198.18.20.255").packed)
    assert not loc.allows4(ip4("100.64.0.3").packed) and not loc.allows4(ip4("198.18.21.1").packed)
    assert loc.allows6(ipaddress.IPv6Address("fd7a:115c:a1e0::2").packed)
    assert not loc.allows6(ipaddress.IPv6Address("fd7a:115c:a1e0::3").packed)
    exit_node = LocalDestinations(["100.64.0.2/32"], ["0.0.0.0/0", "::/0"])
    assert exit_node.allows4(ip4("198.18.99.1").packed)
    assert exit_node.allows6(ipaddress.IPv6Address("2001:db8::1").packed)
