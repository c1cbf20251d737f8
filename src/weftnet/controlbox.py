"""Sealing of node <-> server messages: the machine key proves every request.

Theory of operation: the server has a long-term X25519 key S, which a node learns from
``GET /key`` once and pins in its state directory. Every device has a machine key M.
A request body is ``nonce (24) || crypto_box(json, nonce, M_private, S_public)``; only
the holder of M's private key can make a box that opens under (S_private, M_public), so
a request that opens proves the machine key named in its URL. Answers are boxed the
other way, so only the pinned server can produce them. Each request carries ``ts``
(unix seconds); the server refuses ones more than MAX_CLOCK_SKEW_S from its clock and
remembers the nonces it accepted in that window, so no request can be replayed.

The map stream is a sequence of frames: a 4-byte big-endian length, then a sealed JSON
body. Nothing here does I/O or reads a clock: ``now`` and nonces come in as arguments.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

NONCE_LEN = 24  # crypto_box nonce
KEY_LEN = 32  # X25519 public and private keys
MAX_CLOCK_SKEW_S = 120.0  # a request's ts may be this far from the server's clock
MAX_FRAME = 4 * 1024 * 1024  # a map frame larger than this is refused
FRAME_HEADER = struct.Struct(">I")


class SealError(ValueError):
    """A sealed message did not open, was malformed, or was replayed."""


def key_to_text(prefix: str, raw: bytes) -> str:
    if len(raw) != KEY_LEN:
        raise ValueError("a key is 32 bytes")
    return prefix + raw.hex()


def key_from_text(prefix: str, text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith(prefix):
        raise ValueError(f"expected a key of the form {prefix}<64 hex digits>")
    try:
        raw = bytes.fromhex(text[len(prefix) :])
    except ValueError as e:
        raise ValueError(f"expected a key of the form {prefix}<64 hex digits>") from e
    if len(raw) != KEY_LEN:
        raise ValueError(f"expected a key of the form {prefix}<64 hex digits>")
    return raw


def seal(private_key: bytes, peer_public: bytes, body: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError("a nonce is 24 bytes")
    box = Box(PrivateKey(private_key), PublicKey(peer_public))
    return nonce + box.encrypt(body, nonce).ciphertext


def open_sealed(private_key: bytes, peer_public: bytes, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + 16:
        raise SealError("sealed message too short")
    try:
        box = Box(PrivateKey(private_key), PublicKey(peer_public))
        return box.decrypt(sealed[NONCE_LEN:], sealed[:NONCE_LEN])
    except (CryptoError, ValueError) as e:
        raise SealError("message does not open with this key pair") from e


class ReplayGuard:
    """Nonces of accepted requests inside the clock-skew window (per server process)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._max = max_entries

    def check(self, sealed: bytes, ts: float, now: float) -> None:
        """Raise SealError if ``ts`` is stale or this message was seen before."""
        if abs(now - ts) > MAX_CLOCK_SKEW_S:
            raise SealError(
                f"request timestamp is {now - ts:+.0f} s off the server clock: check the time"
            )
        while self._seen:
            first, at = next(iter(self._seen.items()))
            if now - at <= 2 * MAX_CLOCK_SKEW_S and len(self._seen) < self._max:
                break
            self._seen.pop(first)
        nonce = sealed[:NONCE_LEN]
        if nonce in self._seen:
            raise SealError("replayed request")
        self._seen[nonce] = now


def frame(sealed: bytes) -> bytes:
    return FRAME_HEADER.pack(len(sealed)) + sealed


class FrameReader:
    """Splits a byte stream into frames; feed() returns the complete ones."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            (n,) = FRAME_HEADER.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise SealError(f"frame of {n} bytes is larger than {MAX_FRAME}")
            if len(self._buf) < 4 + n:
                break
            out.append(bytes(self._buf[4 : 4 + n]))
            del self._buf[: 4 + n]
        return out
