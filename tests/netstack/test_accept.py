"""The app's accept decision before SYN-ACK (``Stack(decide_accept=True)``) and ICMP
port unreachable after the fact, on pure stacks with a fake clock."""

from __future__ import annotations

import pytest

from tests.netstack.netsim import Link, SimNet, counter_random
from weftnet.netstack import events as ev
from weftnet.netstack.packet import (
    PROTO_ICMP,
    PROTO_TCP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TcpSegment,
    ip_packet,
    parse_ip,
)
from weftnet.netstack.stack import ACCEPT_DECISION_S, MAX_PENDING_REQUESTS, Stack

A, B = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"
ASRC, BSRC = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])


def pair(*, v6: bool = False) -> tuple[Stack, Stack]:
    a = Stack(random_bytes=counter_random(1))
    b = Stack(random_bytes=counter_random(2), decide_accept=True)
    a.set_addresses([A6 if v6 else A])
    b.set_addresses([B6 if v6 else B])
    b.listen(None)
    b.listen_udp(None)
    return a, b


def _syn(sport: int, seq: int = 1000, dport: int = 80) -> bytes:
    return ip_packet(ASRC, BSRC, PROTO_TCP, TcpSegment(sport, dport, seq, 0, TCP_SYN,
                                                       1000).pack(ASRC, BSRC))  # fmt: skip


def _tcp(packets: list[bytes]) -> list[TcpSegment]:
    out = []
    for p in packets:
        src, dst, proto, payload = parse_ip(p)
        assert proto == PROTO_TCP
        out.append(TcpSegment.unpack(payload, src, dst))
    return out


def test_a_syn_waits_for_the_decision_and_retransmissions_are_absorbed() -> None:
    _, b = pair()
    b.receive(_syn(5000), 0.0)
    assert b.packets_to_send(0.0) == []  # no SYN-ACK yet
    request = b.next_event()
    assert request == ev.ConnectionRequest(1, (B, 80), (A, 5000))
    b.receive(_syn(5000), 1.0)  # the peer's retransmission
    assert b.packets_to_send(1.0) == [] and b.next_event() is None
    assert b.pending_requests == 1 and b.connections == []
    conn = b.accept_request(request.id, 1.5)
    assert conn is not None and b.pending_requests == 0
    [synack] = _tcp(b.packets_to_send(1.5))
    assert synack.flags == TCP_SYN | TCP_ACK and synack.ack == 1001
    assert b.accept_request(request.id, 1.5) is None  # decided once


@pytest.mark.parametrize("v6", [False, True])
def test_accepted_connections_complete_through_the_simulated_network(v6: bool) -> None:
    a, b = pair(v6=v6)
    net = SimNet(a, b, Link(delay_s=0.01))
    net.on_event = lambda name, e: (  # type: ignore[method-assign]
        b.accept_request(e.id, net.now) if isinstance(e, ev.ConnectionRequest) else None
    )
    conn = a.connect(B6 if v6 else B, 443, 0.0)
    net.run(lambda: any(isinstance(e, ev.Connected) for e in net.events["a"]))
    assert net.events["a"] == [ev.Connected(conn)]
    assert isinstance(net.events["b"][0], ev.ConnectionRequest)
    net.run(lambda: any(isinstance(e, ev.NewConnection) for e in net.events["b"]))


def test_a_refused_request_is_answered_like_a_closed_port() -> None:
    a, b = pair()
    net = SimNet(a, b, Link())
    net.on_event = lambda name, e: (  # type: ignore[method-assign]
        b.refuse_request(e.id) if isinstance(e, ev.ConnectionRequest) else None
    )
    conn = a.connect(B, 22, 0.0)
    net.run(lambda: bool(net.events["a"]))
    assert net.events["a"] == [ev.Reset(conn, ev.REFUSED)]
    assert net.now < 0.1  # at once, not after a timeout
    assert b.connections == [] and b.pending_requests == 0


def test_an_undecided_request_is_refused_after_the_bound() -> None:
    _, b = pair()
    b.receive(_syn(5000, seq=77), 0.0)
    assert isinstance(b.next_event(), ev.ConnectionRequest)
    assert b.next_timer_at() == ACCEPT_DECISION_S
    b.on_timer(ACCEPT_DECISION_S - 0.1)
    assert b.packets_to_send(ACCEPT_DECISION_S) == []
    b.on_timer(ACCEPT_DECISION_S)
    [rst] = _tcp(b.packets_to_send(ACCEPT_DECISION_S))
    assert rst.flags == TCP_RST | TCP_ACK and rst.ack == 78 and rst.dst_port == 5000
    assert b.pending_requests == 0 and b.next_timer_at() is None
    assert not b.refuse_request(1)


def test_a_peer_rst_withdraws_its_request() -> None:
    _, b = pair()
    b.receive(_syn(5000), 0.0)
    rst = TcpSegment(5000, 80, 1001, 0, TCP_RST, 0).pack(ASRC, BSRC)
    b.receive(ip_packet(ASRC, BSRC, PROTO_TCP, rst), 0.5)
    assert b.pending_requests == 0
    assert b.accept_request(1, 1.0) is None and b.packets_to_send(1.0) == []


def test_a_syn_flood_fills_the_pending_requests_and_no_more() -> None:
    _, b = pair()
    for port in range(1, MAX_PENDING_REQUESTS + 11):
        b.receive(_syn(port), 0.0)
    assert b.pending_requests == MAX_PENDING_REQUESTS and b.dropped == 10
    assert b.packets_to_send(0.0) == []
    events = []
    while (e := b.next_event()) is not None:
        events.append(e)
    assert len(events) == MAX_PENDING_REQUESTS
    b.on_timer(ACCEPT_DECISION_S)  # all refused at the bound
    assert len(b.packets_to_send(ACCEPT_DECISION_S)) == MAX_PENDING_REQUESTS
    assert b.pending_requests == 0
    b.receive(_syn(1), ACCEPT_DECISION_S)  # room again
    assert b.pending_requests == 1


def test_udp_unreachable_after_the_fact_reaches_the_sender_as_an_event() -> None:
    for v6 in (False, True):
        a, b = pair(v6=v6)
        ours, theirs = (A6, B6) if v6 else (A, B)
        a.send_udp(b"hello", (ours, 4000), (theirs, 53))
        [packet] = a.packets_to_send(0.0)
        b.receive(packet, 0.0)
        datagram = b.next_event()
        assert datagram == ev.UdpDatagram(b"hello", (ours, 4000), (theirs, 53))
        b.udp_unreachable(datagram.src, datagram.dst, datagram.payload)
        [icmp] = b.packets_to_send(0.0)
        if not v6:
            assert parse_ip(icmp)[2] == PROTO_ICMP
            assert bytes(parse_ip(icmp)[3][:2]) == b"\x03\x03"  # type 3 code 3
        a.receive(icmp, 0.1)
        assert a.next_event() == ev.UdpUnreachable((ours, 4000), (theirs, 53))
        assert a.dropped == 0


def test_the_stack_s_own_port_unreachable_also_becomes_an_event() -> None:
    a, b = pair()
    b.unlisten_udp(None)
    a.send_udp(b"x", (A, 4001), (B, 9))
    b.receive(a.packets_to_send(0.0)[0], 0.0)
    a.receive(b.packets_to_send(0.0)[0], 0.0)
    assert a.next_event() == ev.UdpUnreachable((A, 4001), (B, 9))
