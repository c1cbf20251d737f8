"""A WireGuard device without I/O: peers, sessions, handshakes and timers.

Theory of operation (whitepaper section 6, wireguard-go device/timers.go): the device is
driven by three kinds of input, each with ``now`` (monotonic seconds):

- ``receive_handshake(data, src, now)`` for message types 1, 2 and 3;
- ``send_packets(peer, packets, now)`` for plaintext the caller could not send on the
  fast path (no session yet): they are staged and a handshake is started;
- ``handle_timers(now)`` when ``next_deadline()`` has passed.

Each returns a list of ``Transmit`` (datagram, endpoint) for the caller to send. The
transport fast path itself lives with the caller (session.Keypair.seal_into/open_into);
it reports back through the cheap timer hooks ``Peer.data_sent`` and
``Peer.data_received`` and asks ``Device.after_send``/``Device.after_receive`` once per
batch whether a rekey is due.

Timers are deadlines on each peer, named ``*_at`` (None = not armed):

    retransmit_handshake_at  REKEY_TIMEOUT + jitter after an initiation; after
                             MAX_TIMER_HANDSHAKES tries (90 s) the peer gives up
    send_keepalive_at        KEEPALIVE_TIMEOUT after data was received and none sent
    new_handshake_at         KEEPALIVE + REKEY_TIMEOUT + jitter after data was sent and
                             nothing authenticated came back
    zero_key_material_at     3 x REJECT_AFTER_TIME after the last session was derived
    persistent_keepalive_at  the configured interval after any authenticated packet

Under a handshake flood (``_check_macs``): a bad mac1 is dropped after one BLAKE2s;
above UNDER_LOAD_HANDSHAKES_PER_S messages with a valid mac1 the device demands mac2,
answering the others with a cookie reply and no Curve25519 work; both the Curve25519
work and the cookie replies are rate limited per source (ratelimiter.py).

Entropy (indices, ephemeral keys, jitter, cookie secrets) comes from an injected
``entropy(n)``; the TAI64N timestamp is ``now`` plus an injected epoch offset.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from weftnet.endpoint import Endpoint
from weftnet.wireguard import crypto, tai64n
from weftnet.wireguard.allowedips import AllowedIPs
from weftnet.wireguard.constants import (
    KEEPALIVE_TIMEOUT_S,
    MAX_STAGED_PACKETS,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME_S,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME_S,
    REKEY_TIMEOUT_JITTER_MAX_S,
    REKEY_TIMEOUT_S,
    UNDER_LOAD_HANDSHAKES_PER_S,
    UNDER_LOAD_HOLD_S,
)
from weftnet.wireguard.cookie import CookieChecker, CookieGenerator, packed_host
from weftnet.wireguard.crypto import Entropy
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.handshake import NO_PSK, Handshake, Identity, State, consume_initiation
from weftnet.wireguard.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    CookieReply,
    Initiation,
    Response,
    padded_size,
)
from weftnet.wireguard.ratelimiter import RateLimiter
from weftnet.wireguard.session import Keypair


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """The device's timers and limits; the defaults are the spec's (constants.py).

    Injected, so a lab or a test can run WireGuard with short timers (a rekey every
    second) without a hook in the product.
    """

    rekey_after_time_s: float = REKEY_AFTER_TIME_S  # the initiator rekeys a session this old
    rekey_after_messages: int = REKEY_AFTER_MESSAGES  # or one that sent this many messages
    max_timer_handshakes: int = MAX_TIMER_HANDSHAKES  # initiation retries before giving up
    under_load_handshakes_per_s: int = UNDER_LOAD_HANDSHAKES_PER_S
    under_load_hold_s: float = UNDER_LOAD_HOLD_S


SPEC_CONFIG = DeviceConfig()  # the whitepaper's timers


class HandshakeLoad:
    """Whether the device is "under load" (whitepaper section 5.3): more than ``per_s``
    handshake messages in a one-second window, and ``hold_s`` after that. Called once per
    handshake message that has a valid mac1. (wireguard-go and the kernel judge load by
    the length of their handshake queue; a single-threaded device has no queue, so it
    counts a rate. The per-source limits are ratelimiter.RateLimiter.)"""

    __slots__ = ("_count", "_hold_s", "_per_s", "_until", "_window_start")

    def __init__(self, per_s: int, hold_s: float) -> None:
        self._per_s = per_s
        self._hold_s = hold_s
        self._window_start = float("-inf")
        self._count = 0
        self._until = float("-inf")

    def __call__(self, now: float) -> bool:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self._per_s:
            self._until = now + self._hold_s
        return now < self._until


@dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes
    endpoint: Endpoint
    peer_key: bytes = b""  # the peer it is for (a relay needs it; b"" for cookie replies)


class HandshakeOutcome(NamedTuple):
    transmits: list[Transmit]
    # The peer an initiation or response authenticated (from the message's source);
    # None for a cookie reply, or a message answered with a cookie instead.
    authenticated: Peer | None


class Peer:
    """One configured peer and its sessions."""

    __slots__ = (
        "cookies",
        "crossed",
        "current",
        "endpoint",
        "handshake",
        "handshake_attempts",
        "handshakes_completed",
        "last_handshake_at",
        "last_sent_initiation_at",
        "need_another_keepalive",
        "new_handshake_at",
        "next",
        "persistent_keepalive_at",
        "persistent_keepalive_s",
        "previous",
        "public_key",
        "retransmit_handshake_at",
        "rx_bytes",
        "send_keepalive_at",
        "sent_last_minute_handshake",
        "staged",
        "tx_bytes",
        "zero_key_material_at",
    )

    def __init__(
        self,
        identity: Identity,
        public_key: bytes,
        preshared_key: bytes | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive_s: int = 0,
    ) -> None:
        self.public_key = public_key
        self.handshake = Handshake(identity, public_key, preshared_key or NO_PSK)
        # Our initiation in flight when the peer's own initiation crossed it: it still
        # takes its response (Device._receive_initiation).
        self.crossed: Handshake | None = None
        self.cookies = CookieGenerator(public_key)
        self.endpoint = endpoint
        self.persistent_keepalive_s = persistent_keepalive_s
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_at: float | None = None  # monotonic time of the last completion
        self.last_sent_initiation_at: float | None = None
        self.handshake_attempts = 0
        self.handshakes_completed = 0
        self.need_another_keepalive = False
        self.sent_last_minute_handshake = False
        self.retransmit_handshake_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_key_material_at: float | None = None
        self.persistent_keepalive_at: float | None = None

    # Timer hooks, named after wireguard-go's. Each is cheap: the fast path calls them
    # once per batch of packets.

    def data_sent(self, now: float, jitter: float) -> None:
        """After sending authenticated data (not a keepalive)."""
        if self.new_handshake_at is None:
            self.new_handshake_at = now + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S + jitter
        self.any_authenticated_sent(now)

    def any_authenticated_sent(self, now: float) -> None:
        self.send_keepalive_at = None
        self._traversal(now)

    def data_received(self, now: float, is_data: bool) -> None:
        """After a batch of authenticated transport packets; is_data: not only keepalives."""
        if is_data:
            if self.send_keepalive_at is None:
                self.send_keepalive_at = now + KEEPALIVE_TIMEOUT_S
            else:
                self.need_another_keepalive = True
        self.new_handshake_at = None  # any authenticated packet received
        self._traversal(now)

    def _traversal(self, now: float) -> None:
        if self.persistent_keepalive_s:
            self.persistent_keepalive_at = now + self.persistent_keepalive_s

    def next_deadline(self) -> float | None:
        ds = [
            d
            for d in (
                self.retransmit_handshake_at,
                self.send_keepalive_at,
                self.new_handshake_at,
                self.zero_key_material_at,
                self.persistent_keepalive_at,
            )
            if d is not None
        ]
        return min(ds) if ds else None

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]


class Device:
    """The pure WireGuard device: one static identity, many peers."""

    def __init__(
        self,
        private_key: bytes,
        entropy: Entropy,
        epoch_offset_s: float = 0.0,
        config: DeviceConfig = SPEC_CONFIG,
        under_load: Callable[[float], bool] | None = None,
    ):
        self.identity = Identity.from_private(private_key)
        self.entropy = entropy
        self.epoch_offset_s = epoch_offset_s  # wall clock = now + epoch_offset_s
        self.mtu = 1420
        self.config = config
        # under_load(now), asked once per handshake message with a valid mac1.
        self.under_load = under_load or HandshakeLoad(
            config.under_load_handshakes_per_s, config.under_load_hold_s
        )
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.indices: dict[int, Peer | Keypair] = {}  # local index -> handshake's peer or keypair
        self.cookie_checker = CookieChecker(self.identity.public_key)
        # Under load: Curve25519 work and cookie replies allowed per source (_check_macs).
        self.handshake_limiter = RateLimiter()
        self.cookie_limiter = RateLimiter()
        self.cookie_replies_sent = 0
        self.handshakes_initiated = 0  # initiation messages created (retries included)

    # -- configuration ----------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        allowed_ips: list[str] | tuple[str, ...] = (),
        preshared_key: bytes | None = None,
        endpoint: tuple[str, int] | None = None,
        persistent_keepalive_s: int = 0,
    ) -> Peer:
        if public_key == self.identity.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        if public_key in self.peers:
            raise ValueError("peer already configured")
        ep = None if endpoint is None else Endpoint(*endpoint)
        peer = Peer(self.identity, public_key, preshared_key, ep, persistent_keepalive_s)
        self.peers[public_key] = peer
        for net in allowed_ips:
            self.allowed_ips.insert(ipaddress.ip_network(net, strict=False), peer)
        return peer

    def set_allowed_ips(self, peer: Peer, allowed_ips: list[str] | tuple[str, ...]) -> None:
        """Replace the networks routed to ``peer``."""
        self.allowed_ips.remove_peer(peer)
        for net in allowed_ips:
            self.allowed_ips.insert(ipaddress.ip_network(net, strict=False), peer)

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed_ips.remove_peer(peer)
        self._zero_keys(peer)

    # -- helpers ----------------------------------------------------------------------

    def jitter(self) -> float:
        """A uniform delay in [0, REKEY_TIMEOUT_JITTER_MAX_S) from the injected entropy."""
        r = int.from_bytes(self.entropy(4), "little")
        return r / 2**32 * REKEY_TIMEOUT_JITTER_MAX_S

    def _new_index(self, owner: Peer | Keypair) -> int:
        while True:
            idx = int.from_bytes(self.entropy(4), "little")
            if idx not in self.indices:
                self.indices[idx] = owner
                return idx

    def _timestamp(self, now: float) -> bytes:
        return tai64n.encode(int((now + self.epoch_offset_s) * 1e9))

    def _drop_keypair(self, kp: Keypair | None) -> None:
        if kp is not None and self.indices.get(kp.local_index) is kp:
            del self.indices[kp.local_index]

    def _drop_handshake_index(self, peer: Peer) -> None:
        idx = peer.handshake.local_index
        if idx and self.indices.get(idx) is peer:
            del self.indices[idx]

    def _drop_crossed(self, peer: Peer) -> None:
        crossed, peer.crossed = peer.crossed, None
        if crossed is not None and self.indices.get(crossed.local_index) is peer:
            del self.indices[crossed.local_index]

    def _zero_keys(self, peer: Peer) -> None:
        for kp in (peer.previous, peer.current, peer.next):
            self._drop_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._drop_handshake_index(peer)
        self._drop_crossed(peer)
        peer.handshake.clear()
        peer.zero_key_material_at = None

    # -- handshake initiation ---------------------------------------------------------

    def initiate(self, peer: Peer, now: float, is_retry: bool = False) -> list[Transmit]:
        """Send an initiation to ``peer`` unless one went out less than REKEY_TIMEOUT ago."""
        if (
            not is_retry
            and peer.last_sent_initiation_at is not None
            and now - peer.last_sent_initiation_at < REKEY_TIMEOUT_S
        ):
            return []
        if not is_retry:
            peer.handshake_attempts = 0
        if peer.endpoint is None:
            return []  # nowhere to send; a packet from the peer will teach us its endpoint
        self._drop_handshake_index(peer)
        self._drop_crossed(peer)
        index = self._new_index(peer)
        ephemeral = crypto.generate_private_key(self.entropy)
        msg = peer.handshake.create_initiation(index, ephemeral, self._timestamp(now))
        raw = bytearray(msg.pack())
        peer.cookies.add_macs(raw, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, now)
        peer.last_sent_initiation_at = now
        self.handshakes_initiated += 1
        peer.any_authenticated_sent(now)
        peer.retransmit_handshake_at = now + REKEY_TIMEOUT_S + self.jitter()
        return [Transmit(bytes(raw), peer.endpoint, peer.public_key)]

    # -- receiving handshake messages -------------------------------------------------

    def receive_handshake(self, data: bytes, src: Endpoint, now: float) -> list[Transmit]:
        """``handle_handshake`` for a caller that only needs what to send."""
        return self.handle_handshake(data, src, now).transmits

    def handle_handshake(self, data: bytes, src: Endpoint, now: float) -> HandshakeOutcome:
        """Process a message of type 1, 2 or 3. Bad input raises ProtocolError, changing
        nothing; the caller drops the datagram.

        The device never moves a peer's endpoint: an initiation or response that
        authenticates a peer from ``src`` is reported in the outcome, and the endpoint's
        owner (roaming in plain WireGuard, the path layer in a tailnet) decides."""
        kind = data[0] if data else 0
        if kind == MESSAGE_INITIATION:
            return self._receive_initiation(bytes(data), src, now)
        if kind == MESSAGE_RESPONSE:
            return self._receive_response(bytes(data), src, now)
        if kind == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(bytes(data), now)
            return HandshakeOutcome([], None)
        raise ProtocolError("not a handshake message")

    def _check_macs(
        self, data: bytes, off1: int, off2: int, sender: int, src: Endpoint, now: float
    ) -> list[Transmit] | None:
        """None when the message may be processed, else what to send instead: a cookie
        reply. ProtocolError: drop it (bad mac1, or over a per-source limit).

        The DoS rules in one place (whitepaper 5.3, wireguard-go's RoutineHandshake):
        a bad mac1 costs one BLAKE2s and no reply. Under load, a message whose mac2
        proves its source address gets Curve25519 work only within that source's rate
        (handshake_limiter); one without gets a cookie reply, no Curve25519 work, and
        only within the source's rate of cookie replies (cookie_limiter), so a spoofed
        flood is never reflected at line rate to the spoofed address. A cookie reply (64
        bytes) is smaller than an initiation (148) or a response (92): no amplification.
        """
        if not self.cookie_checker.check_mac1(data, off1):
            raise ProtocolError("bad mac1")
        if not self.under_load(now):
            return None
        address, port = src
        host = packed_host(address)
        srcb = host + port.to_bytes(2, "little")
        if self.cookie_checker.check_mac2(data, off2, srcb, now):
            if not self.handshake_limiter.allow(host, now):
                raise ProtocolError("handshake rate limited")
            return None
        if not self.cookie_limiter.allow(host, now):
            raise ProtocolError("cookie reply rate limited")
        reply = self.cookie_checker.create_reply(data, off1, sender, srcb, now, self.entropy)
        self.cookie_replies_sent += 1
        return [Transmit(reply.pack(), src)]

    def _receive_initiation(self, data: bytes, src: Endpoint, now: float) -> HandshakeOutcome:
        msg = Initiation.unpack(data)
        instead = self._check_macs(
            data, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, msg.sender, src, now
        )
        if instead is not None:
            return HandshakeOutcome(instead, None)
        consumed = consume_initiation(self.identity, msg)
        peer = self.peers.get(consumed.initiator_static)
        if peer is None:
            raise ProtocolError("initiation from an unknown peer")
        ours = peer.handshake.fork_initiation()
        peer.handshake.accept_initiation(consumed, now)
        if ours is not None:
            # Crossing initiations: ours keeps its index and may still complete, so that
            # each side ends with a session it started and one the peer started.
            self._drop_crossed(peer)
            peer.crossed = ours
        else:
            self._drop_handshake_index(peer)
        index = self._new_index(peer)
        resp = peer.handshake.create_response(index, crypto.generate_private_key(self.entropy))
        raw = bytearray(resp.pack())
        peer.cookies.add_macs(raw, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, now)
        keys = peer.handshake.derive_keys()
        kp = Keypair(keys, now, peer)
        self.indices[kp.local_index] = kp  # the handshake index becomes the session index
        # Responder: the new session waits in `next` until the initiator uses it.
        self._drop_keypair(peer.next)
        peer.next = kp
        self._session_derived(peer, now)
        peer.any_authenticated_sent(now)
        # The response goes back where the initiation came from, wherever the peer's
        # endpoint points.
        return HandshakeOutcome([Transmit(bytes(raw), src, peer.public_key)], peer)

    def _receive_response(self, data: bytes, src: Endpoint, now: float) -> HandshakeOutcome:
        msg = Response.unpack(data)
        instead = self._check_macs(
            data, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, msg.sender, src, now
        )
        if instead is not None:
            return HandshakeOutcome(instead, None)
        owner = self.indices.get(msg.receiver)
        if not isinstance(owner, Peer):
            raise ProtocolError("response to an unknown index")
        peer = owner
        crossed = peer.crossed
        if crossed is not None and crossed.local_index == msg.receiver:
            crossed.consume_response(msg)
            peer.crossed = None
            keys = crossed.derive_keys()
        else:
            peer.handshake.consume_response(msg)
            keys = peer.handshake.derive_keys()
        kp = Keypair(keys, now, peer)
        self.indices[kp.local_index] = kp
        # Initiator: the new session is used at once. A session the peer started that we
        # have not seen used yet (``next``) may already carry its packets: keep it as
        # ``previous`` (wireguard-go's BeginSymmetricSession), so crossing handshakes lose
        # nothing.
        self._drop_keypair(peer.previous)
        if peer.next is not None:
            peer.previous = peer.next
            peer.next = None
            self._drop_keypair(peer.current)
        else:
            peer.previous = peer.current
        peer.current = kp
        self._handshake_complete(peer, now)
        self._session_derived(peer, now)
        peer.new_handshake_at = None  # an authenticated packet was received
        peer._traversal(now)
        out = self._flush_staged(peer, now)
        if not out:
            out = self._keepalive(peer, now)  # confirm the session to the responder
        return HandshakeOutcome(out, peer)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        reply = CookieReply.unpack(data)
        owner = self.indices.get(reply.receiver)
        peer = owner if isinstance(owner, Peer) else getattr(owner, "peer", None)
        if not isinstance(peer, Peer):
            raise ProtocolError("cookie reply to an unknown index")
        peer.cookies.consume_reply(reply, now)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.retransmit_handshake_at = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake_at = now
        peer.handshakes_completed += 1

    def _session_derived(self, peer: Peer, now: float) -> None:
        peer.zero_key_material_at = now + REJECT_AFTER_TIME_S * 3

    # -- transport bookkeeping for the fast path --------------------------------------

    def received_on(self, kp: Keypair, now: float) -> list[Transmit]:
        """A packet authenticated on ``kp``: rotate `next` in if the initiator used it,
        and send what was waiting for a session."""
        peer = kp.peer
        assert isinstance(peer, Peer)
        if kp is not peer.next:
            return []
        self._drop_keypair(peer.previous)
        peer.previous = peer.current
        peer.current = kp
        peer.next = None
        self._handshake_complete(peer, now)
        return self._flush_staged(peer, now)

    def after_receive(self, kp: Keypair, now: float) -> list[Transmit]:
        """keepKeyFreshReceiving: an old initiator session is renewed before it expires."""
        peer = kp.peer
        assert isinstance(peer, Peer)
        if (
            kp is peer.current
            and kp.is_initiator
            and not peer.sent_last_minute_handshake
            and now - kp.created_at > REJECT_AFTER_TIME_S - KEEPALIVE_TIMEOUT_S - REKEY_TIMEOUT_S
        ):
            peer.sent_last_minute_handshake = True
            return self.initiate(peer, now)
        return []

    def after_send(self, peer: Peer, now: float) -> list[Transmit]:
        """keepKeyFreshSending: rekey by message count, or by age if we initiated."""
        kp = peer.current
        if kp is None:
            return self.initiate(peer, now)
        if kp.send_counter > self.config.rekey_after_messages or (
            kp.is_initiator and now - kp.created_at > self.config.rekey_after_time_s
        ):
            return self.initiate(peer, now)
        return []

    def sending_keypair(self, peer: Peer, now: float) -> Keypair | None:
        kp = peer.current
        if kp is not None and kp.usable_for_sending(now):
            return kp
        return None

    # -- the slow send path -----------------------------------------------------------

    def send_packets(self, peer: Peer, packets: list[bytes], now: float) -> list[Transmit]:
        """Send plaintext IP packets to ``peer``: sealed now if a session exists, else
        staged while a handshake is started."""
        peer.staged.extend(packets)
        kp = self.sending_keypair(peer, now)
        if kp is None:
            return self.initiate(peer, now)
        return self._flush_staged(peer, now)

    def _flush_staged(self, peer: Peer, now: float) -> list[Transmit]:
        kp = self.sending_keypair(peer, now)
        if kp is None or peer.endpoint is None or not peer.staged:
            return []
        out: list[Transmit] = []
        while peer.staged:
            pkt = peer.staged.popleft()
            padded = pkt.ljust(padded_size(len(pkt), self.mtu), b"\x00")
            out.append(Transmit(kp.seal(padded), peer.endpoint, peer.public_key))
            peer.tx_bytes += len(out[-1].data)
        peer.data_sent(now, self.jitter())
        return out + self.after_send(peer, now)

    def _keepalive(self, peer: Peer, now: float) -> list[Transmit]:
        kp = self.sending_keypair(peer, now)
        if kp is None or peer.endpoint is None:
            return []
        msg = kp.seal(b"")
        peer.tx_bytes += len(msg)
        peer.any_authenticated_sent(now)
        return [Transmit(msg, peer.endpoint, peer.public_key)]

    def send_keepalive(self, peer: Peer, now: float) -> list[Transmit]:
        """A keepalive now (starting a handshake if there is no session)."""
        if self.sending_keypair(peer, now) is None:
            return self.initiate(peer, now)
        return self._keepalive(peer, now)

    # -- timers -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [d for p in self.peers.values() if (d := p.next_deadline()) is not None]
        return min(ds) if ds else None

    def handle_timers(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for peer in list(self.peers.values()):
            out += self._peer_timers(peer, now)
        return out

    def _peer_timers(self, peer: Peer, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        if peer.retransmit_handshake_at is not None and now >= peer.retransmit_handshake_at:
            peer.retransmit_handshake_at = None
            if peer.handshake_attempts >= self.config.max_timer_handshakes:
                # Give up: forget queued packets; keys go after 3 x REJECT_AFTER_TIME.
                peer.send_keepalive_at = None
                peer.staged.clear()
                if peer.zero_key_material_at is None:
                    peer.zero_key_material_at = now + REJECT_AFTER_TIME_S * 3
                self._drop_crossed(peer)
                if peer.handshake.state is State.INITIATION_CREATED:
                    self._drop_handshake_index(peer)
                    peer.handshake.clear()
            else:
                peer.handshake_attempts += 1
                out += self.initiate(peer, now, is_retry=True)
        if peer.send_keepalive_at is not None and now >= peer.send_keepalive_at:
            peer.send_keepalive_at = None
            out += self._keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT_S
        if peer.new_handshake_at is not None and now >= peer.new_handshake_at:
            peer.new_handshake_at = None
            out += self.initiate(peer, now)
        if peer.zero_key_material_at is not None and now >= peer.zero_key_material_at:
            self._zero_keys(peer)
        if peer.persistent_keepalive_at is not None and now >= peer.persistent_keepalive_at:
            peer.persistent_keepalive_at = None
            out += self.send_keepalive(peer, now)
        return out
