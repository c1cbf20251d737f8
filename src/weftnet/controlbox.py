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

import hashlib
import heapq
import struct

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

NONCE_LEN = 24  # crypto_box nonce
KEY_LEN = 32  # X25519 public and private keys
MAX_CLOCK_SKEW_S = 120.0  # a request's ts may be this far from the server's clock
MAX_FRAME = 4 * 1024 * 1024  # a map frame larger than this is refused
FRAME_HEADER = struct.Struct(">I")
ANSWER_PERSON = b"weft-answer"  # BLAKE2b personalisation of answer nonces


class SealError(ValueError):
    """A sealed message did not open, was malformed, or was replayed."""


class ClockSkew(SealError):
    """A request's ``ts`` is too far from the server's clock."""


class GuardFull(SealError):
    """The replay guard holds as many live nonces as it may: try again shortly."""


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


class Sealer:
    """Sealing and opening between one key pair, the shared key worked out once: a map
    stream seals every frame with the same pair, and deriving the key (two X25519
    multiplications) costs more than sealing a small frame."""

    def __init__(self, private_key: bytes, peer_public: bytes) -> None:
        self._box = Box(PrivateKey(private_key), PublicKey(peer_public))

    def seal(self, body: bytes, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_LEN:
            raise ValueError("a nonce is 24 bytes")
        return nonce + self._box.encrypt(body, nonce).ciphertext

    def open(self, sealed: bytes) -> bytes:
        if len(sealed) < NONCE_LEN + 16:
            raise SealError("sealed message too short")
        try:
            return self._box.decrypt(sealed[NONCE_LEN:], sealed[:NONCE_LEN])
        except (CryptoError, ValueError) as e:
            raise SealError("message does not open with this key pair") from e

    def open_answer(self, sealed: bytes, request: bytes, index: int) -> bytes:
        """``open`` for the ``index``-th answer to ``request``; SealError for an answer
        sealed for another request or position (a replay, or frames out of order)."""
        if sealed[:NONCE_LEN] != answer_nonce(request, index):
            raise SealError("an answer that belongs to another request (replayed or reordered)")
        return self.open(sealed)


def seal(private_key: bytes, peer_public: bytes, body: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError("a nonce is 24 bytes")
    return Sealer(private_key, peer_public).seal(body, nonce)


def open_sealed(private_key: bytes, peer_public: bytes, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + 16:
        raise SealError("sealed message too short")
    try:
        sealer = Sealer(private_key, peer_public)
    except (CryptoError, ValueError) as e:
        raise SealError("message does not open with this key pair") from e
    return sealer.open(sealed)


def answer_nonce(request: bytes, index: int) -> bytes:
    """The nonce of the ``index``-th sealed answer (0: the answer, or a stream's first
    frame) to the sealed ``request``. Binding every answer to its request this way means
    a recorded answer (an old map, a RegisterResponse) cannot be replayed to a node as the
    answer to a new request, and a stream's frames cannot be dropped or reordered."""
    data = request[:NONCE_LEN] + index.to_bytes(8, "big")
    return hashlib.blake2b(data, digest_size=NONCE_LEN, person=ANSWER_PERSON).digest()


def open_answer(
    private_key: bytes, peer_public: bytes, sealed: bytes, request: bytes, index: int
) -> bytes:
    """open_sealed for the ``index``-th answer to ``request``; SealError for an answer
    sealed for another request or position (a replay, or frames out of order)."""
    try:
        sealer = Sealer(private_key, peer_public)
    except (CryptoError, ValueError) as e:
        raise SealError("message does not open with this key pair") from e
    return sealer.open_answer(sealed, request, index)


class ReplayGuard:
    """Nonces of accepted requests while their ``ts`` is inside the clock-skew window
    (per server process).

    A nonce is forgotten only once its request could no longer pass the ``ts`` check
    (``now > ts + MAX_CLOCK_SKEW_S``), never earlier: when ``max_entries`` live nonces
    are held, new requests are refused (``GuardFull``) until old ones age out, rather
    than reopening replay for the oldest. A clock that steps back can revive a
    forgotten request's window; the guard assumes the server clock moves forward.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._seen: dict[bytes, float] = {}  # nonce -> when its window closes
        self._expiry: list[tuple[float, bytes]] = []  # heap of (window closes at, nonce)
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, sealed: bytes, ts: float, now: float) -> None:
        """Raise SealError if ``ts`` is stale or this message was seen before, GuardFull
        if the guard cannot remember one more nonce now; else remember it."""
        if not abs(now - ts) <= MAX_CLOCK_SKEW_S:  # also refuses a NaN ts
            raise ClockSkew(
                f"request timestamp is {now - ts:+.0f} s off the server clock: check the time"
            )
        while self._expiry and self._expiry[0][0] < now:
            _, old = heapq.heappop(self._expiry)
            self._seen.pop(old, None)
        nonce = sealed[:NONCE_LEN]
        if nonce in self._seen:
            raise SealError("replayed request")
        if len(self._seen) >= self._max:
            raise GuardFull("the server is receiving too many requests: try again in a minute")
        closes_at = ts + MAX_CLOCK_SKEW_S
        self._seen[nonce] = closes_at
        heapq.heappush(self._expiry, (closes_at, nonce))


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
