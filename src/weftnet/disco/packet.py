"""The disco packet: magic, sender's disco key, nonce, and a NaCl box of one message.

Theory of operation (after Tailscale's disco/disco.go)::

    magic (6) | sender disco public key (32) | nonce (24) | box (16-byte tag + message)

The box is NaCl ``crypto_box`` (X25519, XSalsa20-Poly1305) from the sender's disco
private key to the receiver's disco public key. Only the holder of the sender's private
key can make a box that opens under (receiver private, sender public), so a box that
opens proves the packet came from the disco key in its header. The receiver looks that
key up among its peers' disco keys (from the map) *before* opening, so packets from
strangers cost no X25519 work. Keys with bit 255 set are refused: X25519 ignores that
bit (RFC 7748 section 5), so they would be a second spelling of a peer's key.

Nonces are 24 random bytes, passed in: with 192-bit nonces random choice is safe, and
a repeated nonce under one key pair would leak plaintexts, so never reuse one. Replay
is harmless: a replayed ping is answered again, a replayed pong matches no outstanding
txid, a replayed call-me-maybe causes a few pings (rate-limited by the path finder).
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from weftnet.disco.messages import MESSAGE_HEADER_SIZE, Message, unpack_message
from weftnet.wireguard.errors import ProtocolError

__all__ = [
    "BOX_TAG_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "MIN_PACKET_SIZE",
    "NONCE_SIZE",
    "PACKET_HEADER_SIZE",
    "Packet",
    "is_disco",
    "open_packet",
    "public_key",
    "seal",
]

# "WE" and U+1F9F5 SPOOL OF THREAD in UTF-8 (weft is the thread woven across the warp).
# Its first byte, 0x57, has a top bit pair of 01: never STUN (top two bits 00, RFC 5389
# section 6) and never WireGuard (types 1..4 followed by three zero bytes).
MAGIC = b"WE\xf0\x9f\xa7\xb5"
KEY_SIZE = 32  # X25519 public key of the sender's disco key
NONCE_SIZE = 24  # crypto_box (XSalsa20) nonce
BOX_TAG_SIZE = 16  # Poly1305 tag that crypto_box prepends to the ciphertext
PACKET_HEADER_SIZE = len(MAGIC) + KEY_SIZE + NONCE_SIZE  # 62
MIN_PACKET_SIZE = PACKET_HEADER_SIZE + BOX_TAG_SIZE + MESSAGE_HEADER_SIZE  # 80


def is_disco(datagram: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram is a disco packet (by its magic; ``Packet.unpack`` checks the rest)."""
    return len(datagram) >= MIN_PACKET_SIZE and bytes(datagram[: len(MAGIC)]) == MAGIC


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of a disco private key."""
    if len(private_key) != KEY_SIZE:
        raise ProtocolError(f"a disco key is {KEY_SIZE} bytes")
    return bytes(PrivateKey(private_key).public_key)


@dataclass(frozen=True, slots=True)
class Packet:
    """The outer frame, not yet opened: who says they sent it, the nonce and the box."""

    sender: bytes
    nonce: bytes
    box: bytes

    def pack(self) -> bytes:
        if len(self.sender) != KEY_SIZE or len(self.nonce) != NONCE_SIZE:
            raise ProtocolError("a disco packet has a 32-byte key and a 24-byte nonce")
        if self.sender[-1] & 0x80:
            raise ProtocolError("disco sender key is not canonical (bit 255 set)")
        if len(self.box) < BOX_TAG_SIZE + MESSAGE_HEADER_SIZE:
            raise ProtocolError("a disco box holds at least a tag and a message header")
        return MAGIC + self.sender + self.nonce + self.box

    @classmethod
    def unpack(cls, data: bytes) -> Packet:
        data = bytes(data)
        if len(data) < MIN_PACKET_SIZE:
            raise ProtocolError(f"a disco packet is at least {MIN_PACKET_SIZE} bytes")
        if not data.startswith(MAGIC):
            raise ProtocolError("not a disco packet (magic)")
        key_end = len(MAGIC) + KEY_SIZE
        if data[key_end - 1] & 0x80:
            # X25519 ignores bit 255 (RFC 7748 section 5), so the same key has two
            # spellings; keys we generate never set it. Refuse the alias, so that one
            # peer has exactly one sender key to look up.
            raise ProtocolError("disco sender key is not canonical (bit 255 set)")
        return cls(
            data[len(MAGIC) : key_end], data[key_end:PACKET_HEADER_SIZE], data[PACKET_HEADER_SIZE:]
        )


def seal(message: Message, sender_private: bytes, receiver_public: bytes, nonce: bytes) -> bytes:
    """The disco packet carrying ``message`` from ``sender_private`` to ``receiver_public``."""
    if len(receiver_public) != KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise ProtocolError("a disco packet needs a 32-byte key and a 24-byte nonce")
    sender_public = public_key(sender_private)
    box = Box(PrivateKey(sender_private), PublicKey(receiver_public))
    ciphertext = box.encrypt(message.pack(), nonce).ciphertext
    return Packet(sender_public, nonce, ciphertext).pack()


def open_packet(packet: Packet, receiver_private: bytes) -> Message:
    """The message in a packet for ``receiver_private``, from ``packet.sender``.

    ProtocolError if the box does not open (wrong keys, tampered, not for us) or holds
    no valid message. Check that ``packet.sender`` is a known peer's disco key first.
    """
    if len(receiver_private) != KEY_SIZE:
        raise ProtocolError(f"a disco key is {KEY_SIZE} bytes")
    try:
        box = Box(PrivateKey(receiver_private), PublicKey(packet.sender))
        plaintext = box.decrypt(packet.box, packet.nonce)
    except (CryptoError, ValueError, TypeError) as e:
        raise ProtocolError("disco box does not open with these keys") from e
    return unpack_message(plaintext)
