"""The extra UDP sockets birthday probing opens on the hard-NAT side (weftnet.magicsock.birthday).

Each socket is bound to a random local port, so the NAT gives each a mapping of its
own. A socket whose probe found the peer stays open and carries that peer's disco and
WireGuard traffic from then on (the path "via:<local port>/<remote ip>", remote port):
its mapping exists only on the NAT, nobody can move it to the main socket. The rest
are closed when the attempt ends. Datagrams that arrive are handed to ``on_datagram``
from the event loop's reader callback, at most MAX_READS_PER_WAKEUP per wakeup.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from weftnet.endpoint import Endpoint, canonical

log = logging.getLogger("weftd.magicsock")

MAX_SOCKETS = 512  # extra sockets open at once, all peers together: file descriptors
# stay well under the usual soft limit of 1024 (one peer's attempt takes 450)
MAX_READS_PER_WAKEUP = 64  # datagrams read from one socket per reader callback
RECV_SIZE = 65535  # a UDP datagram, GRO off on these sockets

OnDatagram = Callable[[int, bytes, Endpoint], None]  # local port, data, source


class PortPool:
    """Extra IPv4 UDP sockets, by local port. Call ``close_all`` when done."""

    def __init__(self, on_datagram: OnDatagram) -> None:
        self._on_datagram = on_datagram
        self._socks: dict[int, socket.socket] = {}

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

    def close(self, port: int) -> None:
        sock = self._socks.pop(port, None)
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
                data, addr = sock.recvfrom(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                log.debug("receive on extra port %d failed: %s", port, e)
                return
            try:
                src = canonical(addr)
            except ValueError:
                continue
            self._on_datagram(port, data, src)
