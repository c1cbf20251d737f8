"""STUN Binding requests and responses (RFC 5389), enough to learn our public ip:port.

Theory of operation: a node sends a Binding request from its WireGuard UDP socket to a
STUN server; the server answers with the source address it saw, which is the mapping
the node's NAT made for that socket, the address peers must send to. The request is a
20-byte header and nothing else but an optional SOFTWARE attribute and a FINGERPRINT;
nothing is authenticated (RFC 5389 section 10 credentials are for ICE, not for us):
the 96-bit random transaction id is what ties a response to our request.

Wire format (RFC 5389 section 6), all integers big-endian::

    0                   1                   2                   3
    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
   |0 0|     STUN Message Type     |         Message Length        |
   |                         Magic Cookie                          |
   |                     Transaction ID (96 bits)                  |

followed by attributes, each ``type (2) | length (2) | value``, padded to 4 bytes
(section 15; the padding's content is ignored, RFC 5769's own vectors pad with 0x20).
The length in the header counts the attribute bytes only.

- XOR-MAPPED-ADDRESS (section 15.2) holds the address XORed with the magic cookie
  (port, IPv4) or with the cookie followed by the transaction id (IPv6), so that NATs
  rewriting addresses inside payloads leave it alone. MAPPED-ADDRESS (section 15.1) is
  the plain RFC 3489 form, accepted when XOR-MAPPED-ADDRESS is missing.
- FINGERPRINT (section 15.5) is CRC-32 of the message up to it, XOR 0x5354554e, and
  must be the last attribute. We write it on everything we send, which lets a shared
  socket tell STUN from other traffic with certainty, and check it when present.
- MESSAGE-INTEGRITY (section 15.4) is HMAC-SHA1 with a credential; we never send it,
  ``message_integrity_ok`` checks it (used on RFC 5769's vectors). Attributes after it,
  other than FINGERPRINT, are ignored when looking attributes up.

One UDP socket carries STUN, disco and WireGuard: ``is_stun`` is the cheap test (top
two bits zero, the magic cookie at bytes 4..8, and a length field that matches the
datagram). Disco packets start with a byte >= 0x40, so fail the first test. WireGuard
messages start with a type 1..4 and three zero bytes: their bytes 4..8 are an index
that can equal the cookie, but their "length" bytes 2..4 are zero, which would make a
20-byte datagram, and no WireGuard message is 20 bytes long.

Nothing here does I/O, reads a clock or makes random numbers: transaction ids come in
as arguments. Errors are ``ProtocolError``; an error response from the server is a
``StunErrorResponse``, a ProtocolError that carries the code and reason.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from dataclasses import dataclass

from weftnet.endpoint import Endpoint
from weftnet.wireguard.errors import ProtocolError

__all__ = [
    "ATTR_ERROR_CODE",
    "ATTR_FINGERPRINT",
    "ATTR_MAPPED_ADDRESS",
    "ATTR_MESSAGE_INTEGRITY",
    "ATTR_SOFTWARE",
    "ATTR_XOR_MAPPED_ADDRESS",
    "BINDING_ERROR_RESPONSE",
    "BINDING_REQUEST",
    "BINDING_SUCCESS_RESPONSE",
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "TXID_SIZE",
    "Attribute",
    "Endpoint",
    "Message",
    "StunErrorResponse",
    "binding_error_response",
    "binding_request",
    "binding_response",
    "is_stun",
    "message_integrity_ok",
    "parse_request",
    "parse_response",
]


HEADER_SIZE = 20  # 2 type + 2 length + 4 magic cookie + 12 transaction id
TXID_SIZE = 12  # 96-bit transaction id (section 6)
MAGIC_COOKIE = 0x2112A442  # fixed value at bytes 4..8 of every RFC 5389 message
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
ATTR_HEADER_SIZE = 4  # 2 type + 2 length
MAX_SOFTWARE_BYTES = 763  # section 15.10: fewer than 128 characters, at most 763 bytes
MAX_REASON_BYTES = 763  # section 15.6: the same bound for an error's reason phrase

# Message types (section 6 and 18.1): method Binding (0x001) in each class.
BINDING_REQUEST = 0x0001
BINDING_SUCCESS_RESPONSE = 0x0101
BINDING_ERROR_RESPONSE = 0x0111

# Attribute types (section 18.2). Below 0x8000: comprehension-required.
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_USERNAME = 0x0006
ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_ERROR_CODE = 0x0009
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028

FINGERPRINT_XOR = 0x5354554E  # "STUN", XORed into the CRC-32 (section 15.5)
FINGERPRINT_ATTR_SIZE = 8  # 4 header + 4 CRC
INTEGRITY_ATTR_SIZE = 24  # 4 header + 20-byte HMAC-SHA1

FAMILY_IPV4 = 0x01  # address family codes of (XOR-)MAPPED-ADDRESS
FAMILY_IPV6 = 0x02
ADDRESS_IPV4_SIZE = 8  # 1 reserved + 1 family + 2 port + 4 address
ADDRESS_IPV6_SIZE = 20  # 1 reserved + 1 family + 2 port + 16 address

_HEADER = struct.Struct(">HHI12s")
_ATTR_HEADER = struct.Struct(">HH")


class StunErrorResponse(ProtocolError):
    """The server answered our request with a Binding error response (section 15.6)."""

    def __init__(self, txid: bytes, code: int, reason: str) -> None:
        super().__init__(f"STUN error {code}: {reason}" if reason else f"STUN error {code}")
        self.txid = txid
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Attribute:
    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One STUN message: its type, transaction id and attributes in wire order.

    ``unpack`` checks the header, the attribute framing and the FINGERPRINT if there is
    one; ``pack`` writes zero padding, so ``unpack(pack(m)) == m`` and ``pack(unpack(x))
    == x`` whenever x is zero-padded. ``pack(fingerprint=True)`` appends a FINGERPRINT.
    """

    type: int
    txid: bytes
    attributes: tuple[Attribute, ...] = ()

    def pack(self, *, fingerprint: bool = False) -> bytes:
        if not 0 <= self.type < 0x4000:
            raise ProtocolError("a STUN message type has its top two bits clear")
        if len(self.txid) != TXID_SIZE:
            raise ProtocolError(f"a STUN transaction id is {TXID_SIZE} bytes")
        body = bytearray()
        for attr in self.attributes:
            if not 0 <= attr.type <= 0xFFFF or len(attr.value) > 0xFFFF:
                raise ProtocolError("STUN attribute type or length out of range")
            body += _ATTR_HEADER.pack(attr.type, len(attr.value)) + attr.value
            body += bytes(-len(attr.value) % 4)
        extra = FINGERPRINT_ATTR_SIZE if fingerprint else 0
        if len(body) + extra > 0xFFFF:
            raise ProtocolError("STUN message too long")
        out = _HEADER.pack(self.type, len(body) + extra, MAGIC_COOKIE, self.txid) + body
        if fingerprint:
            crc = zlib.crc32(out) ^ FINGERPRINT_XOR
            out += _ATTR_HEADER.pack(ATTR_FINGERPRINT, 4) + crc.to_bytes(4, "big")
        return out

    @classmethod
    def unpack(cls, data: bytes) -> Message:
        data = bytes(data)
        if len(data) < HEADER_SIZE:
            raise ProtocolError(f"STUN message shorter than its {HEADER_SIZE}-byte header")
        kind, length, cookie, txid = _HEADER.unpack_from(data)
        if kind & 0xC000 or cookie != MAGIC_COOKIE:
            raise ProtocolError("not a STUN message (top bits or magic cookie)")
        if length % 4 or HEADER_SIZE + length != len(data):
            raise ProtocolError("STUN message length does not match the datagram")
        attrs: list[Attribute] = []
        offset = HEADER_SIZE
        while offset < len(data):
            if offset + ATTR_HEADER_SIZE > len(data):
                raise ProtocolError("truncated STUN attribute header")
            atype, alen = _ATTR_HEADER.unpack_from(data, offset)
            start = offset + ATTR_HEADER_SIZE
            end = start + alen
            if end + (-alen % 4) > len(data):
                raise ProtocolError("STUN attribute runs past the end of the message")
            if atype == ATTR_FINGERPRINT:
                if alen != 4 or end != len(data):
                    raise ProtocolError("FINGERPRINT must be 4 bytes and the last attribute")
                crc = zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR
                if data[start:end] != crc.to_bytes(4, "big"):
                    raise ProtocolError("STUN FINGERPRINT does not match")
            attrs.append(Attribute(atype, data[start:end]))
            offset = end + (-alen % 4)
        return cls(kind, txid, tuple(attrs))

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type that counts, or None.

        Only FINGERPRINT counts after MESSAGE-INTEGRITY (section 15.4).
        """
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr.value
            if attr.type == ATTR_MESSAGE_INTEGRITY and attr_type != ATTR_FINGERPRINT:
                return None
        return None


def is_stun(datagram: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram looks like STUN: top bits zero, magic cookie, right length.

    A cheap test for demultiplexing one socket (no WireGuard message passes it, see
    the module docstring); the parsers do the real checking.
    """
    return (
        len(datagram) >= HEADER_SIZE
        and datagram[0] & 0xC0 == 0
        and bytes(datagram[4:8]) == _COOKIE_BYTES
        and (datagram[2] << 8 | datagram[3]) == len(datagram) - HEADER_SIZE
    )


