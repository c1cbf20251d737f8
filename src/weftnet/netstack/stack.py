"""The userspace TCP/IP host: demultiplexes IP packets to TCP connections, UDP and ICMP.

Theory of operation
-------------------
A ``Stack`` is one IP host with the addresses given to ``set_addresses`` (a weftd node's
tailnet addresses). It never does I/O, reads a clock or draws randomness of its own:

    stack.receive(packet, now)          # an IP packet from the tunnel, for us
    stack.connect(...), stack.send(conn, data), stack.close(conn, now), ...   # the app
    stack.on_timer(now)                 # when now >= stack.next_timer_at()
    stack.packets_to_send(now)          # IP packets for the tunnel
    stack.next_event()                  # NewConnection, DataReceived, ... (events.py)

What it answers by itself:

* TCP to a port nobody listens on: RST (RFC 9293 §3.10.7.1); a SYN to a listening port
  starts a connection (``listen(None)`` listens on every port, for a daemon that
  forwards whatever arrives); segments go to their connection by the 4-tuple.
  With ``decide_accept=True`` the SYN instead becomes a ``ConnectionRequest`` event and
  waits, unanswered (retransmitted SYNs are absorbed), for ``accept_request(id, now)``
  (SYN-ACK) or ``refuse_request(id)`` (RST, as a closed port would); one undecided for
  ACCEPT_DECISION_S is refused; at most MAX_PENDING_REQUESTS wait (more SYNs are dropped).
* UDP to a port nobody listens on: ICMP port unreachable (RFC 1122 3.2.2.1,
  RFC 4443 §3.1); otherwise a ``UdpDatagram`` event. ``udp_unreachable`` sends one
  after the fact, for a datagram the app could not deliver. A port unreachable for a
  datagram we sent becomes a ``UdpUnreachable`` event.
* ICMP/ICMPv6 echo requests to our addresses: an echo reply (RFC 1122 3.2.2.6).

At most MAX_HALF_OPEN connections wait in SYN-RECEIVED; further SYNs are dropped
until some complete or time out. Packets to addresses that aren't ours, fragments, unknown protocols and malformed
packets are dropped and counted in ``dropped``.

Batching: ``receive`` only processes; the connections a batch touched are flushed by
``packets_to_send`` (so one ACK or one burst covers the batch where the rules allow),
and a connection's data from the batch becomes one ``DataReceived`` when the events
are drained. The ISN of each connection is 32 bits from the injected ``random_bytes``
(RFC 9293 §3.4.1 asks only that ISNs be unpredictable).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable

from weftnet.netstack import events as ev
from weftnet.netstack.packet import (
    ICMP4_ECHO_REPLY,
    ICMP4_ECHO_REQUEST,
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_HEADER_LEN,
    TCP_RST,
    TCP_SYN,
    IcmpEcho,
    PacketError,
    TcpBuilder,
    TcpOptions,
    TcpSegment,
    UdpPacket,
    icmp_port_unreachable,
    ip_packet,
    parse_icmp_unreachable,
    parse_ip,
)
from weftnet.netstack.tcp import DEFAULT_RECEIVE_WINDOW, State, TcpConnection

EPHEMERAL_PORTS = range(49152, 65536)  # RFC 6335 §6 dynamic ports
MAX_HALF_OPEN = 1024  # connections in SYN-RECEIVED; more SYNs are dropped (a SYN flood)
MAX_PENDING_REQUESTS = 1024  # SYNs waiting for the app's decision (decide_accept)
ACCEPT_DECISION_S = 5.0  # an undecided ConnectionRequest is refused after this
FlowKey = tuple[bytes, int, bytes, int]  # (our address, our port, peer address, peer port)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


class Stack:
    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes],
        mtu: int = 1420,
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        keepalive_idle_s: float | None = None,
        decide_accept: bool = False,
    ) -> None:
        self._random_bytes = random_bytes
        self.decide_accept = decide_accept
        self._requests: dict[int, tuple[FlowKey, TcpSegment, float]] = {}  # id -> SYN
        self._request_ids: dict[FlowKey, int] = {}
        self._next_request = 1
        self.mtu = mtu
        self.receive_window = receive_window
        self.keepalive_idle_s = keepalive_idle_s
        self._addresses: set[bytes] = set()
        self._conns: dict[FlowKey, TcpConnection] = {}
        self._keys: dict[TcpConnection, FlowKey] = {}
        self._half_open: set[TcpConnection] = set()
        self._tcp_ports: set[int] = set()
        self._tcp_all = False
        self._udp_ports: set[int] = set()
        self._udp_all = False
        self._out: list[bytes] = []
        self._events: list[ev.Event] = []
        self._queue: deque[ev.Event] = deque()
        self._dirty: dict[TcpConnection, None] = {}
        self._readable: dict[TcpConnection, None] = {}
        self.dropped = 0

    # ---- configuration ------------------------------------------------------------

    def set_addresses(self, addresses: Iterable[IPAddress | str]) -> None:
        self._addresses = {ipaddress.ip_address(a).packed for a in addresses}

    def listen(self, port: int | None = None) -> None:
        """Accept TCP connections to ``port`` (None: to every port)."""
        if port is None:
            self._tcp_all = True
        else:
            self._tcp_ports.add(port)

    def unlisten(self, port: int | None = None) -> None:
        if port is None:
            self._tcp_all = False
        else:
            self._tcp_ports.discard(port)

    def listen_udp(self, port: int | None = None) -> None:
        """Deliver UDP datagrams to ``port`` as events (None: to every port)."""
        if port is None:
            self._udp_all = True
        else:
            self._udp_ports.add(port)

    def unlisten_udp(self, port: int | None = None) -> None:
        if port is None:
            self._udp_all = False
        else:
            self._udp_ports.discard(port)

    @property
    def connections(self) -> list[TcpConnection]:
        return list(self._conns.values())

    # ---- app calls ----------------------------------------------------------------

    def _source_for(self, dst: bytes) -> bytes:
        for a in sorted(self._addresses):
            if len(a) == len(dst):
                return a
        raise ValueError("no address of this IP version to connect from")

    def connect(
        self,
        host: str,
        port: int,
        now: float,
        *,
        src: str | None = None,
        src_port: int | None = None,
    ) -> TcpConnection:
        """Open a connection to ``host``:``port`` (SYN-SENT) from ``src`` (default: our
        first address of that IP version) and ``src_port`` (default: a random free
        ephemeral port); ``Connected`` or ``Reset`` follows."""
        dst = ipaddress.ip_address(host).packed
        local = ipaddress.ip_address(src).packed if src else self._source_for(dst)
        if src_port is not None:
            if (local, src_port, dst, port) in self._conns:
                raise ValueError(f"a connection from port {src_port} to {host} port {port} exists")
            conn = self._new_conn((local, src_port, dst, port))
            conn.open_active(now)
            return conn
        for _ in range(64):
            r = int.from_bytes(self._random_bytes(2), "big")
            sport = EPHEMERAL_PORTS[r % len(EPHEMERAL_PORTS)]
            if (local, sport, dst, port) not in self._conns:
                break
        else:
            raise ValueError("no free ephemeral port")
        conn = self._new_conn((local, sport, dst, port))
        conn.open_active(now)
        return conn

    def accept_request(self, request_id: int, now: float) -> TcpConnection | None:
        """Answer a ``ConnectionRequest``'s SYN with SYN-ACK; None if it is gone (refused
        after ACCEPT_DECISION_S, or the peer reset it)."""
        entry = self._pop_request(request_id)
        if entry is None:
            return None
        key, seg, _ = entry
        return self._open_passive(key, seg, now)

    def refuse_request(self, request_id: int) -> bool:
        """Answer a ``ConnectionRequest``'s SYN with RST, as a closed port; False if gone."""
        entry = self._pop_request(request_id)
        if entry is not None:
            self._refuse(entry[0], entry[1])
        return entry is not None

    def _pop_request(self, request_id: int) -> tuple[FlowKey, TcpSegment, float] | None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            del self._request_ids[entry[0]]
        return entry

    @property
    def pending_requests(self) -> int:
        return len(self._requests)

    def udp_unreachable(self, src: ev.Address, dst: ev.Address, payload: bytes = b"") -> None:
        """ICMP/ICMPv6 port unreachable for a datagram ``payload`` the peer ``src`` sent
        to our ``dst`` (its IP and UDP headers rebuilt for the quote)."""
        s, d = ipaddress.ip_address(src[0]).packed, ipaddress.ip_address(dst[0]).packed
        udp = UdpPacket(src[1], dst[1], payload).pack(s, d)
        self._out.append(icmp_port_unreachable(d, s, ip_packet(s, d, PROTO_UDP, udp)))

    def send(self, conn: TcpConnection, data: bytes | bytearray | memoryview) -> None:
        conn.send(data)
        self._dirty[conn] = None

    def close(self, conn: TcpConnection, now: float, *, orphan: bool = False) -> None:
        """FIN after the buffered data; ``orphan``: the app won't read any more either."""
        conn.close(now, orphan=orphan)
        self._after(conn)

    def abort(self, conn: TcpConnection) -> None:
        conn.abort()
        self._after(conn)

    def pause_receiving(self, conn: TcpConnection, paused: bool) -> None:
        conn.pause_receiving(paused)
        self._dirty[conn] = None

    def send_udp(self, payload: bytes, src: ev.Address, dst: ev.Address) -> None:
        s, d = ipaddress.ip_address(src[0]).packed, ipaddress.ip_address(dst[0]).packed
        udp = UdpPacket(src[1], dst[1], payload).pack(s, d)
        self._out.append(ip_packet(s, d, PROTO_UDP, udp))

    def ping(self, src: str, dst: str, ident: int, seq: int, payload: bytes = b"") -> None:
        """Send an echo request; the reply comes back as an ``EchoReply`` event."""
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        kind = ICMP4_ECHO_REQUEST if len(s) == 4 else ICMP6_ECHO_REQUEST
        message = IcmpEcho(kind, ident, seq, payload).pack(s, d)
        self._out.append(ip_packet(s, d, PROTO_ICMP if len(s) == 4 else PROTO_ICMPV6, message))

    # ---- driving ------------------------------------------------------------------

    def receive(self, packet: bytes | bytearray | memoryview, now: float) -> None:
        """Process one IP packet from the tunnel."""
        try:
            src, dst, proto, payload = parse_ip(packet)
            if dst not in self._addresses:
                self.dropped += 1
            elif proto == PROTO_TCP:
                self._receive_tcp(src, dst, payload, now)
            elif proto == PROTO_UDP:
                self._receive_udp(src, dst, payload, packet)
            elif (proto == PROTO_ICMP and len(src) == 4) or (
                proto == PROTO_ICMPV6 and len(src) == 16
            ):
                self._receive_icmp(src, dst, payload)
            else:
                self.dropped += 1
        except PacketError:
            self.dropped += 1

    def _receive_tcp(self, src: bytes, dst: bytes, payload: memoryview, now: float) -> None:
        seg = TcpSegment.unpack(payload, src, dst)
        key = (dst, seg.dst_port, src, seg.src_port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.segment_received(seg, now)
            self._after(conn)
            return
        flags = seg.flags
        pending = self._request_ids.get(key)
        if pending is not None and flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
            return  # a retransmitted SYN while the app decides
        if flags & TCP_RST:
            if pending is not None and not flags & TCP_ACK:
                self._pop_request(pending)  # the peer gave up
            return
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN and (
            self._tcp_all or seg.dst_port in self._tcp_ports
        ):
            if self.decide_accept:
                self._request(key, seg, now)
                return
            if len(self._half_open) >= MAX_HALF_OPEN:
                self.dropped += 1  # like a full listen backlog: the peer's SYN retries
                return
            self._open_passive(key, seg, now)
            return
        self._refuse(key, seg)

    def _request(self, key: FlowKey, seg: TcpSegment, now: float) -> None:
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            self.dropped += 1  # a SYN flood: the peer's SYN retries
            return
        TcpOptions.unpack(seg.options)  # malformed options: dropped now, not at accept
        rid = self._next_request
        self._next_request += 1
        self._requests[rid] = (key, seg, now + ACCEPT_DECISION_S)
        self._request_ids[key] = rid
        local, lport, remote, rport = key
        self._events.append(
            ev.ConnectionRequest(rid, (_text(local), lport), (_text(remote), rport))
        )

    def _open_passive(self, key: FlowKey, seg: TcpSegment, now: float) -> TcpConnection:
        conn = self._new_conn(key)
        conn.open_passive(seg, TcpOptions.unpack(seg.options), now)
        self._half_open.add(conn)
        return conn

    def _refuse(self, key: FlowKey, seg: TcpSegment) -> None:
        """RST for a segment no connection takes (RFC 9293 §3.10.7.1)."""
        builder = TcpBuilder(*key)
        flags = seg.flags
        if flags & TCP_ACK:
            self._out.append(builder.build(seg.ack, 0, TCP_RST, 0))
        else:
            seglen = len(seg.payload) + (flags & TCP_FIN) + (1 if flags & TCP_SYN else 0)
            ack = (seg.seq + seglen) & 0xFFFFFFFF
            self._out.append(builder.build(0, ack, TCP_RST | TCP_ACK, 0))

    def _receive_udp(
        self, src: bytes, dst: bytes, payload: memoryview, packet: bytes | bytearray | memoryview
    ) -> None:
        udp = UdpPacket.unpack(payload, src, dst)
        if self._udp_all or udp.dst_port in self._udp_ports:
            datagram = ev.UdpDatagram(
                udp.payload, (_text(src), udp.src_port), (_text(dst), udp.dst_port)
            )
            self._events.append(datagram)
        else:
            self._out.append(icmp_port_unreachable(dst, src, packet))

    def _receive_icmp(self, src: bytes, dst: bytes, payload: memoryview) -> None:
        unreachable = parse_icmp_unreachable(payload, src, dst)
        if unreachable is not None:
            osrc, odst, sport, dport = unreachable
            if osrc in self._addresses:
                self._events.append(ev.UdpUnreachable((_text(osrc), sport), (_text(odst), dport)))
            else:
                self.dropped += 1
            return
        echo = IcmpEcho.unpack(payload, src, dst)
        v4 = len(src) == 4
        if echo.type == (ICMP4_ECHO_REQUEST if v4 else ICMP6_ECHO_REQUEST):
            reply = IcmpEcho(ICMP4_ECHO_REPLY if v4 else ICMP6_ECHO_REPLY, echo.ident, echo.seq,
                             echo.payload)  # fmt: skip
            proto = PROTO_ICMP if v4 else PROTO_ICMPV6
            self._out.append(ip_packet(dst, src, proto, reply.pack(dst, src)))
        else:
            self._events.append(ev.EchoReply(_text(src), echo.ident, echo.seq, echo.payload))

    def _new_conn(self, key: FlowKey) -> TcpConnection:
        local, lport, remote, rport = key
        overhead = (IPV4_HEADER_LEN if len(local) == 4 else IPV6_HEADER_LEN) + TCP_HEADER_LEN
        conn = TcpConnection(
            TcpBuilder(local, lport, remote, rport),
            (_text(local), lport),
            (_text(remote), rport),
            iss=int.from_bytes(self._random_bytes(4), "big"),
            mss=self.mtu - overhead,
            out=self._out,
            events=self._events,
            receive_window=self.receive_window,
            keepalive_idle_s=self.keepalive_idle_s,
        )
        self._conns[key] = conn
        self._keys[conn] = key
        return conn

    def _after(self, conn: TcpConnection) -> None:
        if conn.state != State.SYN_RECEIVED:
            self._half_open.discard(conn)
        if conn.rx:
            self._readable[conn] = None
        if conn.state == State.CLOSED:
            self._forget(conn)
        else:
            self._dirty[conn] = None

    def _forget(self, conn: TcpConnection) -> None:
        self._half_open.discard(conn)
        key = self._keys.pop(conn, None)
        if key is not None:
            del self._conns[key]
        self._dirty.pop(conn, None)

    def on_timer(self, now: float) -> None:
        for rid, (_, _, deadline) in list(self._requests.items()):
            if now >= deadline:
                self.refuse_request(rid)
        for conn in list(self._conns.values()):
            at = conn.next_timer_at()
            if at is not None and now >= at:
                conn.on_timer(now)
                self._after(conn)

    def next_timer_at(self) -> float | None:
        times = [t for c in self._conns.values() if (t := c.next_timer_at()) is not None]
        if self._requests:
            times.append(next(iter(self._requests.values()))[2])  # the oldest request
        return min(times) if times else None

    def packets_to_send(self, now: float) -> list[bytes]:
        """Flush the connections touched since the last call; the IP packets to send."""
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for conn in dirty:
                if conn.state != State.CLOSED:
                    conn.flush(now)
        out = self._out[:]
        self._out.clear()
        return out

    def next_event(self) -> ev.Event | None:
        if not self._queue:
            self._collect()
            if not self._queue:
                return None
        return self._queue.popleft()

    def _collect(self) -> None:
        self._queue.extend(self._events)
        self._events.clear()
        for conn in self._readable:
            if conn.rx:
                self._queue.append(ev.DataReceived(conn, b"".join(conn.rx)))
                conn.rx.clear()
        self._readable.clear()
