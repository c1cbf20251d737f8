"""mac1, mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper section 5.4.7).

Theory of operation: every handshake message carries ``mac1 = MAC(HASH("mac1----" ||
Spub_receiver), msg[:mac1_offset])``, so only someone who knows the receiver's public key
can make it do Curve25519 work; a message with a bad mac1 is dropped without reply.

When the receiver is under load it also demands ``mac2 = MAC(cookie, msg[:mac2_offset])``,
where ``cookie = MAC(R, source ip || port)`` and R is a secret changed every two minutes.
A message without a valid mac2 is answered with a cookie reply instead: the cookie,
sealed with XChaCha20-Poly1305 under ``HASH("cookie--" || Spub_receiver)``, with the
message's mac1 as associated data, so only the true sender can open it. The sender then
adds mac2 to its next handshake message, proving it owns its source address.

``CookieChecker`` is the receiving side (one per device), ``CookieGenerator`` the sending
side (one per peer, keyed by that peer's public key). Both take ``now`` and entropy.
"""

from __future__ import annotations

import ipaddress

from weftnet.wireguard import crypto
from weftnet.wireguard.constants import COOKIE_REFRESH_TIME_S
from weftnet.wireguard.crypto import MAC_LEN, XNONCE_LEN, Entropy
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import CookieReply

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_SECRET_LEN = 32  # bytes of the rotating secret R
_ZERO_MAC = bytes(MAC_LEN)


def mac1_key(public_key: bytes) -> bytes:
    return crypto.hash_(LABEL_MAC1, public_key)


def cookie_key(public_key: bytes) -> bytes:
    return crypto.hash_(LABEL_COOKIE, public_key)


def packed_host(host: str) -> bytes:
    """A source's address as bytes: the packed IP, or the name of a relay pseudo-endpoint
    such as "relay:eu"."""
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return host.encode()


def source_bytes(host: str, port: int) -> bytes:
    """The bytes a cookie binds to: the packed source address, then the port."""
    return packed_host(host) + port.to_bytes(2, "little")


class CookieChecker:
    """The receiver's side: validates mac1/mac2 and makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_secret", "_secret_set_at")

    def __init__(self, local_public_key: bytes) -> None:
        self._mac1_key = mac1_key(local_public_key)
        self._cookie_key = cookie_key(local_public_key)
        self._secret = b""
        self._secret_set_at = float("-inf")

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        expected = crypto.mac(self._mac1_key, msg[:mac1_offset])
        return crypto.constant_time_equal(expected, msg[mac1_offset : mac1_offset + MAC_LEN])

    def check_mac2(self, msg: bytes, mac2_offset: int, src: bytes, now: float) -> bool:
        if now - self._secret_set_at > COOKIE_REFRESH_TIME_S:
            return False  # every cookie made with an expired secret is invalid
        cookie = crypto.mac(self._secret, src)
        expected = crypto.mac(cookie, msg[:mac2_offset])
        return crypto.constant_time_equal(expected, msg[mac2_offset : mac2_offset + MAC_LEN])

    def create_reply(
        self,
        msg: bytes,
        mac1_offset: int,
        receiver: int,
        src: bytes,
        now: float,
        entropy: Entropy,
    ) -> CookieReply:
        """A cookie reply to ``msg`` (whose sender index is ``receiver``)."""
        if now - self._secret_set_at > COOKIE_REFRESH_TIME_S:
            self._secret = entropy(COOKIE_SECRET_LEN)
            self._secret_set_at = now
        cookie = crypto.mac(self._secret, src)
        nonce = entropy(XNONCE_LEN)
        mac1 = msg[mac1_offset : mac1_offset + MAC_LEN]
        sealed = crypto.xaead_encrypt(self._cookie_key, nonce, cookie, mac1)
        return CookieReply(receiver, nonce, sealed)


class CookieGenerator:
    """The sender's side for one peer: adds mac1/mac2 and consumes cookie replies."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_set_at", "_last_mac1", "_mac1_key")

    def __init__(self, remote_public_key: bytes) -> None:
        self._mac1_key = mac1_key(remote_public_key)
        self._cookie_key = cookie_key(remote_public_key)
        self._cookie = b""
        self._cookie_set_at = float("-inf")
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytearray, mac1_offset: int, mac2_offset: int, now: float) -> None:
        """Fill mac1 and (with a fresh cookie) mac2 of an outgoing message in place."""
        mac1 = crypto.mac(self._mac1_key, bytes(msg[:mac1_offset]))
        msg[mac1_offset : mac1_offset + MAC_LEN] = mac1
        self._last_mac1 = mac1
        if self._cookie and now - self._cookie_set_at <= COOKIE_REFRESH_TIME_S:
            msg[mac2_offset : mac2_offset + MAC_LEN] = crypto.mac(
                self._cookie, bytes(msg[:mac2_offset])
            )
        else:
            msg[mac2_offset : mac2_offset + MAC_LEN] = _ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie of a reply to our last message; ProtocolError if it is not one."""
        if self._last_mac1 is None:
            raise ProtocolError("cookie reply to no message of ours")
        cookie = crypto.xaead_decrypt(
            self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
        )
        self._cookie = cookie
        self._cookie_set_at = now
        self._last_mac1 = None  # one reply per message
