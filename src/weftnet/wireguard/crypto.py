"""Cryptographic primitives of WireGuard, as named in the whitepaper section 5.4.

Theory of operation: every function here is a pure mapping from bytes to bytes.
WireGuard fixes one suite, so nothing is negotiable:

- ``DH`` is X25519 (RFC 7748); an all-zero shared secret is refused, as the kernel does.
- ``AEAD`` is ChaCha20-Poly1305 (RFC 8439) with a 96-bit nonce of 32 zero bits
  followed by the 64-bit little-endian counter.
- ``XAEAD`` is XChaCha20-Poly1305, used only for cookie replies.
- ``HASH`` is BLAKE2s-256, ``MAC`` is keyed BLAKE2s-128, ``HMAC`` is HMAC-BLAKE2s-256,
  and ``KDF1..3`` is HKDF (RFC 5869) over HMAC-BLAKE2s with an empty info, returning
  the first n 32-byte outputs.

Key generation takes its entropy as an argument so a handshake can be replayed byte for
byte in tests.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from weftnet.wireguard.errors import ProtocolError

KEY_LEN = 32  # X25519 keys, symmetric keys, hashes and chaining keys are all 32 bytes
TAG_LEN = 16  # Poly1305 tag appended by every AEAD seal
MAC_LEN = 16  # keyed BLAKE2s-128 output (mac1, mac2, cookies)
XNONCE_LEN = 24  # XChaCha20 nonce of a cookie reply

Entropy = Callable[[int], bytes]
"""A source of random bytes: ``entropy(n)`` returns n bytes (os.urandom in production)."""

_ZERO_NONCE_PREFIX = b"\x00\x00\x00\x00"
_pack_counter = struct.Struct("<Q").pack


def hash_(*parts: bytes) -> bytes:
    """HASH(parts...): BLAKE2s-256 of the concatenation."""
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte output."""
    return hashlib.blake2s(data, digest_size=MAC_LEN, key=key).digest()


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC(key, data) with BLAKE2s-256 (RFC 2104; BLAKE2s block size 64)."""
    return _hmac.new(key, data, hashlib.blake2s).digest()


def kdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    """KDF_n(key, data): HKDF-extract then n HKDF-expand blocks with empty info."""
    prk = hmac(key, data)
    out: list[bytes] = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac(prk, prev + bytes((i,)))
        out.append(prev)
    return tuple(out)


def kdf1(key: bytes, data: bytes) -> bytes:
    return kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    a, b = kdf(key, data, 2)
    return a, b


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    a, b, c = kdf(key, data, 3)
    return a, b, c


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key (clamping is applied by X25519)."""
    if len(private_key) != KEY_LEN:
        raise ValueError("a private key is 32 bytes")
    return (
        X25519PrivateKey.from_private_bytes(private_key)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def clamp(raw: bytes) -> bytes:
    """Clamp 32 random bytes into an X25519 private key, as `wg genkey` does."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key(entropy: Entropy) -> bytes:
    return clamp(entropy(KEY_LEN))


def dh(private_key: bytes, public: bytes) -> bytes:
    """DH(private, public); raises ProtocolError for a low-order point (zero output)."""
    if len(public) != KEY_LEN:
        raise ProtocolError("public key must be 32 bytes")
    try:
        shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as e:  # cryptography refuses an all-zero result
        raise ProtocolError("X25519 produced the all-zero shared secret") from e
    if not any(shared):
        raise ProtocolError("X25519 produced the all-zero shared secret")
    return shared


# Any fixed clamped scalar works: X25519 with a low-order point gives the all-zero
# output for every clamped scalar (RFC 7748 section 6.1, "check ... all-zero value").
_LOW_ORDER_PROBE = clamp(bytes(range(1, KEY_LEN + 1)))


def is_low_order(public: bytes) -> bool:
    """True for a 32-byte X25519 public key whose DH result is all-zero for every private
    key (the low-order points and their non-canonical encodings): no session can be made
    with it, so servers refuse it and nodes skip it. Wrong lengths count as unusable."""
    if len(public) != KEY_LEN:
        return True
    try:
        dh(_LOW_ORDER_PROBE, public)
    except ProtocolError:
        return True
    return False


def aead_nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce for a 64-bit counter."""
    return _ZERO_NONCE_PREFIX + _pack_counter(counter)


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(counter), ciphertext, ad)
    except InvalidTag as e:
        raise ProtocolError("authentication failed") from e


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key)
    except CryptoError as e:
        raise ProtocolError("cookie authentication failed") from e


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return _hmac.compare_digest(a, b)
