"""The extra UDP sockets birthday probing opens on the hard-NAT side (weftnet.magicsock.birthday).

Each socket is bound to a random local port, so the NAT gives each a mapping of its
own. A socket whose probe found the peer stays open and carries that peer's disco and
WireGuard traffic from then on (the path "via:<local port>/<remote ip>", remote port):
its mapping exists only on the NAT, nobody can move it to the main socket. The rest
are closed when the attempt ends. A socket that became a path is ``promote``d: large
buffers and GRO, like the data plane's own socket (weftnet.udpsock), and batches leave it
in one GSO send. Every socket carries weftd's bypass mark (weftnet.sockmark). Datagrams
that arrive are handed to ``on_datagram`` from the event loop's reader callback (a GRO
read whole, with its segment size), at most MAX_READS_PER_WAKEUP reads per wakeup.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from weftnet import sockmark, udpsock
from weftnet.endpoint import Endpoint, canonical

log = logging.getLogger("weftd.magicsock")

MAX_SOCKETS = 512  # extra sockets open at once, all peers together: file descriptors
# stay well under the usual soft limit of 1024 (one peer's attempt takes 450)
MAX_READS_PER_WAKEUP = 64  # reads from one socket per reader callback
RECV_SIZE = 65536 + 4096  # one coalesced GRO read (a promoted socket), or one datagram

# local port, data (one datagram, or a GRO read), segment size (len(data): one), source
OnDatagram = Callable[[int, bytes, int, Endpoint], None]


class PortPool:
    """Extra IPv4 UDP sockets, by local port. Call ``close_all`` when done."""

    def __init__(self, on_datagram: OnDatagram) -> None:
        self._on_datagram = on_datagram
        self._socks: dict[int, socket.socket] = {}
        self._promoted: set[int] = set()

    def __len__(self) -> int:
        return len(self._socks)

    def __contains__(self, port: int) -> bool:
        return port in self._socks

    def open(self) -> int | None:
        """A new socket on a random local port; its port, or None if none can be opened."""
        if len(self._socks) >= MAX_SOCKETS:
            return None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sockmark.mark(sock)  # like the main socket: never into weftd's own routes
            sock.bind(("0.0.0.0", 0))
            port = sock.getsockname()[1]
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, port, sock)
        except OSError as e:
            sock.close()
            log.warning("birthday probing: cannot open an extra UDP socket: %s", e)
            return None
        self._socks[port] = sock
        return port

    def sendto(self, port: int, data: bytes, dst: Endpoint) -> bool:
        sock = self._socks.get(port)
        if sock is None:
            return False
        try:
            sock.sendto(data, (dst.host, dst.port))
        except OSError as e:
            log.debug("send from extra port %d to %s failed: %s", port, dst, e)
            return False
        return True

    def promote(self, port: int) -> None:
        """The socket on ``port`` carries a peer's traffic now: tune it for batches (once)."""
        if port in self._promoted:
            return
        sock = self._socks.get(port)
        if sock is not None:
            self._promoted.add(port)
            try:
                udpsock.tune(sock)
            except OSError as e:
                log.debug("tuning extra port %d failed: %s", port, e)

    def sendto_batch(self, port: int, data: bytes, seg: int, dst: Endpoint) -> bool:
        """Datagrams back to back in ``data`` (each ``seg`` bytes but the last), in one
        GSO send where the kernel can."""
        sock = self._socks.get(port)
        if sock is None:
            return False
        try:
            udpsock.send_segments(sock, data, seg, (dst.host, dst.port))
        except OSError as e:
            log.debug("send from extra port %d to %s failed: %s", port, dst, e)
            return False
        return True

    def close(self, port: int) -> None:
        sock = self._socks.pop(port, None)
        self._promoted.discard(port)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def keep_only(self, ports: set[int]) -> None:
        """Close every socket whose port is not in ``ports``."""
        for port in [p for p in self._socks if p not in ports]:
            self.close(port)

    def close_all(self) -> None:
        self.keep_only(set())

    def _readable(self, port: int, sock: socket.socket) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, anc, _flags, addr = sock.recvmsg(RECV_SIZE, 64)
            except BlockingIOError:
                return
            except OSError as e:
                log.debug("receive on extra port %d failed: %s", port, e)
                return
            try:
                src = canonical(addr)
            except ValueError:
                continue
            self._on_datagram(port, data, udpsock.gro_segment(anc, len(data)), src)
