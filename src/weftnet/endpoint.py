"""One type for a UDP endpoint (an IP address and a port), used by every layer.

``Endpoint`` is a named tuple, so it is also the ``(host, port)`` pair the socket API
takes. Text forms follow RFC 3986: ``198.18.0.1:41641`` and ``[fd00::1]:41641``. The
canonical form has IPv4-mapped IPv6 addresses as dotted IPv4, IPv6 compressed, and no
zone, so two spellings of one address compare equal. Pure: no sockets, no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

MAX_PORT = 0xFFFF


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return format_endpoint(self)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.host)

    @property
    def is_relay(self) -> bool:
        """A relay pseudo-endpoint ("relay:<region>", 0), not an IP address."""
        return self.host.startswith(RELAY_PREFIX)

    @property
    def is_via(self) -> bool:
        """A pseudo-endpoint for a path from an extra (birthday) socket, not an IP."""
        return self.host.startswith(VIA_PREFIX)


RELAY_PREFIX = "relay:"  # host of the pseudo-endpoint for a path through a relay region
# Host of the pseudo-endpoint for a direct path from one of the extra sockets birthday
# probing opens (weftnet.magicsock.birthday): "via:<local port>/<remote ip>", remote port.
VIA_PREFIX = "via:"
PSEUDO_PREFIXES = (RELAY_PREFIX, VIA_PREFIX)  # hosts that are not IP addresses


def via_endpoint(local_port: int, remote: tuple[str, int]) -> Endpoint:
    """The pseudo-endpoint for ``remote`` reached from our extra socket on ``local_port``."""
    return Endpoint(f"{VIA_PREFIX}{local_port}/{remote[0]}", remote[1])


def split_via(ep: tuple[str, int]) -> tuple[int, Endpoint]:
    """(local port, remote endpoint) of a via pseudo-endpoint; ValueError otherwise."""
    host = ep[0]
    if not host.startswith(VIA_PREFIX):
        raise ValueError(f"not a via endpoint: {host!r}")
    port, sep, ip = host[len(VIA_PREFIX) :].partition("/")
    if not sep or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
        raise ValueError(f"not a via endpoint: {host!r}")
    return int(port), canonical((ip, ep[1]))


def canonical(addr: tuple[str, int] | tuple[str, int, int, int]) -> Endpoint:
    """An address tuple (as recvfrom returns, IPv6 ones with flowinfo and scope) in
    canonical form. Raises ValueError for something that is not an IP and a 16-bit port."""
    host, port = addr[0], addr[1]
    ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_PORT:
        raise ValueError(f"port out of range: {port!r}")
    return Endpoint(str(ip), port)


def parse_endpoint(text: str) -> Endpoint:
    """``1.2.3.4:5`` or ``[v6]:5`` to a canonical Endpoint; ValueError otherwise. A bare
    IPv6 address with a port after its last colon (``fd00::1:5``) is refused: ambiguous."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not an ip:port endpoint: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"brackets around an IPv4 address: {text!r}")
    elif ":" in host:
        raise ValueError(f"an IPv6 endpoint needs brackets, as in [fd00::1]:41641: {text!r}")
    try:
        return canonical((host, int(port)))
    except ValueError as e:
        raise ValueError(f"not an ip:port endpoint: {text!r} ({e})") from None


def try_parse_endpoint(text: str) -> Endpoint | None:
    """parse_endpoint, or None for anything malformed (input from peers and servers)."""
    try:
        return parse_endpoint(text)
    except ValueError:
        return None


def format_endpoint(ep: tuple[str, int]) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    host, port = ep[0], ep[1]
    return (
        f"[{host}]:{port}"
        if ":" in host and not host.startswith(PSEUDO_PREFIXES)
        else f"{host}:{port}"
    )


def is_usable_peer_address(ep: Endpoint) -> bool:
    """Whether a peer's advertised endpoint is worth sending to: a unicast address that
    is not loopback, unspecified, multicast or link-local, and a non-zero port."""
    if ep.is_relay or ep.is_via or ep.port == 0:
        return False
    ip = ep.ip
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local)
