"""The relay server: forwards opaque datagrams between connected nodes, by node key.

Theory of operation: ``handle(reader, writer)`` runs one client connection once its
transport is up (after the HTTP upgrade; ``serve_tcp`` does that upgrade itself for a
plain TCP listener). The server sends SERVER_KEY, waits CLIENT_INFO_TIMEOUT_S for
CLIENT_INFO, opens its box with the claimed node key (proof of the private half), checks
that it holds the random challenge this connection's SERVER_KEY carried (no replay), asks
``admit(key)`` (the coordination server's verdict: known, not expired, not revoked) and
answers SERVER_INFO. A refusal is one ERROR frame, then the connection closes.

An admitted connection is registered under its node key; a newer connection with the
same key replaces the older one. Each connection has two tasks: the reader decodes
frames and routes every SEND_PACKET to the destination's bounded send queue as
RECV_PACKET (a SEND_PACKET_BATCH as one RECV_PACKET_BATCH to a client that listed
FEATURE_BATCH, else one RECV_PACKET per datagram); the writer drains that queue to
the socket, sends KEEPALIVE when the queue has been quiet for ``keepalive_interval_s``,
closes a client that has sent nothing for ``idle_timeout_s``, and drops one that has not
taken WRITE_CHUNK bytes off the socket within ``write_timeout_s`` (a slow or stalled
reader). What a client sends passes its own token bucket first (limits.py): over the
limit, a packet is dropped and counted.
Queues are bounded in bytes: a frame counts from when it is queued until the socket has
taken it, and a destination over its ``queue_bytes``, or all queues together over
``total_queue_bytes``, drops the packet and counts it against the destination. So a
client that never reads holds at most ``queue_bytes`` of the relay's memory, for at
most ``write_timeout_s``. A packet a client addresses to itself is dropped and counted. A packet for
a key that is not connected here is answered with PEER_GONE(not here), at most once per
PEER_GONE_INTERVAL_S per key. When a client leaves, every client that sent to it is told
PEER_GONE(disconnected).

A malformed frame ends that connection (with an ERROR saying why) and nothing else.
``disconnect(key, reason)`` (the control server revoking a node) unregisters the key at
once, writes ERROR and closes; the socket is aborted if it has not closed after
CLOSE_GRACE_S. The only clock read is ``clock()`` (injectable); the limits take ``now``.

Mesh (with ``mesh=``, mesh.py): a connection whose hello proves the mesh secret is another
relay of the region watching this one, not a node: it is kept apart from the node keys,
told PEER_PRESENT for every client connected here (at once, then as they come) and
PEER_GONE(disconnected) as they leave, and may send FORWARD_PACKET(_BATCH), delivered to
the client here as RECV_PACKET(_BATCH) from the original source (never forwarded again,
so no loops). A packet from a client here for a key that is not here but held by a mesh
peer goes to that peer. A node's connection that sends a mesh frame is malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nacl.public import PrivateKey

from weftnet.endpoint import format_endpoint
from weftnet.relay import protocol as p
from weftnet.relay.limits import NoticeThrottle, TokenBucket
from weftnet.relay.totals import RelayTotals
from weftnet.relay.upgrade import (
    HEAD_END,
    RELAY_PATH,
    SWITCHING_PROTOCOLS,
    error_response,
    parse_head,
    refusal,
)
from weftnet.wireguard.errors import ProtocolError

if TYPE_CHECKING:
    from weftnet.relay.mesh import Mesh

log = logging.getLogger(__name__)

DEFAULT_RATE_BYTES_PER_S = 25_000_000  # 200 Mbit/s of datagrams per client
DEFAULT_BURST_BYTES = 2 * 1024 * 1024  # a client may send this much at once
DEFAULT_QUEUE_BYTES = 1024 * 1024  # frame bytes waiting for one client before drops
DEFAULT_TOTAL_QUEUE_BYTES = 256 * 1024 * 1024  # all clients' queues together
WRITE_TIMEOUT_S = 2.0  # a client that does not take WRITE_CHUNK bytes this fast is dropped
WRITE_CHUNK = 64 * 1024  # frame bytes written to the socket between drains
KEEPALIVE_INTERVAL_S = 15.0  # a quiet connection gets a KEEPALIVE this often
IDLE_TIMEOUT_S = 60.0  # a client silent (or not reading) this long is closed
CLIENT_INFO_TIMEOUT_S = 5.0  # from accept to CLIENT_INFO (and for the HTTP head)
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # serve_tcp with TLS: the handshake must be done by then
ADMIT_TIMEOUT_S = 10.0  # longest wait for the admit() verdict before refusing
PEER_GONE_INTERVAL_S = 1.0  # at most one PEER_GONE(not here) per key per client this often
CLOSE_GRACE_S = 1.0  # a closing socket gets this long to flush, then it is aborted
READ_CHUNK = 256 * 1024  # bytes asked of the socket per read
MAX_SENDERS = 1024  # senders remembered per client for PEER_GONE(disconnected)

UNKNOWN_KEY = "unknown node key"
FORGED_INFO = "client info does not open with the claimed node key"
REPLACED = "replaced by a newer connection with the same node key"
SHUTTING_DOWN = "relay shutting down"
NOT_MESH_PEER = "not a mesh peer of this relay (no mesh, or the mesh proof does not match)"
MESH_BEHIND = "mesh peer fell behind on presence notices; reconnect to resync"
MESH_QUEUE_FACTOR = 4  # a mesh peer's send queue holds this many clients' worth


@dataclass(frozen=True, slots=True)
class ClientStats:
    """One connected client, as seen by the relay at one moment."""

    node_key: bytes
    remote: str  # "host:port" of the transport, or "?" if unknown
    preferred: bool  # the client's last NOTE_PREFERRED (or CLIENT_INFO)
    connected_at: float  # clock() when it was admitted
    packets_in: int  # datagrams accepted from it (within its rate limit), batched or not
    bytes_in: int  # datagram bytes in those
    packets_out: int  # datagrams queued to it, batched or not
    bytes_out: int  # datagram bytes in those
    drops_rate: int  # its packets dropped for exceeding its rate limit
    drops_queue: int  # packets to it dropped because its send queue was full
    drops_no_peer: int  # its packets to keys not connected here
    queued: int  # frames waiting in its send queue now
    queued_bytes: int  # bytes of frames queued to it and not yet taken by its socket
    drops_self: int  # its packets addressed to its own key (dropped)
    queued_bytes_peak: int  # the most queued_bytes has been


class _Conn:
    """The server's state for one admitted connection."""

    __slots__ = (
        "batches", "bucket", "budget", "bytes_in", "bytes_out", "close_reason", "connected_at",
        "drops_no_peer", "drops_queue", "drops_rate", "drops_self", "key", "last_rx",
        "mesh", "packets_in", "packets_out", "preferred", "queue", "queue_limit", "queued_bytes",
        "queued_bytes_peak", "remote", "senders", "tasks", "throttle", "wake", "writer",
    )  # fmt: skip

    def __init__(
        self, key: bytes, writer: asyncio.StreamWriter, preferred: bool, now: float,
        bucket: TokenBucket, queue_limit: int, budget: _Budget, batches: bool,
    ) -> None:  # fmt: skip
        self.key = key
        self.batches = batches  # it listed FEATURE_BATCH: it takes RECV_PACKET_BATCH
        self.writer = writer
        self.remote = _peername(writer)
        self.preferred = preferred
        self.connected_at = now
        self.last_rx = now
        self.bucket = bucket
        self.throttle = NoticeThrottle(PEER_GONE_INTERVAL_S)
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit  # bytes
        self.queued_bytes = 0  # queued + being written; counted in budget.used too
        self.queued_bytes_peak = 0
        self.budget = budget
        self.wake = asyncio.Event()
        self.senders: set[bytes] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.close_reason: str | None = None
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.drops_rate = self.drops_queue = self.drops_no_peer = self.drops_self = 0
        self.mesh = False  # another relay of the region watching this one, not a node

    def enqueue(self, frame: bytes) -> bool:
        return self.enqueue_all([frame])

    def enqueue_all(self, frames: list[bytes]) -> bool:
        """Queue all of ``frames`` (the datagrams of one batch), or none: False."""
        n = sum(map(len, frames))
        if (
            self.close_reason is not None
            or self.queued_bytes + n > self.queue_limit
            or self.budget.used + n > self.budget.limit
        ):
            return False
        self.queue.extend(frames)
        self.queued_bytes += n
        self.queued_bytes_peak = max(self.queued_bytes_peak, self.queued_bytes)
        self.budget.used += n
        self.budget.peak = max(self.budget.peak, self.budget.used)
        self.wake.set()
        return True

    def written(self, n: int) -> None:
        """``n`` queued bytes have been taken by the socket: no longer held here."""
        if self.close_reason is None:
            self.queued_bytes -= n
            self.budget.used -= n

    def close(self, reason: str) -> None:
        """Stop both tasks; the ERROR frame goes out ahead of anything still queued."""
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.queue.clear()
        self.budget.used -= self.queued_bytes
        self.queued_bytes = 0
        with contextlib.suppress(Exception):
            self.writer.write(p.Error(reason).pack())
        for task in self.tasks:
            task.cancel()

    def stats(self) -> ClientStats:
        return ClientStats(
            self.key, self.remote, self.preferred, self.connected_at, self.packets_in,
            self.bytes_in, self.packets_out, self.bytes_out, self.drops_rate,
            self.drops_queue, self.drops_no_peer, len(self.queue), self.queued_bytes,
            self.drops_self, self.queued_bytes_peak,
        )  # fmt: skip


