"""PCP (RFC 6887): MAP requests for UDP, and ANNOUNCE to see whether PCP is spoken.

Theory of operation: a request is a 24-byte common header (section 7.1: version 2,
opcode, requested lifetime, our own IP as the server sees it, IPv4 as ::ffff:a.b.c.d)
followed by the opcode's body. MAP (section 11.1) carries a 12-byte nonce, the protocol
(17 for UDP), our internal port and a suggested external port and address; the answer
(section 7.2: R bit set, result code, granted lifetime, the server's epoch) repeats the
nonce and gives the assigned external port and address. Lifetime 0 deletes the mapping
(section 15). A NAT-PMP-only gateway answers a PCP request with its own version byte 0
and result "unsupported version" (section 9), which ``parse_response`` reports as
``UnsupportedVersion``. The nonce is the caller's (drawn from its own randomness).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from weftnet.portmap.errors import Refused
from weftnet.wireguard.errors import ProtocolError

PORT = 5351  # section 19.1: the server's port (shared with NAT-PMP)
VERSION = 2  # section 7.1
OP_ANNOUNCE = 0  # section 14.1
OP_MAP = 1  # section 11
RESPONSE_BIT = 0x80  # the R bit of the opcode byte
PROTO_UDP = 17
NONCE_SIZE = 12  # section 11.1: mapping nonce, 96 bits
HEADER_SIZE = 24  # section 7.1/7.2: common request and response headers
MAP_BODY_SIZE = 36  # section 11.1: nonce 12, proto 1, reserved 3, ports 2+2, address 16
MAX_SIZE = 1100  # section 7: a PCP message is at most 1100 bytes
RESULT_SUCCESS = 0

RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "no resources",
    9: "unsupported protocol",
    10: "user exceeded quota",
    11: "cannot provide external",
    12: "address mismatch",
    13: "excessive remote peers",
}

_REQUEST_HEADER = struct.Struct(">BBHI16s")  # version, R|op, reserved, lifetime, client IP
_RESPONSE_HEADER = struct.Struct(">BBBBII12s")  # version, R|op, reserved, result, life, epoch
_MAP_BODY = struct.Struct(">12sB3sHH16s")


class PcpError(Refused):
    protocol = "PCP"


class UnsupportedVersion(ProtocolError):
    """A NAT-PMP server's answer to a PCP request: it speaks NAT-PMP only."""


@dataclass(frozen=True, slots=True)
class Response:
    opcode: int
    lifetime_s: int
    epoch_s: int
    # MAP only:
    nonce: bytes = b""
    internal_port: int = 0
    external_port: int = 0
    external_ip: str = ""


def _ip16(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed).packed
    return addr.packed


def _ip_text(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def announce_request(client_ip: str) -> bytes:
    """Section 14.1: an ANNOUNCE with lifetime 0: does the gateway speak PCP?"""
    return _REQUEST_HEADER.pack(VERSION, OP_ANNOUNCE, 0, 0, _ip16(client_ip))


def map_request(
    client_ip: str,
    nonce: bytes,
    internal_port: int,
    external_port: int,
    lifetime_s: int,
    external_ip: str = "0.0.0.0",
) -> bytes:
    """Section 11.1: map UDP ``internal_port`` (lifetime 0: delete the mapping)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the nonce must be {NONCE_SIZE} bytes")
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError("ports must be 1..65535 (external 0: any)")
    if not 0 <= lifetime_s < 2**32:
        raise ValueError("lifetime must fit 32 bits")
    header = _REQUEST_HEADER.pack(VERSION, OP_MAP, 0, lifetime_s, _ip16(client_ip))
    body = _MAP_BODY.pack(
        nonce, PROTO_UDP, b"\0\0\0", internal_port, external_port, _ip16(external_ip)
    )
    return header + body


def parse_response(data: bytes) -> Response:
    """A response to ANNOUNCE or MAP. PcpError for a failure result (after checking the
    header), UnsupportedVersion when a NAT-PMP server answered, ProtocolError otherwise."""
    if len(data) >= 4 and data[0] == 0:  # NAT-PMP's version byte (RFC 6887 section 9)
        raise UnsupportedVersion("PCP: the gateway speaks NAT-PMP only")
    if len(data) < HEADER_SIZE:
        raise ProtocolError(f"PCP: {len(data)}-byte response is shorter than its header")
    if len(data) > MAX_SIZE or len(data) % 4:
        raise ProtocolError(f"PCP: a {len(data)}-byte response (at most 1100, multiple of 4)")
    version, op, _, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if version != VERSION:
        raise ProtocolError(f"PCP: response version {version}, not 2")
    if not op & RESPONSE_BIT:
        raise ProtocolError("PCP: a request, not a response (R bit clear)")
    opcode = op & ~RESPONSE_BIT
    if result != RESULT_SUCCESS:
        raise PcpError(result, RESULTS.get(result, "unknown error"))
    if opcode == OP_ANNOUNCE:
        return Response(opcode, lifetime, epoch)
    if opcode != OP_MAP:
        raise ProtocolError(f"PCP: unexpected opcode {opcode} in a response")
    if len(data) < HEADER_SIZE + MAP_BODY_SIZE:
        raise ProtocolError(f"PCP: MAP response of {len(data)} bytes is too short")
    nonce, proto, _, internal, external, ip = _MAP_BODY.unpack_from(data, HEADER_SIZE)
    if proto != PROTO_UDP:
        raise ProtocolError(f"PCP: MAP response for protocol {proto}, not UDP")
    return Response(opcode, lifetime, epoch, nonce, internal, external, _ip_text(ip))
