"""Disco message bodies: what travels inside the box (see the package docstring).

Theory of operation: a disco plaintext is ``type (1) | version (1) | body``, after the
shape of Tailscale's disco/disco.go. Each message type is a frozen dataclass whose
``pack()`` writes exactly those bytes and whose ``unpack()`` refuses any other length,
type or version with ProtocolError, so ``pack(unpack(x)) == x`` for every x it accepts.

An endpoint on the wire is 18 bytes: a 16-byte IPv6 address (IPv4 as ::ffff:a.b.c.d,
RFC 4291 section 2.5.5.2) and a 2-byte big-endian port. In Python an endpoint is the
``weftnet.endpoint.Endpoint`` named tuple ``(ip, port)``, IPv4 written dotted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from weftnet.endpoint import Endpoint, canonical
from weftnet.wireguard.errors import ProtocolError

__all__ = [
    "CALL_ME_MAYBE",
    "DISCO_VERSION",
    "ENDPOINT_SIZE",
    "MAX_CALL_ME_MAYBE_ENDPOINTS",
    "MESSAGE_HEADER_SIZE",
    "PING",
    "PING_BODY_SIZE",
    "PONG",
    "PONG_BODY_SIZE",
    "TXID_SIZE",
    "CallMeMaybe",
    "Endpoint",
    "Message",
    "Ping",
    "Pong",
    "canonical_endpoint",
    "pack_endpoint",
    "unpack_endpoint",
    "unpack_message",
]


PING = 1  # message types
PONG = 2
CALL_ME_MAYBE = 3
DISCO_VERSION = 0  # any other version is refused; bump it with the map's capability version

MESSAGE_HEADER_SIZE = 2  # 1 type + 1 version
TXID_SIZE = 12  # a ping's random transaction id, echoed in its pong
NODE_KEY_SIZE = 32  # the pinger's WireGuard public key
ENDPOINT_SIZE = 18  # 16-byte IPv6 (or IPv4-mapped) address + 2-byte port
PING_BODY_SIZE = TXID_SIZE + NODE_KEY_SIZE  # 44
PONG_BODY_SIZE = TXID_SIZE + ENDPOINT_SIZE  # 30
# 64 endpoints make a 1232-byte UDP payload (62 header + 16 tag + 2 + 64 x 18), the most
# that fits an IPv6 minimum-MTU packet (1280 - 40 IPv6 - 8 UDP).
MAX_CALL_ME_MAYBE_ENDPOINTS = 64


def canonical_endpoint(endpoint: tuple[str, int]) -> Endpoint:
    """``(ip, port)`` with the address in its one canonical text form (weftnet.endpoint).

    Raises ProtocolError for something that is not an IP address and a 16-bit port.
    """
    try:
        return canonical(endpoint)
    except (ValueError, TypeError) as e:
        raise ProtocolError(str(e)) from None


def pack_endpoint(endpoint: Endpoint) -> bytes:
    host, port = canonical_endpoint(endpoint)
    ip = ipaddress.ip_address(host)
    addr = ip.packed if ip.version == 6 else b"\x00" * 10 + b"\xff\xff" + ip.packed
    return addr + port.to_bytes(2, "big")


def unpack_endpoint(data: bytes) -> Endpoint:
    if len(data) != ENDPOINT_SIZE:
        raise ProtocolError(f"an endpoint is {ENDPOINT_SIZE} bytes")
    ip = ipaddress.IPv6Address(bytes(data[:16]))
    host = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)
    return Endpoint(host, int.from_bytes(data[16:], "big"))


def _header(kind: int) -> bytes:
    return bytes((kind, DISCO_VERSION))


def _body(data: bytes, kind: int, name: str) -> bytes:
    if len(data) < MESSAGE_HEADER_SIZE or data[0] != kind:
        raise ProtocolError(f"not a disco {name}")
    if data[1] != DISCO_VERSION:
        raise ProtocolError(f"disco {name} version {data[1]}, only {DISCO_VERSION} is known")
    return bytes(data[MESSAGE_HEADER_SIZE:])


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there on this path? Answered with a Pong echoing ``txid``.

    ``node_key`` is the sender's WireGuard public key, so the receiver can tie the disco
    key to the peer it belongs to (they must match the map).
    """

    txid: bytes
    node_key: bytes

    def pack(self) -> bytes:
        if len(self.txid) != TXID_SIZE or len(self.node_key) != NODE_KEY_SIZE:
            raise ProtocolError("a disco ping has a 12-byte txid and a 32-byte node key")
        return _header(PING) + self.txid + self.node_key

    @classmethod
    def unpack(cls, data: bytes) -> Ping:
        body = _body(data, PING, "ping")
        if len(body) != PING_BODY_SIZE:
            raise ProtocolError(f"a disco ping body is {PING_BODY_SIZE} bytes")
        return cls(body[:TXID_SIZE], body[TXID_SIZE:])


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a Ping: its ``txid`` and the source ``src`` the ping came from.

    ``src`` tells the pinger how the path looks from the other end: its own public
    ip:port as the peer sees it, one more way to learn its NAT mapping.
    """

    txid: bytes
    src: Endpoint

    def pack(self) -> bytes:
        if len(self.txid) != TXID_SIZE:
            raise ProtocolError("a disco pong has a 12-byte txid")
        return _header(PONG) + self.txid + pack_endpoint(self.src)

    @classmethod
    def unpack(cls, data: bytes) -> Pong:
        body = _body(data, PONG, "pong")
        if len(body) != PONG_BODY_SIZE:
            raise ProtocolError(f"a disco pong body is {PONG_BODY_SIZE} bytes")
        return cls(body[:TXID_SIZE], unpack_endpoint(body[TXID_SIZE:]))


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    """Sent over the relay: "I am pinging you now at these endpoints; ping me back".

    Both sides pinging at once opens both NATs (each outbound ping creates the mapping
    the other side's ping needs). ``endpoints`` are the sender's own candidates.
    """

    endpoints: tuple[Endpoint, ...]

    def pack(self) -> bytes:
        if len(self.endpoints) > MAX_CALL_ME_MAYBE_ENDPOINTS:
            raise ProtocolError(f"at most {MAX_CALL_ME_MAYBE_ENDPOINTS} endpoints")
        return _header(CALL_ME_MAYBE) + b"".join(pack_endpoint(e) for e in self.endpoints)

    @classmethod
    def unpack(cls, data: bytes) -> CallMeMaybe:
        body = _body(data, CALL_ME_MAYBE, "call-me-maybe")
        count, rest = divmod(len(body), ENDPOINT_SIZE)
        if rest or count > MAX_CALL_ME_MAYBE_ENDPOINTS:
            raise ProtocolError(
                f"a disco call-me-maybe body is up to {MAX_CALL_ME_MAYBE_ENDPOINTS} "
                f"endpoints of {ENDPOINT_SIZE} bytes"
            )
        return cls(
            tuple(
                unpack_endpoint(body[i : i + ENDPOINT_SIZE])
                for i in range(0, len(body), ENDPOINT_SIZE)
            )
        )


Message = Ping | Pong | CallMeMaybe

_CODECS: dict[int, type[Ping] | type[Pong] | type[CallMeMaybe]] = {
    PING: Ping,
    PONG: Pong,
    CALL_ME_MAYBE: CallMeMaybe,
}


def unpack_message(data: bytes) -> Message:
    """Any disco plaintext: a Ping, Pong or CallMeMaybe, or ProtocolError."""
    if not data:
        raise ProtocolError("empty disco message")
    codec = _CODECS.get(data[0])
    if codec is None:
        raise ProtocolError(f"unknown disco message type {data[0]}")
    return codec.unpack(data)
