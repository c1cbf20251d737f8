"""NAT-PMP (RFC 6886): the external address and UDP port mappings.

Theory of operation: the client sends a request to the gateway's UDP port 5351 and
retries; the answer carries the opcode plus 128, a result code, and the gateway's
"seconds since start of epoch" (a restart of the gateway shows as a smaller value,
section 3.6: mappings must then be made again). A mapping request names our internal
port, a suggested external port and a lifetime in seconds; lifetime 0 deletes it
(section 3.4). The gateway may grant another port or lifetime: the answer is the truth.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from weftnet.portmap.errors import Refused
from weftnet.wireguard.errors import ProtocolError

PORT = 5351  # section 3.1: the gateway listens here (PCP shares it)
VERSION = 0  # section 3.2: NAT-PMP's version byte
OP_EXTERNAL_ADDRESS = 0  # section 3.2
OP_MAP_UDP = 1  # section 3.3
OP_MAP_TCP = 2
RESPONSE_BIT = 128  # a response's opcode is the request's plus 128
RESULT_SUCCESS = 0
RESULT_UNSUPPORTED_VERSION = 1  # what a PCP-only or newer gateway answers

RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized / refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}

_HEADER = struct.Struct(">BBH")  # version, opcode, result code (responses)
_ADDRESS_RESPONSE = struct.Struct(">BBHI4s")  # + epoch seconds, external IPv4: 12 bytes
_MAP_REQUEST = struct.Struct(">BBHHHI")  # version, op, reserved, internal, external, life
_MAP_RESPONSE = struct.Struct(">BBHIHHI")  # + epoch, internal, external, lifetime: 16 bytes


class NatPmpError(Refused):
    protocol = "NAT-PMP"


@dataclass(frozen=True, slots=True)
class AddressResponse:
    epoch_s: int
    external_ip: str


@dataclass(frozen=True, slots=True)
class MapResponse:
    epoch_s: int
    internal_port: int
    external_port: int
    lifetime_s: int


def external_address_request() -> bytes:
    """Section 3.2: two bytes, version and opcode 0."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_request(internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    """Section 3.3: map UDP ``internal_port`` (lifetime 0 deletes the mapping)."""
    if not 0 < internal_port < 65536 or not 0 <= external_port < 65536:
        raise ValueError("ports must be 1..65535 (external 0: any)")
    if not 0 <= lifetime_s < 2**32:
        raise ValueError("lifetime must fit 32 bits")
    return _MAP_REQUEST.pack(VERSION, OP_MAP_UDP, 0, internal_port, external_port, lifetime_s)


def _check_header(data: bytes, op: int) -> None:
    if len(data) < _HEADER.size:
        raise ProtocolError(f"NAT-PMP: {len(data)}-byte response is too short")
    version, opcode, result = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ProtocolError(f"NAT-PMP: response version {version}, not 0")
    if opcode != op + RESPONSE_BIT:
        raise ProtocolError(f"NAT-PMP: response opcode {opcode}, expected {op + RESPONSE_BIT}")
    if result != RESULT_SUCCESS:
        raise NatPmpError(result, RESULTS.get(result, "unknown"))


def parse_address_response(data: bytes) -> AddressResponse:
    _check_header(data, OP_EXTERNAL_ADDRESS)
    if len(data) != _ADDRESS_RESPONSE.size:
        raise ProtocolError(f"NAT-PMP: address response of {len(data)} bytes, not 12")
    _, _, _, epoch, ip = _ADDRESS_RESPONSE.unpack(data)
    return AddressResponse(epoch, str(ipaddress.IPv4Address(ip)))


def parse_map_response(data: bytes) -> MapResponse:
    _check_header(data, OP_MAP_UDP)
    if len(data) != _MAP_RESPONSE.size:
        raise ProtocolError(f"NAT-PMP: mapping response of {len(data)} bytes, not 16")
    _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack(data)
    return MapResponse(epoch, internal, external, lifetime)
