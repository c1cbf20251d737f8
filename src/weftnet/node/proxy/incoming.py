"""Peers' connections to this node's tailnet address, handed to this host's loopback.

Everything here comes after the packet filter: the stack only sees what the policy let
in, exactly as a TUN would. TCP to ``<tailnet address>:P`` is connected to
``127.0.0.1:P`` (``[::1]:P`` first for an IPv6 destination) before the peer's SYN is
answered (``TcpForwarder.accept``, the netstack's accept hook): when nothing listens
there the peer's connect is refused with RST, as by a closed port. UDP to
``<tailnet address>:P`` is relayed to ``127.0.0.1:P`` from one local socket per flow (a
small NAT table), whose replies go back to the peer from ``<tailnet address>:P``; when
the local socket learns that nothing listens (ECONNREFUSED) the peer gets ICMP port
unreachable; a flow idle for ``UDP_IDLE_S`` is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from weftnet.asyncwait import wait_within
from weftnet.node.proxy.resolve import splice

log = logging.getLogger("weftd.incoming")

UDP_IDLE_S = 60.0  # a UDP flow without datagrams either way this long is forgotten
UDP_MAX_FLOWS = 1024  # beyond this the least recently used flow is dropped
UDP_MAX_QUEUED = 64  # datagrams waiting for a flow's socket
CONNECT_TIMEOUT_S = 5.0
ACCEPT_CONNECT_TIMEOUT_S = 3.0  # within the netstack's ACCEPT_DECISION_S
UNCLAIMED_S = 15.0  # an accepted peer whose handshake never completes: upstream closed

Addr = tuple[str, int]


def loopback_for(local_ip: str) -> list[str]:
    """Where a connection to our tailnet address ``local_ip`` goes on this host."""
    return ["::1", "127.0.0.1"] if ipaddress.ip_address(local_ip).version == 6 else ["127.0.0.1"]


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect_loopback(local: Addr, timeout: float) -> tuple[Streams | None, Any]:
    """Streams to loopback port ``local[1]``, or None and the last error."""
    last: BaseException | None = None
    for host in loopback_for(local[0]):
        try:
            return await wait_within(asyncio.open_connection(host, local[1]), timeout), host
        except (OSError, TimeoutError) as e:
            last = e
    return None, last


class TcpForwarder:
    def __init__(self) -> None:
        self.forwarded = 0
        self.refused = 0
        self._ready: dict[tuple[Addr, Addr], Streams] = {}  # accepted, handshake pending

    async def accept(self, local: Addr, remote: Addr) -> bool:
        """The accept hook: connect to loopback first; refuse the peer when that fails."""
        streams, last = await _connect_loopback(local, ACCEPT_CONNECT_TIMEOUT_S)
        if streams is None:
            self.refused += 1
            log.debug("incoming %s:%d to port %d: nothing listens (%s): refused", remote[0],
                      remote[1], local[1], last)  # fmt: skip
            return False
        key = (local, remote)
        old = self._ready.pop(key, None)
        if old is not None:
            old[1].close()
        self._ready[key] = streams
        asyncio.get_running_loop().call_later(UNCLAIMED_S, self._unclaimed, key, streams)
        return True

    def _unclaimed(self, key: tuple[Addr, Addr], streams: Streams) -> None:
        if self._ready.get(key) is streams:
            del self._ready[key]
            streams[1].close()

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: Addr,
        remote: Addr,
    ) -> None:
        streams: Streams | None = self._ready.pop((local, remote), None)
        last: Any = None
        if streams is None:  # no accept hook: connect now, reset the peer on failure
            streams, last = await _connect_loopback(local, CONNECT_TIMEOUT_S)
        if streams is not None:
            self.forwarded += 1
            log.debug("incoming %s:%d -> port %d", remote[0], remote[1], local[1])
            await splice(reader, writer, *streams)
            return
        self.refused += 1
        log.debug("incoming %s:%d to port %d: nothing listens (%s): reset", remote[0],
                  remote[1], local[1], last)  # fmt: skip
        transport = writer.transport
        if transport is not None:
            transport.abort()  # the stack answers with RST
        else:
            writer.close()


class _Flow(asyncio.DatagramProtocol):
    def __init__(self, nat: UdpNat, peer: Addr, local: Addr) -> None:
        self.nat = nat
        self.peer = peer  # the remote tailnet address:port
        self.local = local  # our tailnet address:port it spoke to
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: list[bytes] = []
        self.last = time.monotonic()
        self.last_payload = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a DatagramTransport
        for data in self.queue:
            transport.sendto(data)  # type: ignore[attr-defined]
        self.queue.clear()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = time.monotonic()
        self.nat.replies += 1
        self.nat.send_udp(data, self.local, self.peer)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP flow %s -> port %d: %s", self.peer, self.local[1], exc)
        if isinstance(exc, ConnectionRefusedError):  # nothing listens on loopback
            self.nat.refuse(self)

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.last_payload = data[:64]
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.queue) < UDP_MAX_QUEUED:
            self.queue.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpNat:
    """Peer flows (peer address, our address) -> one local UDP socket each."""

    def __init__(
        self,
        send_udp: Callable[[bytes, Addr, Addr], None],
        clock: Callable[[], float] = time.monotonic,
        idle_s: float = UDP_IDLE_S,
        unreachable: Callable[[Addr, Addr, bytes], None] | None = None,
    ) -> None:
        self.send_udp = send_udp
        self.unreachable = unreachable  # (peer, our address, payload): ICMP to the peer
        self.refused = 0
        self.clock = clock
        self.idle_s = idle_s
        self.flows: dict[tuple[Addr, Addr], _Flow] = {}
        self.forwarded = 0
        self.replies = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._opening: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()

    def datagram(self, payload: bytes, src: Addr, dst: Addr) -> None:
        key = (src, dst)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= UDP_MAX_FLOWS:
                oldest = min(self.flows, key=lambda k: self.flows[k].last)
                self.flows.pop(oldest).close()
            flow = _Flow(self, src, dst)
            self.flows[key] = flow
            task = asyncio.ensure_future(self._open(flow))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        self.forwarded += 1
        flow.send(payload)

    def refuse(self, flow: _Flow) -> None:
        self.refused += 1
        if self.unreachable is not None:
            self.unreachable(flow.peer, flow.local, flow.last_payload)

    async def _open(self, flow: _Flow) -> None:
        host = loopback_for(flow.local[0])[-1]
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: flow, remote_addr=(host, flow.local[1]))
        except OSError as e:
            log.debug("UDP flow to port %d: %s", flow.local[1], e)
            self.flows.pop((flow.peer, flow.local), None)
            if isinstance(e, ConnectionRefusedError):
                self.refuse(flow)

    def expire(self) -> None:
        now = time.monotonic()
        for key, flow in list(self.flows.items()):
            if now - flow.last >= self.idle_s:
                flow.close()
                del self.flows[key]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(self.idle_s, 10.0))
            with contextlib.suppress(Exception):
                self.expire()
