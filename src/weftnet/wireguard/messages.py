"""WireGuard wire formats (whitepaper section 5.4, wireguard-go device/noise-protocol.go).

Theory of operation: four message types share a 4-byte prefix: a one-byte type and three
reserved zero bytes. Integers on the wire are little-endian. Each handshake message is
a frozen dataclass whose ``pack()`` gives exactly the bytes on the wire and whose
``unpack()`` refuses any other length or a non-zero reserved field with ProtocolError.

Transport data is not a dataclass: it is sealed and opened in place on the fast path
(see session.py); only its header layout is defined here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from weftnet.wireguard.constants import PADDING_MULTIPLE
from weftnet.wireguard.errors import ProtocolError

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148  # 4 header + 4 sender + 32 ephemeral + 48 static + 28 timestamp + 2x16 macs
RESPONSE_SIZE = 92  # 4 header + 4 sender + 4 receiver + 32 ephemeral + 16 empty + 2x16 macs
COOKIE_REPLY_SIZE = 64  # 4 header + 4 receiver + 24 nonce + 32 encrypted cookie
TRANSPORT_HEADER_SIZE = 16  # 4 header + 4 receiver + 8 counter
TRANSPORT_MIN_SIZE = 32  # header + the 16-byte tag of an empty (keepalive) payload

ENCRYPTED_STATIC_SIZE = 48  # 32-byte public key + 16-byte tag
ENCRYPTED_TIMESTAMP_SIZE = 28  # 12-byte TAI64N + 16-byte tag
ENCRYPTED_NOTHING_SIZE = 16  # the tag of an empty plaintext
ENCRYPTED_COOKIE_SIZE = 32  # 16-byte cookie + 16-byte tag

# Offsets of mac1/mac2: each MAC covers everything before it.
INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76

_INITIATION = struct.Struct("<I I 32s 48s 28s 16s 16s")
_RESPONSE = struct.Struct("<I I I 32s 16s 16s 16s")
_COOKIE_REPLY = struct.Struct("<I I 24s 32s")
TRANSPORT_HEADER = struct.Struct("<I I Q")


def padded_size(packet_len: int, mtu: int) -> int:
    """A transport plaintext's size with its zero padding (wireguard-go's
    calculatePaddingSize): to a multiple of 16, never past the MTU; a packet longer than the
    MTU pads its remainder."""
    last = packet_len
    if mtu and last > mtu:
        last %= mtu
    padded = (last + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu and padded > mtu:
        padded = mtu
    return packet_len + (padded - last)


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The type of a datagram, or 0 if it cannot be a WireGuard message."""
    if len(data) < 4 or data[1] or data[2] or data[3]:
        return 0
    return int(data[0])


def _check(data: bytes, size: int, kind: int, name: str) -> None:
    if len(data) != size:
        raise ProtocolError(f"{name} must be {size} bytes, got {len(data)}")
    if data[0] != kind or data[1:4] != b"\x00\x00\x00":
        raise ProtocolError(f"not a {name} message")


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Initiation:
        data = bytes(data)
        _check(data, INITIATION_SIZE, MESSAGE_INITIATION, "handshake initiation")
        _, sender, eph, stat, ts, m1, m2 = _INITIATION.unpack(data)
        return cls(sender, eph, stat, ts, m1, m2)


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Response:
        data = bytes(data)
        _check(data, RESPONSE_SIZE, MESSAGE_RESPONSE, "handshake response")
        _, sender, receiver, eph, empty, m1, m2 = _RESPONSE.unpack(data)
        return cls(sender, receiver, eph, empty, m1, m2)


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie
        )

    @classmethod
    def unpack(cls, data: bytes) -> CookieReply:
        data = bytes(data)
        _check(data, COOKIE_REPLY_SIZE, MESSAGE_COOKIE_REPLY, "cookie reply")
        _, receiver, nonce, enc = _COOKIE_REPLY.unpack(data)
        return cls(receiver, nonce, enc)


@dataclass(frozen=True, slots=True)
class TransportHeader:
    receiver: int
    counter: int

    def pack(self) -> bytes:
        return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, self.receiver, self.counter)

    @classmethod
    def unpack(cls, data: bytes) -> TransportHeader:
        data = bytes(data)
        if len(data) < TRANSPORT_MIN_SIZE:
            raise ProtocolError(f"transport message must be at least {TRANSPORT_MIN_SIZE} bytes")
        if data[0] != MESSAGE_TRANSPORT or data[1:4] != b"\x00\x00\x00":
            raise ProtocolError("not a transport message")
        _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
        return cls(receiver, counter)
