"""asyncio streams over the userspace netstack, for ``--tun userspace-networking``.

``UserspaceNet`` wraps a pure ``weftnet.netstack.Stack``: IP packets from the tunnel go
in through ``deliver``, packets for the tunnel come out through the ``send_packets``
callback, and apps get ``asyncio.StreamReader``/``StreamWriter`` pairs backed by a
custom ``asyncio.Transport`` per TCP connection:

* ``writer.write`` queues bytes in the connection's send buffer; the protocol is paused
  (``await writer.drain()`` blocks) while more than ``WRITE_HIGH_WATER`` bytes are
  unacknowledged, resumed below ``WRITE_LOW_WATER``;
* the StreamReader pauses the transport when its buffer is full, which stops the
  advertised window's right edge; resuming reopens it with a window update;
* ``writer.close()`` / ``write_eof()`` send FIN, ``transport.abort()`` sends RST;
* ``get_extra_info('peername')`` / ``('sockname')`` give (address, port).

The loop: every entry point (packets delivered, an app write, the timer) ends in
``_run``, which drains the stack's events into the streams, sends what the stack wants
to send and re-arms one timer at ``stack.next_timer_at()``. App writes within one loop
iteration are flushed together (``call_soon``), so they leave as full segments.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from weftnet.netstack import events as ev
from weftnet.netstack.stack import Stack
from weftnet.netstack.tcp import TcpConnection, TcpError

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 1 << 20  # unacknowledged bytes above which writer.drain() waits
WRITE_LOW_WATER = 256 * 1024
STREAM_LIMIT = 1 << 16  # StreamReader limit: it pauses the transport at twice this

Address = tuple[str, int]
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
TcpHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, Address, Address], Awaitable[None]
]
UdpHandler = Callable[[bytes, Address, Address], None]
AcceptHook = Callable[[Address, Address], Awaitable[bool]]  # (local, remote) -> accept?
UnreachableHandler = Callable[[Address, Address], None]  # (our source, destination)


class _TcpTransport(asyncio.Transport):
    def __init__(self, net: UserspaceNet, conn: TcpConnection) -> None:
        super().__init__(extra={"peername": conn.remote, "sockname": conn.local})
        self._net = net
        self._conn = conn
        self.reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        self.protocol = asyncio.StreamReaderProtocol(self.reader)
        self.connecting: asyncio.Future[None] | None = None
        self._closing = False
        self._lost = False
        self._reading = True
        self._write_paused = False
        self._high, self._low = WRITE_HIGH_WATER, WRITE_LOW_WATER
        conn.user = self

    def writer(self) -> asyncio.StreamWriter:
        return asyncio.StreamWriter(self, self.protocol, self.reader, asyncio.get_running_loop())

    # ---- asyncio.Transport --------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._lost:
            return
        try:
            self._net._stack.send(self._conn, data)
        except TcpError:
            return  # the connection is already gone; connection_lost tells the app
        self._net._schedule_run()
        if not self._write_paused and self._conn.send_buffered > self._high:
            self._write_paused = True
            self._net._write_paused.add(self)
            self.protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._net._stack.close(self._conn, self._net._clock())
        self._net._schedule_run()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._net._stack.close(self._conn, self._net._clock(), orphan=True)
        self._net._schedule_run()
        asyncio.get_running_loop().call_soon(self.connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        self._net._stack.abort(self._conn)
        self._net._schedule_run()
        asyncio.get_running_loop().call_soon(self.connection_lost, None)

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._set_reading(False)

    def resume_reading(self) -> None:
        self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        if reading != self._reading and not self._lost:
            self._reading = reading
            self._net._stack.pause_receiving(self._conn, not reading)
            self._net._schedule_run()

    def get_write_buffer_size(self) -> int:
        return self._conn.send_buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    # ---- from the stack's events --------------------------------------------------

    def maybe_resume_writing(self) -> bool:
        """True once the protocol is resumed (or gone)."""
        if self._lost:
            return True
        if self._conn.send_buffered <= self._low:
            self._write_paused = False
            self.protocol.resume_writing()
            return True
        return False

    def data_received(self, data: bytes) -> None:
        if not self._lost:
            self.protocol.data_received(data)

    def eof_received(self) -> None:
        if not self._lost and not self.protocol.eof_received():
            self.close()

    def lost_before_connected(self) -> None:
        self._lost = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._net._write_paused.discard(self)
        self.protocol.connection_lost(exc)


class UserspaceNet:
    """TCP and UDP endpoints on this node's tailnet addresses, with no TUN device."""

    def __init__(
        self,
        send_packets: Callable[[list[bytes]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        random_bytes: Callable[[int], bytes] = os.urandom,
        mtu: int = 1420,
    ) -> None:
        self._send_packets = send_packets
        self._clock = clock
        self._stack = Stack(random_bytes=random_bytes, mtu=mtu)
        self._tcp_handler: TcpHandler | None = None
        self._accept_hook: AcceptHook | None = None
        self._udp_handler: UdpHandler | None = None
        self._unreachable: UnreachableHandler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._run_scheduled = False
        self._in_run = False
        self._again = False
        self._closed = False
        self._write_paused: set[_TcpTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- configuration ------------------------------------------------------------

    def set_addresses(self, addresses: list[Interface]) -> None:
        self._stack.set_addresses([a.ip for a in addresses])

    def on_tcp_connection(
        self, handler: TcpHandler | None, *, accept: AcceptHook | None = None
    ) -> None:
        """Incoming connections go to ``handler(reader, writer, local, remote)``; with
        None every SYN is answered with RST. With ``accept``, a SYN is answered only
        once ``await accept(local, remote)`` says: True, SYN-ACK (then ``handler``);
        False (or an exception), RST, so the peer's connect is refused; undecided
        after ``ACCEPT_DECISION_S``, RST too."""
        self._tcp_handler = handler
        self._accept_hook = accept if handler is not None else None
        self._stack.decide_accept = self._accept_hook is not None
        if handler is None:
            self._stack.unlisten(None)
        else:
            self._stack.listen(None)

    def on_udp_datagram(self, handler: UdpHandler | None) -> None:
        """Incoming datagrams go to ``handler(payload, src, dst)``; with None they are
        answered with ICMP port unreachable."""
        self._udp_handler = handler
        if handler is None:
            self._stack.unlisten_udp(None)
        else:
            self._stack.listen_udp(None)

    def on_udp_unreachable(self, handler: UnreachableHandler | None) -> None:
        """ICMP port unreachable for a datagram we sent: ``handler(src, dst)``."""
        self._unreachable = handler

    def refuse_udp(self, src: Address, dst: Address, payload: bytes = b"") -> None:
        """Answer a datagram from peer ``src`` to our ``dst`` with ICMP port unreachable
        (when nothing took it after the fact)."""
        self._stack.udp_unreachable(src, dst, payload)
        self._schedule_run()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._arm_timer()

    def close(self) -> None:
        """Reset every connection and stop the timer."""
        self._closed = True
        for conn in self._stack.connections:
            self._stack.abort(conn)
        self._run()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- traffic ------------------------------------------------------------------

    def deliver(self, packets: list[bytes]) -> None:
        """IP packets from the tunnel, already filtered."""
        now = self._clock()
        receive = self._stack.receive
        for p in packets:
            receive(p, now)
        self._run()

    def send_udp(self, payload: bytes, src: Address, dst: Address) -> None:
        self._stack.send_udp(payload, src, dst)
        self._schedule_run()

    async def open_connection(
        self, host: str, port: int, *, timeout: float = 10.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like ``asyncio.open_connection``, to a tailnet address: ConnectionRefusedError
        when the peer answers RST, TimeoutError after ``timeout`` seconds."""
        if self._loop is None:
            self.start()
        conn = self._stack.connect(host, port, self._clock())
        transport = _TcpTransport(self, conn)
        transport.connecting = asyncio.get_running_loop().create_future()
        transport.protocol.connection_made(transport)
        self._run()
        try:
            async with asyncio.timeout(timeout):
                await transport.connecting
        except TimeoutError:
            self._stack.abort(conn)
            self._schedule_run()
            raise TimeoutError(f"no answer from {host} port {port} in {timeout} s") from None
        return transport.reader, transport.writer()

    # ---- the loop -----------------------------------------------------------------

    def _schedule_run(self) -> None:
        if not self._run_scheduled:
            self._run_scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self._scheduled_run)

    def _scheduled_run(self) -> None:
        self._run_scheduled = False
        self._run()

    def _run(self) -> None:
        """Drain events, send packets, re-arm the timer; re-entry (a send callback that
        delivers packets back to us) only asks for one more round."""
        if self._in_run:
            self._again = True
            return
        self._in_run = True
        try:
            while True:
                self._again = False
                while (event := self._stack.next_event()) is not None:
                    self._handle(event)
                if self._write_paused:
                    self._write_paused = {
                        t for t in self._write_paused if not t.maybe_resume_writing()
                    }
                packets = self._stack.packets_to_send(self._clock())
                if packets:
                    self._send_packets(packets)
                if not self._again:
                    break
        finally:
            self._in_run = False
        self._arm_timer()

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.UdpDatagram):
            if self._udp_handler is not None:
                try:
                    self._udp_handler(event.payload, event.src, event.dst)
                except Exception:
                    log.exception("userspace UDP handler failed")
            return
        if isinstance(event, ev.EchoReply):
            return
        if isinstance(event, ev.UdpUnreachable):
            if self._unreachable is not None:
                self._unreachable(event.src, event.dst)
            return
        if isinstance(event, ev.ConnectionRequest):
            self._decide(event)
            return
        if isinstance(event, ev.NewConnection):
            self._accept(event.conn)
            return
        transport = event.conn.user
        if not isinstance(transport, _TcpTransport):
            return
        if isinstance(event, ev.DataReceived):
            transport.data_received(event.data)
        elif isinstance(event, ev.Connected):
            if transport.connecting is not None and not transport.connecting.done():
                transport.connecting.set_result(None)
        elif isinstance(event, ev.StreamEnded):
            transport.eof_received()
        elif isinstance(event, ev.Closed):
            transport.connection_lost(None)
        else:
            self._reset(transport, event)

    def _reset(self, transport: _TcpTransport, event: ev.Reset) -> None:
        exc: Exception
        if event.reason == ev.REFUSED:
            exc = ConnectionRefusedError(
                f"{event.conn.remote[0]} port {event.conn.remote[1]} refused the connection"
            )
        elif event.reason == ev.TIMED_OUT:
            exc = TimeoutError(f"{event.conn.remote[0]} stopped answering")
        elif event.reason == ev.ABORTED:
            exc = ConnectionAbortedError("connection aborted")
        else:
            exc = ConnectionResetError(f"{event.conn.remote[0]} reset the connection")
        if transport.connecting is not None and not transport.connecting.done():
            transport.connecting.set_exception(exc)  # open_connection raises it
            transport.lost_before_connected()
            return
        transport.connection_lost(None if event.reason == ev.ABORTED else exc)

    def _accept(self, conn: TcpConnection) -> None:
        handler = self._tcp_handler
        if handler is None:
            self._stack.abort(conn)
            return
        transport = _TcpTransport(self, conn)
        transport.protocol.connection_made(transport)
        task: asyncio.Task[None] = asyncio.ensure_future(
            handler(transport.reader, transport.writer(), conn.local, conn.remote)
        )
        self._tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _decide(self, request: ev.ConnectionRequest) -> None:
        hook = self._accept_hook
        if hook is None:  # the hook was removed meanwhile: as without one
            if self._stack.accept_request(request.id, self._clock()) is None:
                log.debug("connection request %d expired", request.id)
            return

        async def decide() -> None:
            try:
                ok = await hook(request.local, request.remote)
            except Exception as e:
                log.warning("userspace accept hook failed: %r", e)
                ok = False
            if self._closed:
                return
            if ok:
                self._stack.accept_request(request.id, self._clock())
            else:
                self._stack.refuse_request(request.id)
            self._run()

        task: asyncio.Task[None] = asyncio.ensure_future(decide())
        self._tasks.add(task)
        task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("userspace TCP handler failed: %r", task.exception())

    def _arm_timer(self) -> None:
        if self._loop is None:  # start() not called yet: adopt the running loop, if any
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
        if self._closed:
            return
        at = self._stack.next_timer_at()
        if at is None or (self._timer is not None and self._timer_at <= at):
            return  # an earlier timer fires first and re-arms
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_later(max(0.0, at - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._stack.on_timer(self._clock())
        self._run()