def binding_request(txid: bytes, software: str | None = None) -> bytes:
    """A Binding request with an optional SOFTWARE attribute and a FINGERPRINT."""
    attrs = () if software is None else (_software(software),)
    return Message(BINDING_REQUEST, txid, attrs).pack(fingerprint=True)


def parse_request(data: bytes) -> bytes:
    """The transaction id of a Binding request (for the server side).

    Unknown attributes are ignored: a Binding request needs none to be answered, and
    RFC 5389 servers answer 420 only for comprehension-required ones we have no use for
    either way.
    """
    msg = Message.unpack(data)
    if msg.type != BINDING_REQUEST:
        raise ProtocolError(f"not a STUN Binding request (type {msg.type:#06x})")
    return msg.txid


def binding_response(txid: bytes, mapped: tuple[str, int], software: str | None = None) -> bytes:
    """A Binding success response telling the client it was seen at ``mapped``."""
    attrs = [Attribute(ATTR_XOR_MAPPED_ADDRESS, _pack_address(mapped, txid, xor=True))]
    if software is not None:
        attrs.append(_software(software))
    return Message(BINDING_SUCCESS_RESPONSE, txid, tuple(attrs)).pack(fingerprint=True)


def binding_error_response(txid: bytes, code: int, reason: str) -> bytes:
    """A Binding error response (e.g. 400 Bad Request) with an ERROR-CODE attribute."""
    if not 300 <= code <= 699:
        raise ProtocolError("a STUN error code is 300..699")
    raw = reason.encode("utf-8")
    if len(raw) > MAX_REASON_BYTES:
        raise ProtocolError(f"a STUN reason phrase is at most {MAX_REASON_BYTES} bytes")
    value = bytes((0, 0, code // 100, code % 100)) + raw
    return Message(BINDING_ERROR_RESPONSE, txid, (Attribute(ATTR_ERROR_CODE, value),)).pack(
        fingerprint=True
    )


def parse_response(data: bytes) -> tuple[bytes, Endpoint]:
    """The transaction id and mapped address of a Binding success response.

    XOR-MAPPED-ADDRESS is preferred, MAPPED-ADDRESS accepted in its absence. A Binding
    error response raises StunErrorResponse; anything else raises ProtocolError. The
    caller matches the transaction id against the requests it has outstanding.
    """
    msg = Message.unpack(data)
    if msg.type == BINDING_ERROR_RESPONSE:
        code, reason = _parse_error_code(msg.get(ATTR_ERROR_CODE))
        raise StunErrorResponse(msg.txid, code, reason)
    if msg.type != BINDING_SUCCESS_RESPONSE:
        raise ProtocolError(f"not a STUN Binding response (type {msg.type:#06x})")
    value = msg.get(ATTR_XOR_MAPPED_ADDRESS)
    if value is not None:
        return msg.txid, _unpack_address(value, msg.txid, xor=True)
    value = msg.get(ATTR_MAPPED_ADDRESS)
    if value is not None:
        return msg.txid, _unpack_address(value, msg.txid, xor=False)
    raise ProtocolError("STUN Binding response without a (XOR-)MAPPED-ADDRESS")


def message_integrity_ok(data: bytes, key: bytes) -> bool:
    """Whether the message's MESSAGE-INTEGRITY is HMAC-SHA1 under ``key`` (section 15.4).

    The HMAC covers the message up to the attribute, with the header's length adjusted
    to end just after it (so a FINGERPRINT after it is left out). For short-term
    credentials the key is the SASLprep'd password. False if there is no such attribute.
    """
    msg = Message.unpack(data)
    offset = HEADER_SIZE
    for attr in msg.attributes:
        if attr.type == ATTR_MESSAGE_INTEGRITY:
            if len(attr.value) != 20:
                return False
            length = offset - HEADER_SIZE + INTEGRITY_ATTR_SIZE
            covered = data[:2] + length.to_bytes(2, "big") + data[4:offset]
            mac = hmac.new(key, covered, hashlib.sha1).digest()
            return hmac.compare_digest(mac, attr.value)
        offset += ATTR_HEADER_SIZE + len(attr.value) + (-len(attr.value) % 4)
    return False


def _software(software: str) -> Attribute:
    raw = software.encode("utf-8")
    if len(raw) > MAX_SOFTWARE_BYTES:
        raise ProtocolError(f"SOFTWARE is at most {MAX_SOFTWARE_BYTES} bytes")
    return Attribute(ATTR_SOFTWARE, raw)


def _xor_key(txid: bytes) -> bytes:
    return _COOKIE_BYTES + txid


def _pack_address(endpoint: tuple[str, int], txid: bytes, *, xor: bool) -> bytes:
    host, port = endpoint
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as e:
        raise ProtocolError(f"not an IP address: {host!r}") from e
    if not 0 <= port <= 0xFFFF:
        raise ProtocolError(f"port out of range: {port}")
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    addr = ip.packed
    if xor:
        port ^= MAGIC_COOKIE >> 16
        addr = bytes(a ^ k for a, k in zip(addr, _xor_key(txid), strict=False))
    return bytes((0, family)) + port.to_bytes(2, "big") + addr


def _unpack_address(value: bytes, txid: bytes, *, xor: bool) -> Endpoint:
    if len(value) < 4:
        raise ProtocolError("STUN address attribute too short")
    family = value[1]
    if family == FAMILY_IPV4:
        size = ADDRESS_IPV4_SIZE
    elif family == FAMILY_IPV6:
        size = ADDRESS_IPV6_SIZE
    else:
        raise ProtocolError(f"unknown STUN address family {family:#04x}")
    if len(value) != size:
        raise ProtocolError(f"STUN address attribute must be {size} bytes for its family")
    port = int.from_bytes(value[2:4], "big")
    addr = value[4:]
    if xor:
        port ^= MAGIC_COOKIE >> 16
        addr = bytes(a ^ k for a, k in zip(addr, _xor_key(txid), strict=False))
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Endpoint(str(ip), port)


def _parse_error_code(value: bytes | None) -> tuple[int, str]:
    if value is None or len(value) < 4:
        raise ProtocolError("STUN error response without a valid ERROR-CODE")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise ProtocolError("STUN ERROR-CODE out of range")
    reason = value[4:].decode("utf-8", errors="replace")
    return klass * 100 + number, reason
