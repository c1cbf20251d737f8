"""Two pure TCP endpoints against each other through a simulated network (fake clock):
whatever the loss, duplication and reordering, both byte streams arrive intact and
both sides close cleanly; and the deadlines and answers of single cases."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.netstack.netsim import Link, SimNet, counter_random
from weftnet.netstack import events as ev
from weftnet.netstack.congestion import INITIAL_RTO_S
from weftnet.netstack.packet import (
    PROTO_TCP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    TcpSegment,
    ip_packet,
    parse_ip,
)
from weftnet.netstack.stack import MAX_HALF_OPEN, Stack
from weftnet.netstack.tcp import TIME_WAIT_S, State, TcpConnection
from weftnet.netstack.tcpstate import FIN_WAIT_2_TIMEOUT_S

A, B = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"


def pair(
    seed: int = 1, *, window: int = 1 << 20, v6: bool = False, **kw: float
) -> tuple[Stack, Stack]:
    a = Stack(random_bytes=counter_random(seed), receive_window=window, **kw)  # type: ignore[arg-type]
    b = Stack(random_bytes=counter_random(seed + 1), receive_window=window, **kw)  # type: ignore[arg-type]
    a.set_addresses([A6 if v6 else A])
    b.set_addresses([B6 if v6 else B])
    b.listen(None)
    return a, b


class Exchange(SimNet):
    """A sends ``up`` and closes; B sends ``down`` on accept and closes when A's FIN
    arrives (``b_closes_early``: at once, so both FINs may cross: CLOSING); each side
    records what it received and how its connection ended. ``stalls``: B's app stops
    and resumes reading at random (its window closes and reopens)."""

    up: bytes
    down: bytes
    b_closes_early = False
    stalls = False

    def setup(self, up: bytes, down: bytes, *, v6: bool = False) -> None:
        self.up, self.down = up, down
        self.b_conn: TcpConnection | None = None
        self.app_rng = random.Random(self.seed + 1)
        self.got = {"a": bytearray(), "b": bytearray()}
        self.ended: dict[str, str] = {}
        self.ended_at: dict[str, float] = {}
        self.conn = self.a.connect(B6 if v6 else B, 80, self.now)
        self.a.send(self.conn, up)
        self.a.close(self.conn, self.now)

    def on_event(self, name: str, event: ev.Event) -> None:
        stack = self.a if name == "a" else self.b
        if isinstance(event, ev.NewConnection):
            stack.send(event.conn, self.down)
            self.b_conn = event.conn
            if self.b_closes_early:
                stack.close(event.conn, self.now)
        elif isinstance(event, ev.DataReceived):
            self.got[name] += event.data
        elif isinstance(event, ev.StreamEnded) and name == "b" and not self.b_closes_early:
            stack.close(event.conn, self.now)
        elif isinstance(event, ev.Closed):
            self.ended[name] = "closed"
            self.ended_at[name] = self.now
        elif isinstance(event, ev.Reset):
            self.ended[name] = event.reason

    def tick(self) -> None:
        if self.stalls and self.b_conn is not None and self.app_rng.random() < 0.05:
            self.b.pause_receiving(self.b_conn, not self.b_conn.receiving_paused)
            if self.app_rng.random() < 0.5:
                self.b.pause_receiving(self.b_conn, False)

    def finished(self) -> bool:
        return len(self.ended) == 2 and not (self.b_conn and self.b_conn.receiving_paused)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    up_len=st.one_of(st.integers(0, 3000), st.integers(50_000, 200_000)),
    down_len=st.one_of(st.integers(0, 3000), st.integers(20_000, 80_000)),
    loss=st.sampled_from([0.0, 0.01, 0.05, 0.15]),
    duplicate=st.sampled_from([0.0, 0.02, 0.1]),
    jitter_s=st.sampled_from([0.0, 0.002, 0.03]),
    v6=st.booleans(),
    b_closes_early=st.booleans(),
    stalls=st.booleans(),
)
def test_streams_arrive_intact_through_a_bad_network(
    seed: int, up_len: int, down_len: int, loss: float, duplicate: float, jitter_s: float,
    v6: bool, b_closes_early: bool, stalls: bool,
) -> None:  # fmt: skip
    rng = random.Random(seed)
    up, down = rng.randbytes(up_len), rng.randbytes(down_len)
    a, b = pair(seed, window=64 * 1024, v6=v6)
    net = Exchange(a, b, Link(loss=loss, duplicate=duplicate, jitter_s=jitter_s), seed=seed)
    net.b_closes_early, net.stalls = b_closes_early, stalls
    net.setup(up, down, v6=v6)
    net.run(net.finished, max_time_s=3000)
    assert net.ended == {"a": "closed", "b": "closed"}
    assert bytes(net.got["b"]) == up
    assert bytes(net.got["a"]) == down
    net.run(lambda: not a.connections and not b.connections, max_time_s=net.now + 2 * TIME_WAIT_S)
    assert not a.connections and not b.connections


def test_a_clean_transfer_ends_in_time_wait_on_the_active_closer() -> None:
    a, b = pair()
    net = Exchange(a, b, Link())
    net.setup(b"hello" * 1000, b"world")
    net.run(net.finished)
    assert net.conn.state == State.TIME_WAIT
    assert not b.connections
    net.run(lambda: not a.connections)
    assert net.now == net.ended_at["a"] + TIME_WAIT_S


def test_syn_to_a_closed_port_is_refused() -> None:
    a, b = pair()
    b.unlisten(None)
    net = SimNet(a, b, Link())
    conn = a.connect(B, 81, 0.0)
    net.run(lambda: bool(net.events["a"]))
    assert net.events["a"] == [ev.Reset(conn, ev.REFUSED)]


def test_an_unanswered_syn_backs_off_and_times_out() -> None:
    a, _ = pair()
    conn = a.connect(B, 80, 0.0)
    assert len(a.packets_to_send(0.0)) == 1
    assert a.next_timer_at() == INITIAL_RTO_S
    sent_at = []
    now = 0.0
    while a.connections:
        now = a.next_timer_at() or now
        a.on_timer(now)
        if a.packets_to_send(now):
            sent_at.append(now)
    assert sent_at == [1.0, 3.0, 7.0, 15.0, 31.0, 63.0]  # RFC 6298 (5.5): RTO doubles
    assert a.next_event() == ev.Reset(conn, ev.TIMED_OUT)


def _segments(packets: list[bytes]) -> list[TcpSegment]:
    out = []
    for p in packets:
        src, dst, proto, payload = parse_ip(p)
        assert proto == PROTO_TCP
        out.append(TcpSegment.unpack(payload, src, dst))
    return out


def _established() -> tuple[Stack, Stack, SimNet]:
    a, b = pair()
    net = SimNet(a, b, Link(delay_s=0.0))
    a.connect(B, 80, 0.0)
    net.run(lambda: len(net.events["b"]) == 1)
    return a, b, net


def test_a_rst_inside_the_window_but_not_at_rcv_nxt_draws_a_challenge_ack() -> None:
    _, b, _ = _established()
    conn = b.connections[0]
    bsrc, asrc = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1])
    bad = TcpSegment(conn.remote[1], 80, (conn.rcv_nxt + 100) & 0xFFFFFFFF, 0, TCP_RST, 0)
    b.receive(ip_packet(asrc, bsrc, PROTO_TCP, bad.pack(asrc, bsrc)), 1.0)
    (challenge,) = _segments(b.packets_to_send(1.0))
    assert challenge.flags == TCP_ACK and challenge.ack == conn.rcv_nxt & 0xFFFFFFFF
    assert conn.state == State.ESTABLISHED
    exact = TcpSegment(conn.remote[1], 80, conn.rcv_nxt & 0xFFFFFFFF, 0, TCP_RST, 0)
    b.receive(ip_packet(asrc, bsrc, PROTO_TCP, exact.pack(asrc, bsrc)), 1.0)
    assert b.next_event() == ev.Reset(conn, ev.RESET_BY_PEER)
    assert not b.connections


def test_a_syn_on_an_established_connection_draws_a_challenge_ack() -> None:
    _, b, _ = _established()
    conn = b.connections[0]
    bsrc, asrc = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1])
    syn = TcpSegment(conn.remote[1], 80, 12345, 0, TCP_SYN, 1000)
    b.receive(ip_packet(asrc, bsrc, PROTO_TCP, syn.pack(asrc, bsrc)), 1.0)
    (challenge,) = _segments(b.packets_to_send(1.0))
    assert challenge.flags == TCP_ACK
    assert conn.state == State.ESTABLISHED


def test_a_zero_window_is_probed_until_it_opens() -> None:
    a, b, net = _established()
    server = b.connections[0]
    b.pause_receiving(server, True)  # the app reads nothing: the window closes
    client = a.connections[0]
    data = bytes(range(256)) * 8000  # 2 MB, more than the window
    a.send(client, data)
    got = bytearray()

    def read(name: str, event: ev.Event) -> None:
        if name == "b" and isinstance(event, ev.DataReceived):
            got.extend(event.data)

    net.on_event = read  # type: ignore[method-assign]
    net.run(lambda: client.persist_at is not None)
    assert len(got) <= 1 << 20  # at most one window while paused
    probes_from = net.sent
    net.run(lambda: net.now > 30.0)
    assert net.sent > probes_from  # probes keep going, the connection stays up
    assert client.state == State.ESTABLISHED
    b.pause_receiving(server, False)
    net.pump()
    net.run(lambda: len(got) == len(data))
    assert bytes(got) == data


def test_keepalive_gives_up_on_a_silent_peer() -> None:
    a, b = pair(keepalive_idle_s=10.0)
    net = SimNet(a, b, Link(delay_s=0.0))
    conn = a.connect(B, 80, 0.0)
    net.run(lambda: bool(net.events["b"]))
    net.link.loss = 1.0  # the peer vanishes
    net.run(lambda: not a.connections, max_time_s=2000)
    assert ev.Reset(conn, ev.TIMED_OUT) in net.events["a"]
    # 10 s idle, then 9 probes 75 s apart, then give up
    assert 10 + 9 * 75 <= net.now <= 10 + 9 * 75 + 1


def test_an_orphaned_connection_leaves_fin_wait_2_when_the_peer_never_closes() -> None:
    a, b, net = _established()
    client = a.connections[0]
    a.close(client, net.now, orphan=True)
    net.pump()
    net.run(lambda: client.state == State.FIN_WAIT_2)
    half_closed_at = net.now
    net.run(lambda: not a.connections)
    assert net.now == half_closed_at + FIN_WAIT_2_TIMEOUT_S
    assert ev.Closed(client) in net.events["a"]
    assert b.connections[0].state == State.CLOSE_WAIT  # the peer's app never closed


def test_a_syn_flood_fills_the_half_open_table_and_no_more() -> None:
    _, b = pair()
    asrc, bsrc = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
    for port in range(1, MAX_HALF_OPEN + 11):
        syn = TcpSegment(port, 80, port, 0, TCP_SYN, 1000)
        b.receive(ip_packet(asrc, bsrc, PROTO_TCP, syn.pack(asrc, bsrc)), 0.0)
    assert len(b.connections) == MAX_HALF_OPEN
    assert len(b.packets_to_send(0.0)) == MAX_HALF_OPEN  # one SYN-ACK each
    now = 0.0
    while b.connections:  # unanswered SYN-ACKs time out; nobody is told
        now = b.next_timer_at() or now
        b.on_timer(now)
        b.packets_to_send(now)
    assert b.next_event() is None


def test_a_simultaneous_open_connects_both_sides() -> None:
    a, b = pair()
    b.unlisten(None)
    a_conn = a.connect(B, 50001, 0.0, src_port=50000)
    b_conn = b.connect(A, 50000, 0.0, src_port=50001)
    net = SimNet(a, b, Link())  # both SYNs are on the wire before either arrives
    net.run(lambda: bool(net.events["a"] and net.events["b"]))
    assert net.events == {"a": [ev.Connected(a_conn)], "b": [ev.Connected(b_conn)]}
    a.send(a_conn, b"hello")
    net.pump()
    net.run(lambda: len(net.events["b"]) == 2)
    assert net.events["b"][1] == ev.DataReceived(b_conn, b"hello")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_garbage_and_mangled_segments_never_raise(data: st.DataObject) -> None:
    """Whatever arrives (random bytes, or a valid segment of a live connection with
    random flags, numbers and payload), the stack answers or drops; it never raises."""
    _, b, net = _established()
    conn = b.connections[0]
    b.send(conn, bytes(20_000))  # data in flight, so ACKs have something to acknowledge
    b.packets_to_send(net.now)
    asrc, bsrc = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
    for _ in range(data.draw(st.integers(1, 20))):
        if data.draw(st.booleans()):
            b.receive(data.draw(st.binary(max_size=120)), net.now)
        else:
            near = st.integers(-70000, 70000).map(lambda d, base=conn.rcv_nxt: (base + d) % 2**32)
            seg = TcpSegment(
                conn.remote[1],
                data.draw(st.sampled_from([80, 81])),
                data.draw(st.one_of(near, st.integers(0, 2**32 - 1))),
                data.draw(st.one_of(st.just(conn.snd_nxt % 2**32), st.integers(0, 2**32 - 1))),
                data.draw(st.integers(0, 0x3F)),
                data.draw(st.integers(0, 0xFFFF)),
                data.draw(st.binary(max_size=50)),
            )
            b.receive(ip_packet(asrc, bsrc, PROTO_TCP, seg.pack(asrc, bsrc)), net.now)
        net.now += data.draw(st.floats(0, 2))
        b.on_timer(net.now)
        b.packets_to_send(net.now)
        while b.next_event() is not None:
            pass
