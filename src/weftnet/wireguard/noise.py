"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the handshake pattern WireGuard is built on.

Theory of operation (Noise Protocol Framework rev 34, sections 5 and 9):

    IKpsk2:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se, psk

A ``SymmetricState`` holds the chaining key ``ck``, the handshake hash ``h`` and the
current cipher key ``k`` with its nonce. Because the pattern carries a psk modifier, every
``e`` token also mixes the ephemeral key into ``ck`` (section 9.2). WireGuard's names map
onto these: Ci/Cr = ck, Hi/Hr = h, the prologue is WireGuard's identifier string.

The four functions ``write_message_1`` / ``read_message_1`` / ``write_message_2`` /
``read_message_2`` are generic in prologue and payloads so that the cacophony test vectors
check them directly; handshake.py wraps them in WireGuard's framing.
"""

from __future__ import annotations

from dataclasses import dataclass

from weftnet.wireguard import crypto
from weftnet.wireguard.crypto import KEY_LEN, TAG_LEN
from weftnet.wireguard.errors import ProtocolError

PROTOCOL_NAME = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"


class SymmetricState:
    """ck, h and the cipher state of Noise section 5.2, with an explicit nonce."""

    __slots__ = ("ck", "h", "k", "n")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME, prologue: bytes = b"") -> None:
        if len(protocol_name) <= 32:
            h = protocol_name.ljust(32, b"\x00")
        else:
            h = crypto.hash_(protocol_name)
        self.ck = h
        self.h = h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(prologue)

    def copy(self) -> SymmetricState:
        c = SymmetricState.__new__(SymmetricState)
        c.ck, c.h, c.k, c.n = self.ck, self.h, self.k, self.n
        return c

    def mix_hash(self, data: bytes) -> None:
        self.h = crypto.hash_(self.h, data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = crypto.kdf2(self.ck, ikm)
        self.n = 0

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, self.k = crypto.kdf3(self.ck, ikm)
        self.mix_hash(temp_h)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:  # never happens in IKpsk2: es precedes the first encryption
            raise ProtocolError("no cipher key yet")
        ct = crypto.aead_encrypt(self.k, self.n, plaintext, self.h)
        self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            raise ProtocolError("no cipher key yet")
        pt = crypto.aead_decrypt(self.k, self.n, ciphertext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        """(initiator-to-responder key, responder-to-initiator key)."""
        return crypto.kdf2(self.ck, b"")


def initialize(responder_static_public: bytes, prologue: bytes) -> SymmetricState:
    """State before the first message: both sides mix the responder's static key."""
    ss = SymmetricState(PROTOCOL_NAME, prologue)
    ss.mix_hash(responder_static_public)
    return ss


def _mix_ephemeral(ss: SymmetricState, e_pub: bytes) -> None:
    ss.mix_hash(e_pub)
    ss.mix_key(e_pub)  # psk modifier: e also feeds the chaining key


@dataclass(frozen=True, slots=True)
class Message1:
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_payload: bytes

    def pack(self) -> bytes:
        return self.ephemeral + self.encrypted_static + self.encrypted_payload

    @classmethod
    def unpack(cls, data: bytes) -> Message1:
        if len(data) < KEY_LEN + KEY_LEN + 2 * TAG_LEN:
            raise ProtocolError("IK message 1 too short")
        return cls(data[:32], data[32:80], data[80:])


@dataclass(frozen=True, slots=True)
class Message2:
    ephemeral: bytes
    encrypted_payload: bytes

    def pack(self) -> bytes:
        return self.ephemeral + self.encrypted_payload

    @classmethod
    def unpack(cls, data: bytes) -> Message2:
        if len(data) < KEY_LEN + TAG_LEN:
            raise ProtocolError("IK message 2 too short")
        return cls(data[:32], data[32:])


def write_message_1(
    ss: SymmetricState,
    static_private: bytes,
    static_public: bytes,
    ephemeral_private: bytes,
    responder_static_public: bytes,
    payload: bytes,
    static_static: bytes | None = None,
) -> Message1:
    """-> e, es, s, ss. ``static_static`` is DH(s, rs) when precomputed by the caller."""
    e_pub = crypto.public_key(ephemeral_private)
    _mix_ephemeral(ss, e_pub)
    ss.mix_key(crypto.dh(ephemeral_private, responder_static_public))
    enc_s = ss.encrypt_and_hash(static_public)
    if static_static is None:
        static_static = crypto.dh(static_private, responder_static_public)
    ss.mix_key(static_static)
    enc_payload = ss.encrypt_and_hash(payload)
    return Message1(e_pub, enc_s, enc_payload)


def read_message_1(
    ss: SymmetricState, static_private: bytes, msg: Message1
) -> tuple[bytes, bytes, bytes]:
    """Responder side of message 1: returns (initiator static public, payload, DH(s, rs))."""
    _mix_ephemeral(ss, msg.ephemeral)
    ss.mix_key(crypto.dh(static_private, msg.ephemeral))
    initiator_static = ss.decrypt_and_hash(msg.encrypted_static)
    static_static = crypto.dh(static_private, initiator_static)
    ss.mix_key(static_static)
    payload = ss.decrypt_and_hash(msg.encrypted_payload)
    return initiator_static, payload, static_static


def write_message_2(
    ss: SymmetricState,
    ephemeral_private: bytes,
    initiator_ephemeral: bytes,
    initiator_static: bytes,
    psk: bytes,
    payload: bytes,
) -> Message2:
    """<- e, ee, se, psk."""
    e_pub = crypto.public_key(ephemeral_private)
    _mix_ephemeral(ss, e_pub)
    ss.mix_key(crypto.dh(ephemeral_private, initiator_ephemeral))
    ss.mix_key(crypto.dh(ephemeral_private, initiator_static))
    ss.mix_key_and_hash(psk)
    return Message2(e_pub, ss.encrypt_and_hash(payload))


def read_message_2(
    ss: SymmetricState,
    ephemeral_private: bytes,
    static_private: bytes,
    psk: bytes,
    msg: Message2,
) -> bytes:
    """Initiator side of message 2: returns the payload."""
    _mix_ephemeral(ss, msg.ephemeral)
    ss.mix_key(crypto.dh(ephemeral_private, msg.ephemeral))
    ss.mix_key(crypto.dh(static_private, msg.ephemeral))
    ss.mix_key_and_hash(psk)
    return ss.decrypt_and_hash(msg.encrypted_payload)
