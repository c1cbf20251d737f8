"""The relay client: one node's connection to one relay, kept up by itself.

Theory of operation: ``start()`` runs a loop that connects (TCP; TLS for an https://
relay, verified like every https connection, weftnet.tls; then the HTTP upgrade of
upgrade.py), checks SERVER_KEY's magic (and the key, if one was pinned), sends
CLIENT_INFO boxed with the node's private key and waits for SERVER_INFO, whose box proves
the server holds the key it announced. Then ``connected`` is True and two tasks run: the
reader hands RECV_PACKET to ``on_packet(src_key, packet)`` and PEER_GONE to
``on_peer_gone(key, reason)``, answers PING and resolves PONGs; the writer drains the
send queue and sends KEEPALIVE when it has been quiet for ``keepalive_interval_s``.
A connection that has carried nothing from the server for ``idle_timeout_s`` is dropped.

After any disconnect (EOF, ERROR from the server, a malformed frame, a refused
handshake) the loop waits ``backoff_delay(attempt)``: 0.5 s doubling to 5 s, with
"equal jitter" (a random half of it is taken off) so that nodes cut off by one relay
restart do not return in lockstep; a connection that lasted BACKOFF_RESET_S starts the
count again.

``send()`` never blocks: it appends to a bounded queue and returns False (counting a
drop) when the queue is full. ``send_batch()`` queues datagrams laid out as a UDP GSO send
(what weftd's data plane hands over) as SEND_PACKET_BATCH frames when the relay listed
FEATURE_BATCH in SERVER_INFO, else one SEND_PACKET each; a RECV_PACKET_BATCH goes whole
to ``on_batch(src_key, datagrams, seg)`` (or datagram by datagram to ``on_packet``). The queue survives reconnects, so a datagram sent during a
short outage goes out once the link is back; the relay is best-effort, like UDP.

Several relays may serve one region as a mesh (docs/relay-protocol.md, "Mesh"):
``set_targets`` gives the client all of them, in the order to try. It stays on the
relay it is connected to while that one is in the list, and moves to the next one
after every disconnect or failed attempt, so a relay that goes away (or leaves the
list, which cuts its connection at once) costs its clients one reconnect to another.

A relay uses this client too, to watch a mesh peer (``mesh_secret``): its hello then
carries the mesh proof (meshauth.py), SERVER_INFO must carry the peer's, and the peer's
PEER_PRESENT and PEER_GONE go to ``on_peer_present`` and ``on_peer_gone``;
``send_forward`` hands the peer datagrams for its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nacl.public import PrivateKey

from weftnet import sockmark, tls
from weftnet.relay import meshauth
from weftnet.relay import protocol as p
from weftnet.relay.upgrade import (
    HEAD_END,
    RelayAddress,
    build_request,
    check_response,
    parse_relay_url,
)
from weftnet.wireguard.errors import ProtocolError

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5  # first wait before reconnecting (before jitter)
BACKOFF_MAX_S = 5.0  # the wait doubles up to this (before jitter)
BACKOFF_RESET_S = 5.0  # a connection that lasted this long resets the backoff
CONNECT_TIMEOUT_S = 5.0  # TCP connect + upgrade + handshake
KEEPALIVE_INTERVAL_S = 15.0  # a quiet link gets a KEEPALIVE this often
IDLE_TIMEOUT_S = 60.0  # no frame from the server this long: reconnect
DEFAULT_QUEUE_PACKETS = 512  # datagrams waiting to be written before send() drops
READ_CHUNK = 256 * 1024  # bytes asked of the socket per read


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """One relay a client may connect to: its name in the relay map, URL and pinned key."""

    name: str
    url: str
    server_key: bytes | None = None


def backoff_delay(
    attempt: int, rand: float, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S
) -> float:
    """Seconds to wait before reconnect number ``attempt`` (0-based); ``rand`` in [0, 1)."""
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt, 32))
    return ceiling * (0.5 + 0.5 * rand)


class RelayClient:
    """A self-healing connection to one relay for one node key."""

    def __init__(
        self,
        url: str,
        node_private_key: bytes,
        on_packet: Callable[[bytes, bytes], None],
        *,
        on_peer_gone: Callable[[bytes, int], None] | None = None,
        on_batch: Callable[[bytes, bytes, int], None] | None = None,
        server_key: bytes | None = None,
        preferred: bool = False,
        queue_packets: int = DEFAULT_QUEUE_PACKETS,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        entropy: Callable[[int], bytes] = os.urandom,
        rand: Callable[[], float] = random.random,
        tls_context: ssl.SSLContext | None = None,
        mesh_secret: bytes | None = None,
        on_peer_present: Callable[[bytes], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        if len(node_private_key) != p.KEY_LEN:
            raise ValueError("a node private key is 32 bytes")
        # For an https:// relay: the certificate and host name are verified with this
        # (default: weftnet.tls.client_context(), the system's CAs).
        self._tls_given = tls_context
        self._tls: ssl.SSLContext | None = None
        self._targets: list[RelayTarget] = []
        self._index = 0  # the target of the current (or next) connection
        self._moved = False  # set_targets cut the connection: the next one is chosen
        self.address: RelayAddress = parse_relay_url(url)
        self._pinned_key: bytes | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.set_targets([RelayTarget(url, url, server_key)])
        self._private_key = node_private_key
        self.node_key = bytes(PrivateKey(node_private_key).public_key)
        self.on_packet = on_packet
        self.on_peer_gone = on_peer_gone
        self.on_batch = on_batch
        self._mesh_secret = mesh_secret  # set: this is a relay watching a mesh peer
        self.on_peer_present = on_peer_present
        self.on_state = on_state  # called with True when connected, False when not
        self._preferred = preferred
        self.queue_packets = queue_packets
        self.keepalive_interval_s = keepalive_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._entropy = entropy
        self._rand = rand

        self.server_key: bytes | None = self._pinned_key  # from SERVER_KEY if not pinned
        self.server_hello: p.ServerHello | None = None  # the limits the relay announced
        self.last_error: str | None = None  # why the last connection ended or failed
        self.connections = 0  # handshakes completed, over the client's life
        self.packets_sent = 0  # datagrams written to a relay connection
        self.packets_received = 0  # datagrams received (each of a batch counts)
        self.drops = 0  # datagrams send() or send_batch() refused: the queue was full
        self.retry_delay_s = 0.0  # the wait chosen after the last disconnect

        self._queue: deque[bytes] = deque()
        self._queued = 0  # datagrams in _queue (a batch counts each of its datagrams)
        self._batches = False  # the relay of this connection takes SEND_PACKET_BATCH
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_rx = 0.0
        self._closed_because: str | None = None  # the ERROR of the current connection
        self._spawned = False  # the loop runs under a supervisor (start(spawn))
        self._connected_at: float | None = None  # when the current connection came up

    # -- public surface ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def target(self) -> RelayTarget:
        """The relay of the current connection (or of the next attempt)."""
        return self._targets[self._index]

    def set_targets(self, targets: Sequence[RelayTarget]) -> None:
        """The relays to use, in the order to try them. A connection to one still listed
        stays; one to a relay that left the list is cut, and the first listed is next.

        Raises ValueError for an empty list, a malformed URL or a key not 32 bytes."""
        if not targets:
            raise ValueError("a relay client needs at least one relay")
        for t in targets:
            parse_relay_url(t.url)
            if t.server_key is not None and len(t.server_key) != p.KEY_LEN:
                raise ValueError("a relay server key is 32 bytes")
        current = self._targets[self._index] if self._targets else None
        self._targets = list(targets)
        if current is not None and current in self._targets:
            self._index = self._targets.index(current)
            return
        self._index = 0
        self._use(self._targets[0])
        writer = self._writer
        if writer is not None:  # connected to a relay that left the list: move now
            self._moved = True  # to the first listed, not past it
            writer.transport.abort()

    def _use(self, target: RelayTarget) -> None:
        self.address = parse_relay_url(target.url)
        self._pinned_key = target.server_key
        self.server_key = target.server_key
        self._tls = None
        if self.address.tls:
            self._tls_given = self._tls_given or tls.client_context()
            self._tls = self._tls_given

    def start(
        self,
        spawn: Callable[[str, Callable[[], Awaitable[None]]], None] | None = None,
        name: str | None = None,
    ) -> None:
        """Begin connecting (and reconnecting) in the background; idempotent. With
        ``spawn`` (weftd's supervisor) the connection loop runs as the supervised task
        ``name`` (default ``relay <host:port>``): an error nobody foresaw is logged and the loop restarted."""
        if self._task is not None or self._spawned:
            return
        self._closing = False
        if spawn is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            return
        self._spawned = True

        async def supervised() -> None:
            if self._closing:
                return
            self._task = asyncio.current_task()
            await self._run()

        spawn(name or f"relay {self.address.host_header}", supervised)

    async def close(self) -> None:
        """Disconnect for good; pending pings fail with ConnectionError."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> RelayClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected, False if ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    def send(self, dst_key: bytes, packet: bytes) -> bool:
        """Queue ``packet`` for ``dst_key``; False (a counted drop) if the queue is full.

        Raises ProtocolError for a key that is not 32 bytes or a packet over 64 KiB.
        """
        frame = p.SendPacket(dst_key, packet).pack()
        if self._queued >= self.queue_packets:
            self.drops += 1
            return False
        self._queue.append(frame)
        self._queued += 1
        self._wake.set()
        return True

    def send_batch(self, dst_key: bytes, data: bytes, seg: int) -> int:
        """Queue datagrams for ``dst_key`` laid out back to back, each ``seg`` bytes but
        the last (a GSO send's layout); how many were queued (the rest are counted drops).

        To a relay that takes batches they go as SEND_PACKET_BATCH frames (as few as the
        frame limits allow), else one SEND_PACKET each.
        """
        if seg <= 0 or seg >= len(data):
            return int(self.send(dst_key, data))
        count = p.batch_segments(len(data), seg)
        room = min(count, self.queue_packets - self._queued)
        if room <= 0:
            self.drops += count
            return 0
        self.drops += count - room
        data = data[: room * seg]
        if self._batches and seg <= p.MAX_BATCH_BYTES:
            # At most what the relay's limits let through at once (a batch over its
            # burst would always be dropped).
            burst = self.server_hello.burst_bytes if self.server_hello else p.MAX_BATCH_BYTES
            fit = min(p.MAX_BATCH_SEGMENTS, p.MAX_BATCH_BYTES // seg, max(1, burst // seg))
            per_frame = fit * seg
            frames = [
                p.SendPacketBatch(dst_key, seg, data[off : off + per_frame]).pack()
                for off in range(0, len(data), per_frame)
            ]
        else:
            frames = [p.SendPacket(dst_key, d).pack() for d in p.split_batch(data, seg)]
        self._queue.extend(frames)
        self._queued += room
        self._wake.set()
        return room

    def send_forward(self, src_key: bytes, dst_key: bytes, data: bytes, seg: int) -> bool:
        """Mesh only: datagrams from ``src_key`` (a client of this relay) for ``dst_key``
        (one of the peer's), one (``seg`` 0) or a batch kept whole; False (counted drops)
        if the queue is full. The peer delivers them as coming from ``src_key``."""
        count = p.batch_segments(len(data), seg) if seg else 1
        if self._queued + count > self.queue_packets:
            self.drops += count
            return False
        if seg:
            frame = p.ForwardPacketBatch(src_key, dst_key, seg, data).pack()
        else:
            frame = p.ForwardPacket(src_key, dst_key, data).pack()
        self._queue.append(frame)
        self._queued += count
        self._wake.set()
        return True

    def note_preferred(self, preferred: bool) -> None:
        """Tell the relay whether it is this node's home (also sent on every reconnect)."""
        self._preferred = preferred
        if self.connected:
            self._queue.append(p.NotePreferred(preferred).pack())
            self._wake.set()

    async def ping(self, timeout: float = 5.0) -> float:
        """Round-trip seconds of one PING through the relay connection.

        Raises ConnectionError when not connected or the link drops, TimeoutError if no
        PONG arrives within ``timeout``.
        """
        if not self.connected:
            raise ConnectionError(f"not connected to the relay at {self.address.host_header}")
        data = self._entropy(p.PING_LEN)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings[data] = future
        sent_at = self._clock()
        self._queue.appendleft(p.Ping(data).pack())  # ahead of data: measure the path
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                answered_at = await future
        finally:
            self._pings.pop(data, None)
        return answered_at - sent_at

    # -- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            self._connected_at = None
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except TimeoutError:  # before OSError, of which it is a subclass
                self.last_error = "timed out connecting to the relay"
            except (OSError, EOFError, asyncio.IncompleteReadError, ProtocolError) as e:
                self.last_error = tls.describe(e)
            finally:
                self._down()
            if self._moved:
                self._moved = False
            elif len(self._targets) > 1:  # try the region's next relay
                self._index = (self._index + 1) % len(self._targets)
                self._use(self._targets[self._index])
            lasted = self._clock() - self._connected_at if self._connected_at is not None else 0.0
            if lasted >= BACKOFF_RESET_S:
                attempt = 0
            delay = backoff_delay(attempt, self._rand(), self.backoff_initial_s, self.backoff_max_s)
            self.retry_delay_s = delay
            attempt += 1
            log.info(
                "relay %s: disconnected (%s); retrying in %.1f s",
                self.address.host_header,
                self.last_error,
                delay,
            )
            await asyncio.sleep(delay)

    def _down(self) -> None:
        was_up = self._up.is_set()
        self._up.clear()
        if was_up and self.on_state is not None:
            self.on_state(False)
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.transport.abort()
        for future in self._pings.values():
            if not future.done():
                future.set_exception(ConnectionError("relay connection lost"))
        self._pings.clear()

    async def _session(self) -> None:
        """One connection, from connect to close (by an exception, or the idle timeout)."""
        decoder = p.FrameDecoder()
        self._closed_because = None
        async with asyncio.timeout(self.connect_timeout_s):
            reader, writer = await sockmark.open_connection(  # bypasses weftd's routes
                self.address.host,
                self.address.port,
                ssl=self._tls,
                server_hostname=self.address.host if self._tls is not None else None,
            )
            self._writer = writer
            writer.write(build_request(self.address.host_header, self.address.path))
            check_response(await reader.readuntil(HEAD_END))
            frames = await self._read_frames(reader, decoder)
            first = frames.pop(0)
            if isinstance(first, p.Error):
                raise ConnectionRefusedError(f"relay refused the connection: {first.reason}")
            if not isinstance(first, p.ServerKey):
                raise ProtocolError(f"relay sent {type(first).__name__} before SERVER_KEY")
            if self._pinned_key is not None and first.key != self._pinned_key:
                raise ProtocolError("relay server key is not the one in the relay map")
            self.server_key = first.key
            proof = None
            if self._mesh_secret is not None:
                proof = meshauth.client_proof(
                    self._mesh_secret, first.challenge, self.node_key, first.key
                )
            hello = p.ClientHello(
                p.PROTOCOL_VERSION, self._preferred, first.challenge, p.FEATURES, proof
            )
            info = p.ClientInfo.create(
                self._private_key, first.key, hello, self._entropy(p.NONCE_LEN)
            )
            writer.write(info.pack())
            while not frames:
                frames = await self._read_frames(reader, decoder)
            second = frames.pop(0)
            if isinstance(second, p.Error):
                raise ConnectionRefusedError(f"relay refused this node: {second.reason}")
            if not isinstance(second, p.ServerInfo):
                raise ProtocolError(f"relay sent {type(second).__name__} before SERVER_INFO")
            self.server_hello = second.open(self._private_key, first.key)
            if self._mesh_secret is not None and not meshauth.proof_matches(
                meshauth.server_proof(self._mesh_secret, first.challenge, self.node_key, first.key),
                self.server_hello.mesh,
            ):
                raise ProtocolError("the relay did not prove it holds the mesh secret")
            self._batches = p.FEATURE_BATCH in self.server_hello.features
        self.connections += 1
        self._connected_at = self._last_rx = self._clock()
        self._up.set()
        log.info("relay %s: connected", self.address.host_header)
        if self.on_state is not None:
            self.on_state(True)
        reading = asyncio.create_task(self._read_loop(reader, decoder, frames))
        writing = asyncio.create_task(self._write_loop(writer))
        try:
            done, _ = await asyncio.wait((reading, writing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (reading, writing):
                t.cancel()
            await asyncio.gather(reading, writing, return_exceptions=True)
        for t in done:
            error = None if t.cancelled() else t.exception()
            if error is not None:
                raise error

    @staticmethod
    async def _read_frames(reader: asyncio.StreamReader, decoder: p.FrameDecoder) -> list[p.Frame]:
        frames: list[p.Frame] = []
        while not frames:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise EOFError("relay closed the connection")
            frames = decoder.feed(data)
        return frames

    async def _read_loop(
        self, reader: asyncio.StreamReader, decoder: p.FrameDecoder, early: list[p.Frame]
    ) -> None:
        self._dispatch(early)
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise EOFError(self._closed_because or "relay closed the connection")
            self._last_rx = self._clock()
            self._dispatch(decoder.feed(data))

    def _dispatch(self, frames: list[p.Frame]) -> None:
        for frame in frames:
            if isinstance(frame, p.RecvPacketBatch):
                self._deliver_batch(frame)
            elif isinstance(frame, p.RecvPacket):
                self.packets_received += 1
                try:
                    self.on_packet(frame.src, frame.packet)
                except Exception:
                    log.exception("relay: on_packet failed")
            elif isinstance(frame, p.Pong):
                future = self._pings.get(frame.data)
                if future is not None and not future.done():
                    future.set_result(self._clock())
            elif isinstance(frame, p.Ping):
                self._queue.appendleft(p.Pong(frame.data).pack())
                self._wake.set()
            elif isinstance(frame, p.PeerGone):
                if self.on_peer_gone is not None:
                    try:
                        self.on_peer_gone(frame.node_key, frame.reason)
                    except Exception:
                        log.exception("relay: on_peer_gone failed")
            elif isinstance(frame, p.PeerPresent) and self.on_peer_present is not None:
                self.on_peer_present(frame.node_key)
            elif isinstance(frame, p.Error):
                self._closed_because = f"relay closed the connection: {frame.reason}"
            elif not isinstance(frame, p.KeepAlive):
                raise ProtocolError(f"relay sent an unexpected {type(frame).__name__}")

    def _deliver_batch(self, frame: p.RecvPacketBatch) -> None:
        self.packets_received += p.batch_segments(len(frame.data), frame.seg)
        try:
            if self.on_batch is not None:
                self.on_batch(frame.src, frame.data, frame.seg)
                return
            for packet in p.split_batch(frame.data, frame.seg):
                self.on_packet(frame.src, packet)
        except Exception:
            log.exception("relay: on_batch failed")

    async def _write_loop(self, writer: asyncio.StreamWriter) -> None:
        keepalive = p.KeepAlive().pack()
        while True:
            if not self._queue:
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.keepalive_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    self._queue.append(keepalive)
            if self._clock() - self._last_rx > self.idle_timeout_s:
                self.last_error = f"nothing from the relay in {self.idle_timeout_s:.0f} s"
                return
            batch = list(self._queue)
            self._queue.clear()
            self.packets_sent += self._queued
            self._queued = 0
            if not self._batches:  # batches queued for the relay before a reconnect
                batch = [f for frame in batch for f in _unbatched(frame)]
            writer.writelines(batch)
            await writer.drain()


def _unbatched(frame: bytes) -> list[bytes]:
    """``frame`` as SEND_PACKETs, for a relay that does not take batches."""
    if frame[0] != p.SEND_PACKET_BATCH:
        return [frame]
    batch = p.SendPacketBatch.unpack(frame)
    return [p.SendPacket(batch.dst, d).pack() for d in p.split_batch(batch.data, batch.seg)]
