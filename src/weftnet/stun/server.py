"""A STUN server on UDP: answers RFC 5389 Binding requests with the requester's address.

Theory of operation: a node sends a Binding request from its WireGuard socket; we
answer with XOR-MAPPED-ADDRESS = the source address the datagram came from, which is
the mapping its NAT made (RFC 5389 section 7.3.1; the message format is weftnet.stun).
Anything that is not a well-formed Binding request - other STUN messages, garbage,
truncated datagrams - is dropped without an answer and counted, so the server cannot be
made to talk to anyone who did not ask, nor to crash. The answer is at most a few bytes
longer than the request (no useful amplification). An IPv4 client seen through a
dual-stack socket (``::ffff:a.b.c.d``) is answered with its plain IPv4 address.

The socket is bound up front by ``bind_udp`` (so a taken port is a clear startup error),
then ``start`` attaches the protocol on the running loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, cast

from weftnet import stun
from weftnet.wireguard.errors import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_STUN_PORT = 3478  # RFC 5389 section 18.4: the "stun" UDP port


class StunServer(asyncio.DatagramProtocol):
    """Answers Binding requests; ``answered`` and ``ignored`` count datagrams."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.ignored = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport has sendto() but is no asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self.answer(data, addr)
        if answer is None:
            self.ignored += 1
            return
        if self.transport is not None:
            self.transport.sendto(answer, addr)
            self.answered += 1

    @staticmethod
    def answer(data: bytes, addr: Any) -> bytes | None:
        """The Binding response for ``data`` from ``addr``, or None to stay silent."""
        if not stun.is_stun(data):
            return None
        try:
            txid = stun.parse_request(data)
            return stun.binding_response(txid, (_plain_ip(addr[0]), int(addr[1])))
        except (ProtocolError, ValueError, TypeError, IndexError):
            return None

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier answers (the requester went away): nothing to do.
        log.debug("stun: %s", exc)


def _plain_ip(host: str) -> str:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to host:port; OSError (with strerror) if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def start(sock: socket.socket) -> tuple[asyncio.DatagramTransport, StunServer]:
    """Serve STUN on the bound ``sock`` until the returned transport is closed."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(StunServer, sock=sock)
    return transport, protocol