class _Budget:
    """The byte budget that all clients' send queues share."""

    __slots__ = ("limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0


def _peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_endpoint((str(peer[0]), int(peer[1])))
    return "?"


class RelayServer:
    """A relay: ``handle`` each upgraded connection, or ``serve_tcp`` on a port of its own."""

    def __init__(
        self,
        private_key: bytes,
        admit: Callable[[bytes], Awaitable[bool]],
        *,
        rate_bytes_per_s: int = DEFAULT_RATE_BYTES_PER_S,
        burst_bytes: int = DEFAULT_BURST_BYTES,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        total_queue_bytes: int = DEFAULT_TOTAL_QUEUE_BYTES,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        keepalive_interval_s: float = KEEPALIVE_INTERVAL_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        client_info_timeout_s: float = CLIENT_INFO_TIMEOUT_S,
        admit_timeout_s: float = ADMIT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        entropy: Callable[[int], bytes] = os.urandom,
        features: frozenset[str] = p.FEATURES,
        mesh: Mesh | None = None,
    ) -> None:
        if len(private_key) != p.KEY_LEN:
            raise ValueError("the relay private key is 32 bytes")
        if queue_bytes < p.HEADER_LEN + p.MAX_PAYLOAD:
            raise ValueError("queue_bytes must hold at least one largest frame")
        if total_queue_bytes < queue_bytes:
            raise ValueError("total_queue_bytes must be at least queue_bytes")
        self._private_key = private_key
        self.public_key = bytes(PrivateKey(private_key).public_key)
        self._admit = admit
        self.rate_bytes_per_s = rate_bytes_per_s
        self.burst_bytes = burst_bytes
        self.queue_bytes = queue_bytes
        self.budget = _Budget(total_queue_bytes)
        self.write_timeout_s = write_timeout_s
        self.keepalive_interval_s = keepalive_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.client_info_timeout_s = client_info_timeout_s
        self.admit_timeout_s = admit_timeout_s
        self._clock = clock
        self._entropy = entropy
        self.features = features & p.FEATURES  # announced in SERVER_INFO (none: as v2.0)
        self._conns: dict[bytes, _Conn] = {}
        self._handlers: set[asyncio.Task[object]] = set()  # every connection's task
        self._handshaking: set[asyncio.Task[object]] = set()  # those not yet admitted
        self._listeners: list[asyncio.Server] = []
        self._admitting: dict[bytes, int] = {}  # admit() calls in flight, per key
        self._cut_while_admitting: dict[bytes, str] = {}  # disconnect()ed meanwhile: why
        self._closed = False
        self.mesh = mesh  # the region's other relays, if this relay is in a mesh
        self._watchers: set[_Conn] = set()  # mesh peers' connections to this relay
        self.mesh_forwarded = 0  # datagrams from clients here handed to a mesh peer
        self.mesh_delivered = 0  # datagrams from mesh peers delivered to clients here
        self.mesh_drops = 0  # from mesh peers, for keys not here; or a peer's queue full
        # The counters of clients no longer registered (metrics: totals only grow).
        self.ended = RelayTotals()

    # -- what the coordination server uses ------------------------------------------

    def mesh_peer_count(self) -> int:
        """Mesh peers (relays of this relay's region) watching it now."""
        return len(self._watchers)

    def clients(self) -> list[ClientStats]:
        """Every registered client, in no particular order."""
        return [conn.stats() for conn in self._conns.values()]

    def client(self, key: bytes) -> ClientStats | None:
        conn = self._conns.get(key)
        return conn.stats() if conn is not None else None

    def totals(self) -> RelayTotals:
        """Every client's counters summed, those gone included."""
        return self.ended.plus(self.clients())

    def disconnect(self, key: bytes, reason: str = "node key revoked") -> bool:
        """Cut ``key`` off now (revocation). False if it was neither connected nor being
        admitted; an admission in flight is refused whatever ``admit`` answers, since that
        answer may predate the revocation."""
        if key in self._admitting:
            self._cut_while_admitting[key] = reason
        conn = self._conns.pop(key, None)
        if conn is None:
            return key in self._admitting
        self.ended.add(conn.stats())
        log.info("relay: disconnecting %s: %s", key.hex()[:16], reason)
        conn.close(reason)
        self._tell_senders_gone(conn)
        return True

    async def serve_tcp(
        self, host: str | None, port: int, tls_context: ssl.SSLContext | None = None
    ) -> asyncio.Server:
        """Listen for TCP (TLS with ``tls_context``), do the HTTP upgrade on /relay, then
        ``handle``.

        Returns the started asyncio.Server (``sockets`` tells the bound port); ``close()``
        stops it along with every client.
        """
        server = await asyncio.start_server(
            self._accept_tcp,
            host,
            port,
            ssl=tls_context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls_context is not None else None,
        )
        self._listeners.append(server)
        return server

    async def close(self) -> None:
        """Stop listening, close every client with ERROR, and wait for their tasks."""
        self._closed = True
        for server in self._listeners:
            server.close()
        for key in list(self._conns):
            self.disconnect(key, SHUTTING_DOWN)
        for watcher in list(self._watchers):
            watcher.close(SHUTTING_DOWN)
        me = asyncio.current_task()
        for task in self._handshaking:
            if task is not me:
                task.cancel()
        handlers = [t for t in self._handlers if t is not me]
        if handlers:
            # Admitted clients were told ERROR; give their sockets the grace to flush it.
            _, late = await asyncio.wait(handlers, timeout=CLOSE_GRACE_S + 0.5)
            for task in late:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        self._listeners.clear()

    # -- one connection ---------------------------------------------------------------

    async def _accept_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - asyncio always runs this callback in a task
            return
        self._handlers.add(task)
        self._handshaking.add(task)
        try:
            await self._upgrade_then_handle(reader, writer)
        finally:
            self._handlers.discard(task)
            self._handshaking.discard(task)

    async def _upgrade_then_handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closed:
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(self.client_info_timeout_s):
                head = await reader.readuntil(HEAD_END)
            request = parse_head(head)
        except ProtocolError:
            writer.write(error_response(400, "Bad Request"))
            await _close(writer)
            return
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            await _close(writer)
            return
        refused = refusal(request, RELAY_PATH)
        if refused is not None:
            writer.write(error_response(*refused))
            await _close(writer)
            return
        writer.write(SWITCHING_PROTOCOLS)
        await self.handle(reader, writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Run one client connection whose transport (after any upgrade) is established.

        Returns when the connection is over; the writer is closed by then.
        """
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - a coroutine awaited by asyncio has a task
            raise RuntimeError("RelayServer.handle must run in an asyncio task")
        self._handlers.add(task)
        self._handshaking.add(task)
        conn: _Conn | None = None
        try:
            if self._closed:
                writer.write(p.Error(SHUTTING_DOWN).pack())
                return
            conn, decoder, early = await self._admit_client(reader, writer)
            self._handshaking.discard(task)
            if conn is None:
                return
            await self._run(conn, reader, decoder, early)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if conn is not None:
                self._unregister(conn)
            self._handshaking.discard(task)
            try:
                await _close(writer)
            finally:
                self._handlers.discard(task)

    async def _admit_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[_Conn | None, p.FrameDecoder, list[p.Frame]]:
        """The handshake; a refusal writes ERROR and returns no connection."""
        decoder = p.FrameDecoder()
        challenge = self._entropy(p.CHALLENGE_LEN)  # fresh per connection: no replays
        writer.write(p.ServerKey(self.public_key, challenge).pack())
        await writer.drain()
        try:
            async with asyncio.timeout(self.client_info_timeout_s):
                frames: list[p.Frame] = []
                while not frames:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        return None, decoder, []
                    frames = decoder.feed(data)
        except TimeoutError:
            return self._refuse(writer, "no CLIENT_INFO within the handshake timeout"), decoder, []
        except ProtocolError as e:
            return self._refuse(writer, f"malformed frame: {e}"), decoder, []
        first = frames[0]
        if not isinstance(first, p.ClientInfo):
            return self._refuse(writer, "expected CLIENT_INFO first"), decoder, []
        try:
            hello = first.open(self._private_key, challenge)
        except ProtocolError as e:
            reason = p.CHALLENGE_MISMATCH if str(e) == p.CHALLENGE_MISMATCH else FORGED_INFO
            return self._refuse(writer, reason), decoder, []
        key = first.node_key
        if hello.mesh is not None:
            return self._admit_mesh_peer(writer, key, hello), decoder, frames[1:]
        self._admitting[key] = self._admitting.get(key, 0) + 1
        try:
            async with asyncio.timeout(self.admit_timeout_s):
                admitted = await self._admit(key)
        except Exception:
            log.warning("relay: admit(%s) failed", key.hex()[:16], exc_info=True)
            return self._refuse(writer, "admission check failed; try again later"), decoder, []
        finally:
            cut = self._cut_while_admitting.get(key)
            self._admitting[key] -= 1
            if not self._admitting[key]:
                del self._admitting[key]
                self._cut_while_admitting.pop(key, None)
        if cut is not None:
            return self._refuse(writer, cut), decoder, []
        if not admitted:
            return self._refuse(writer, UNKNOWN_KEY), decoder, []
        if self._closed:
            return self._refuse(writer, SHUTTING_DOWN), decoder, []
        server_hello = p.ServerHello(
            p.PROTOCOL_VERSION, self.rate_bytes_per_s, self.burst_bytes, self.features
        )
        nonce = self._entropy(p.NONCE_LEN)
        writer.write(p.ServerInfo.create(self._private_key, key, server_hello, nonce).pack())
        now = self._clock()
        bucket = TokenBucket(self.rate_bytes_per_s, self.burst_bytes, now)
        batches = p.FEATURE_BATCH in hello.features and p.FEATURE_BATCH in self.features
        conn = _Conn(
            key, writer, hello.preferred, now, bucket, self.queue_bytes, self.budget, batches
        )
        old = self._conns.get(key)
        if old is not None:
            old.close(REPLACED)
            self.ended.add(old.stats())
        self._conns[key] = conn
        self._tell_watchers(p.PeerPresent(key).pack())
        log.info("relay: %s connected from %s", key.hex()[:16], conn.remote)
        return conn, decoder, frames[1:]

    def _admit_mesh_peer(
        self, writer: asyncio.StreamWriter, key: bytes, hello: p.ClientHello
    ) -> _Conn | None:
        """Another relay of the mesh (its relay key proven by the box, the secret by
        ``hello.mesh``): tell it every client here; None (ERROR sent) if not a peer."""
        proof = self.mesh.answer(hello, key) if self.mesh is not None else None
        if proof is None:
            return self._refuse(writer, NOT_MESH_PEER)
        if self._closed:
            return self._refuse(writer, SHUTTING_DOWN)
        server_hello = p.ServerHello(
            p.PROTOCOL_VERSION, self.rate_bytes_per_s, self.burst_bytes, self.features, proof
        )
        nonce = self._entropy(p.NONCE_LEN)
        writer.write(p.ServerInfo.create(self._private_key, key, server_hello, nonce).pack())
        now = self._clock()
        bucket = TokenBucket(self.rate_bytes_per_s, self.burst_bytes, now)  # unused: see _run
        limit = self.queue_bytes * MESH_QUEUE_FACTOR
        conn = _Conn(key, writer, False, now, bucket, limit, self.budget, True)
        conn.mesh = True
        self._watchers.add(conn)
        present = [p.PeerPresent(k).pack() for k in self._conns]
        if not conn.enqueue_all(present):
            conn.close(MESH_BEHIND)
        log.info("relay: mesh peer %s connected from %s", key.hex()[:16], conn.remote)
        return conn

    def _tell_watchers(self, frame: bytes) -> None:
        for watcher in list(self._watchers):
            if not watcher.enqueue(frame):  # a lost notice would leave its view wrong
                watcher.close(MESH_BEHIND)

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, reason: str) -> None:
        log.info("relay: refusing %s: %s", _peername(writer), reason)
        writer.write(p.Error(reason).pack())

    async def _run(
        self, conn: _Conn, reader: asyncio.StreamReader, decoder: p.FrameDecoder,
        early: list[p.Frame],
    ) -> None:  # fmt: skip
        reading = asyncio.create_task(self._read_loop(conn, reader, decoder, early))
        writing = asyncio.create_task(self._write_loop(conn))
        conn.tasks = [reading, writing]
        if conn.close_reason is not None:  # replaced or disconnected before the tasks began
            for t in conn.tasks:
                t.cancel()
        try:
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        if reading.done() and not reading.cancelled():
            error = reading.exception()
            if isinstance(error, ProtocolError):
                conn.close(f"malformed frame: {error}")

    async def _read_loop(
        self, conn: _Conn, reader: asyncio.StreamReader, decoder: p.FrameDecoder,
        early: list[p.Frame],
    ) -> None:  # fmt: skip
        self._dispatch(conn, early, self._clock())
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            now = self._clock()
            conn.last_rx = now
            self._dispatch(conn, decoder.feed(data), now)

    def _dispatch(self, conn: _Conn, frames: list[p.Frame], now: float) -> None:
        """Act on frames from ``conn``; ProtocolError for a frame a client may not send."""
        if conn.mesh:
            self._dispatch_mesh(conn, frames)
            return
        for frame in frames:
            if isinstance(frame, p.SendPacketBatch):
                if p.FEATURE_BATCH not in self.features:
                    raise ProtocolError("SEND_PACKET_BATCH to a relay that did not offer it")
                self._forward(conn, frame.dst, frame.data, frame.seg, now)
            elif isinstance(frame, p.SendPacket):
                self._forward(conn, frame.dst, frame.packet, 0, now)
            elif isinstance(frame, p.Ping):
                conn.enqueue(p.Pong(frame.data).pack())
            elif isinstance(frame, p.NotePreferred):
                conn.preferred = frame.preferred
            elif not isinstance(frame, p.KeepAlive | p.Pong):
                raise ProtocolError(f"a client may not send {type(frame).__name__}")

    def _dispatch_mesh(self, conn: _Conn, frames: list[p.Frame]) -> None:
        """Frames from a mesh peer: datagrams for clients here, and link upkeep."""
        for frame in frames:
            if isinstance(frame, p.ForwardPacketBatch):
                self._deliver_forwarded(frame.src, frame.dst, frame.data, frame.seg)
            elif isinstance(frame, p.ForwardPacket):
                self._deliver_forwarded(frame.src, frame.dst, frame.packet, 0)
            elif isinstance(frame, p.Ping):
                conn.enqueue(p.Pong(frame.data).pack())
            elif not isinstance(frame, p.KeepAlive | p.Pong):
                raise ProtocolError(f"a mesh peer may not send {type(frame).__name__}")

    def _deliver_forwarded(self, src_key: bytes, dst_key: bytes, data: bytes, seg: int) -> None:
        count = p.batch_segments(len(data), seg) if seg else 1
        dst = self._conns.get(dst_key)
        if dst is None:  # it left meanwhile; never forwarded again (no loops)
            self.mesh_drops += count
            return
        if self._deliver(dst, src_key, data, seg, count):
            self.mesh_delivered += count

    def _forward(self, conn: _Conn, dst_key: bytes, data: bytes, seg: int, now: float) -> None:
        """Datagrams from ``conn`` to ``dst_key``: one (``seg`` 0) or a batch cut every
        ``seg`` bytes, which goes on whole as one frame to a client that takes batches."""
        size = len(data)
        count = p.batch_segments(size, seg) if seg else 1
        if dst_key == conn.key:
            conn.drops_self += count  # would only fill its own queue at no cost to it
            return
        if not conn.bucket.take(size, now):
            conn.drops_rate += count
            return
        conn.packets_in += count
        conn.bytes_in += size
        dst = self._conns.get(dst_key)
        if dst is None:
            if self.mesh is not None and self.mesh.holds(dst_key):
                if self.mesh.forward(conn.key, dst_key, data, seg):
                    self.mesh_forwarded += count
                else:
                    self.mesh_drops += count
                return
            conn.drops_no_peer += count
            if conn.throttle.allow(dst_key, now):
                conn.enqueue(p.PeerGone(dst_key, p.PEER_GONE_NOT_HERE).pack())
            return
        if self._deliver(dst, conn.key, data, seg, count) and len(dst.senders) < MAX_SENDERS:
            dst.senders.add(conn.key)

    @staticmethod
    def _deliver(dst: _Conn, src_key: bytes, data: bytes, seg: int, count: int) -> bool:
        """Queue datagrams from ``src_key`` to ``dst``: whole, or one by one to a client
        that does not take batches; False (a counted drop) if its queue is full."""
        if not seg:
            frames = [p.RecvPacket(src_key, data).pack()]
        elif dst.batches:
            frames = [p.RecvPacketBatch(src_key, seg, data).pack()]
        else:  # an older client: one RECV_PACKET per datagram
            frames = [p.RecvPacket(src_key, d).pack() for d in p.split_batch(data, seg)]
        if not dst.enqueue_all(frames):
            dst.drops_queue += count
            return False
        dst.packets_out += count
        dst.bytes_out += len(data)
        return True

    async def _write_loop(self, conn: _Conn) -> None:
        writer = conn.writer
        keepalive = p.KeepAlive().pack()
        while True:
            if not conn.queue:
                conn.wake.clear()
                try:
                    async with asyncio.timeout(self.keepalive_interval_s):
                        await conn.wake.wait()
                except TimeoutError:
                    conn.enqueue(keepalive)
            if self._clock() - conn.last_rx > self.idle_timeout_s:
                conn.close(f"no frame from the client in {self.idle_timeout_s:.0f} s")
                return
            while conn.queue:
                batch, n = [], 0
                while conn.queue and n < WRITE_CHUNK:
                    frame = conn.queue.popleft()
                    batch.append(frame)
                    n += len(frame)
                writer.writelines(batch)
                try:
                    async with asyncio.timeout(self.write_timeout_s):
                        await writer.drain()
                except TimeoutError:
                    conn.close(f"client did not read {n} bytes in {self.write_timeout_s:g} s")
                    return
                conn.written(n)

    def _unregister(self, conn: _Conn) -> None:
        if conn.mesh:
            self._watchers.discard(conn)
            log.info("relay: mesh peer %s disconnected", conn.key.hex()[:16])
            return
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
            self.ended.add(conn.stats())
            self._tell_senders_gone(conn)
            log.info("relay: %s disconnected", conn.key.hex()[:16])

    def _tell_senders_gone(self, conn: _Conn) -> None:
        if conn.key in self._conns:  # replaced, not gone
            return
        gone = p.PeerGone(conn.key, p.PEER_GONE_DISCONNECTED).pack()
        self._tell_watchers(gone)
        for sender in conn.senders:
            other = self._conns.get(sender)
            if other is not None:
                other.enqueue(gone)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, letting buffered frames (an ERROR) out for CLOSE_GRACE_S, then abort."""
    with contextlib.suppress(Exception):
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_GRACE_S):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError, OSError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
