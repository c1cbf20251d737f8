"""A STUN server on UDP: answers RFC 5389 Binding requests with the requester's address.

Theory of operation: a node sends a Binding request from its WireGuard socket; we
answer with XOR-MAPPED-ADDRESS = the source address the datagram came from, which is
the mapping its NAT made (RFC 5389 section 7.3.1; the message format is weftnet.stun).
Anything that is not a well-formed Binding request - other STUN messages, garbage,
truncated datagrams - is dropped without an answer and counted, so the server cannot be
made to talk to anyone who did not ask, nor to crash. A request shorter than its answer
would be (40 bytes for IPv4, 52 for IPv6) is dropped too: a spoofed source gets back
no more bytes than were sent (weftnet's own requests, with SOFTWARE and FINGERPRINT,
are 40 bytes). Each source (an IPv4 address, an IPv6 /64) gets at most ``rate_per_s``
answers per second after a burst of ``burst`` (a token bucket per source, at most
``max_sources`` of them, driven by the injected ``clock``); requests over that are
dropped and counted in ``limited``. An IPv4 client seen through a dual-stack socket
(``::ffff:a.b.c.d``) is answered with its plain IPv4 address.

The socket is bound up front by ``bind_udp`` (so a taken port is a clear startup error),
then ``start`` attaches the protocol on the running loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from weftnet import stun
from weftnet.relay.limits import TokenBucket
from weftnet.wireguard.errors import ProtocolError

log = logging.getLogger(__name__)

DEFAULT_STUN_PORT = 3478  # RFC 5389 section 18.4: the "stun" UDP port
RATE_PER_S = 10.0  # answers per second per source, sustained
BURST = 20  # answers per source at once
MAX_SOURCES = 65536  # token buckets remembered; beyond, idle ones are forgotten


class StunServer(asyncio.DatagramProtocol):
    """Answers Binding requests; ``answered``, ``ignored`` (not a request we answer) and
    ``limited`` (over the source's rate) count datagrams."""

    def __init__(
        self,
        *,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.ignored = 0
        self.limited = 0
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport has sendto() but is no asyncio.DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        answer = self.answer(data, addr)
        if answer is None:
            self.ignored += 1
            return
        if not self.allow(addr[0], self._clock()):
            self.limited += 1
            return
        if self.transport is not None:
            self.transport.sendto(answer, addr)
            self.answered += 1

    def allow(self, host: str, now: float) -> bool:
        """May the source ``host`` be answered at ``now``? Takes one of its tokens."""
        source = _source(host)
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                # Forget the sources whose bucket has refilled (as good as new); if none
                # has, refuse newcomers until some do rather than hand out fresh bursts.
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens(now) < b.burst}
                if len(self._buckets) >= self.max_sources:
                    return False
            bucket = self._buckets[source] = TokenBucket(self.rate_per_s, self.burst, now)
        return bucket.take(1, now)

    @staticmethod
    def answer(data: bytes, addr: Any) -> bytes | None:
        """The Binding response for ``data`` from ``addr``, or None to stay silent: not a
        Binding request, or shorter than the response (no amplification)."""
        if not stun.is_stun(data):
            return None
        try:
            txid = stun.parse_request(data)
            response = stun.binding_response(txid, (_plain_ip(addr[0]), int(addr[1])))
        except (ProtocolError, ValueError, TypeError, IndexError):
            return None
        return response if len(response) <= len(data) else None

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier answers (the requester went away): nothing to do.
        log.debug("stun: %s", exc)


def _source(host: str) -> str:
    """What one rate limit covers: an IPv4 address, or an IPv6 /64 (one site's LAN)."""
    ip = ipaddress.ip_address(_plain_ip(host))
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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
