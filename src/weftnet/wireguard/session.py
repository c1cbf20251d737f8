"""Transport keypairs and the data fast path (whitepaper 5.4.6).

Theory of operation: a completed handshake yields a ``Keypair``: two ChaCha20-Poly1305
keys, the sending counter, the receiving replay window, and the two session indices.
A transport message is

    type=4 (1) | reserved (3) | receiver index (4, LE) | counter (8, LE) | AEAD(packet)

where the packet is zero-padded to a multiple of 16 bytes (never past the MTU) and the
AEAD nonce is 32 zero bits followed by the counter. ``seal_into`` and ``open_into`` are
the per-packet functions the node calls in its hot loop: they write into caller buffers
and allocate nothing beyond the 12-byte nonce. Only the caller knows the clock, so the
age checks (REJECT_AFTER_TIME) are the caller's, made once per batch.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from weftnet import fastpath
from weftnet.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_S
from weftnet.wireguard.handshake import SessionKeys
from weftnet.wireguard.messages import MESSAGE_TRANSPORT, TRANSPORT_HEADER_SIZE

_HEADER = struct.Struct("<II Q")
_pack_header_into = _HEADER.pack_into
_NONCE_PREFIX = b"\x00\x00\x00\x00"


class Keypair:
    """One direction pair of transport keys. ``peer`` is set by the device."""

    __slots__ = (
        "created_at",
        "is_initiator",
        "local_index",
        "peer",
        "recv",
        "recv_fast",
        "remote_index",
        "replay",
        "send",
        "send_counter",
        "send_fast",
    )

    def __init__(self, keys: SessionKeys, created_at: float, peer: object = None) -> None:
        self.send = ChaCha20Poly1305(keys.send_key)
        self.recv = ChaCha20Poly1305(keys.receive_key)
        # The batch functions' own key objects (weftnet.fastpath: C or pure Python), and
        # the replay window both paths share.
        self.send_fast = fastpath.Aead(keys.send_key)
        self.recv_fast = fastpath.Aead(keys.receive_key)
        self.send_counter = 0
        self.replay = fastpath.ReplayWindow()
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self.created_at = created_at
        self.peer = peer

    def usable_for_sending(self, now: float) -> bool:
        return (
            self.send_counter < REJECT_AFTER_MESSAGES
            and now - self.created_at < REJECT_AFTER_TIME_S
        )

    def usable_for_receiving(self, now: float) -> bool:
        return now - self.created_at < REJECT_AFTER_TIME_S

    def seal_into(self, out: memoryview, plaintext: memoryview | bytes) -> int:
        """Write a transport message for a padded plaintext into ``out``; returns its size.

        Raises OverflowError once the counter reaches REJECT_AFTER_MESSAGES.
        """
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES:
            raise OverflowError("keypair exhausted")
        self.send_counter = counter + 1
        _pack_header_into(out, 0, MESSAGE_TRANSPORT, self.remote_index, counter)
        n = len(plaintext)
        self.send.encrypt_into(
            _NONCE_PREFIX + counter.to_bytes(8, "little"),
            plaintext,
            None,
            out[TRANSPORT_HEADER_SIZE : TRANSPORT_HEADER_SIZE + n + 16],
        )
        return TRANSPORT_HEADER_SIZE + n + 16

    def seal(self, plaintext: bytes) -> bytes:
        """Convenience form of seal_into for the slow path (keepalives, staged packets)."""
        out = bytearray(TRANSPORT_HEADER_SIZE + len(plaintext) + 16)
        self.seal_into(memoryview(out), plaintext)
        return bytes(out)

    def open_into(self, counter: int, ciphertext: memoryview | bytes, out: memoryview) -> int:
        """Decrypt a transport payload into ``out``; -1 if forged or replayed.

        The replay window is updated only after authentication succeeds.
        """
        try:
            self.recv.decrypt_into(
                _NONCE_PREFIX + counter.to_bytes(8, "little"),
                ciphertext,
                None,
                out[: len(ciphertext) - 16],
            )
        except InvalidTag:
            return -1
        if counter >= REJECT_AFTER_MESSAGES or not self.replay.check_and_update(counter):
            return -1
        return len(ciphertext) - 16

    def open(self, message: bytes) -> bytes | None:
        """Slow-path form: a whole transport message in, the padded plaintext out."""
        if len(message) < TRANSPORT_HEADER_SIZE + 16:
            return None
        _, _, counter = _HEADER.unpack_from(message)
        out = bytearray(len(message) - TRANSPORT_HEADER_SIZE - 16)
        n = self.open_into(counter, memoryview(message)[TRANSPORT_HEADER_SIZE:], memoryview(out))
        return None if n < 0 else bytes(out)
