"""WireGuard's handshake: Noise IKpsk2 in WireGuard's framing (whitepaper 5.4.2-5.4.5).

Theory of operation: a ``Handshake`` is the per-peer state of wireguard-go's
``Handshake`` struct, and the paired verbs follow noise-protocol.go:

    initiator                                  responder
    create_initiation()  -- Initiation -->     consume_initiation() (device level:
                                               finds the peer by the decrypted static key)
                                               create_response()
    consume_response()   <-- Response ---
    derive_keys()                              derive_keys()

The timestamp payload of the initiation is a TAI64N supplied by the caller, and must be
strictly greater than the last one accepted from that peer (replay protection). An
initiation arriving sooner than ``INITIATION_MIN_INTERVAL_S`` after the last one accepted
is refused (flood protection). Every failure raises ProtocolError and changes nothing.

Nothing here fills mac1/mac2: the caller passes the packed message through
``CookieGenerator.add_macs``. Nothing reads a clock or an RNG: ``now`` (monotonic seconds),
the timestamp and the ephemeral private key come in as arguments.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass

from weftnet.wireguard import crypto, noise
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import (
    ENCRYPTED_STATIC_SIZE,
    ENCRYPTED_TIMESTAMP_SIZE,
    Initiation,
    Response,
)

IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
TIMESTAMP_LEN = 12  # TAI64N
INITIATION_MIN_INTERVAL_S = 1 / 50  # wireguard-go's handshakeInitationRate
NO_PSK = bytes(32)  # the preshared key when none is configured


class State(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


@dataclass(frozen=True, slots=True)
class Identity:
    """The local static key pair."""

    private_key: bytes
    public_key: bytes

    @classmethod
    def from_private(cls, private_key: bytes) -> Identity:
        return cls(private_key, crypto.public_key(private_key))


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What a completed handshake yields; session.Keypair is built from it."""

    send_key: bytes
    receive_key: bytes
    is_initiator: bool
    local_index: int
    remote_index: int


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """An initiation whose sender's static key decrypted; the peer is not chosen yet."""

    initiator_static: bytes
    timestamp: bytes
    sender: int
    ephemeral: bytes
    state: noise.SymmetricState


def _initial_state(responder_public: bytes) -> noise.SymmetricState:
    return noise.initialize(responder_public, IDENTIFIER)


class Handshake:
    """Handshake state with one peer."""

    __slots__ = (
        "_ephemeral_private",
        "_remote_ephemeral",
        "_ss",
        "identity",
        "last_initiation_consumed_at",
        "last_timestamp",
        "local_index",
        "precomputed_static_static",
        "preshared_key",
        "remote_index",
        "remote_static",
        "state",
    )

    def __init__(self, identity: Identity, remote_static: bytes, preshared_key: bytes = NO_PSK):
        if len(remote_static) != 32:
            raise ProtocolError("a peer public key is 32 bytes")
        if len(preshared_key) != 32:
            raise ProtocolError("a preshared key is 32 bytes")
        self.identity = identity
        self.remote_static = remote_static
        self.preshared_key = preshared_key
        # Raises ProtocolError for a low-order peer key: such a peer can never handshake.
        self.precomputed_static_static = crypto.dh(identity.private_key, remote_static)
        self.state = State.ZEROED
        self.last_timestamp = bytes(TIMESTAMP_LEN)
        self.last_initiation_consumed_at: float | None = None
        self.local_index = 0
        self.remote_index = 0
        self._ss: noise.SymmetricState | None = None
        self._ephemeral_private = b""
        self._remote_ephemeral = b""

    def clear(self) -> None:
        self.state = State.ZEROED
        self._ss = None
        self._ephemeral_private = b""
        self._remote_ephemeral = b""

    # -- initiator --------------------------------------------------------------------

    def create_initiation(
        self, local_index: int, ephemeral_private: bytes, timestamp: bytes
    ) -> Initiation:
        """Message 1 with zero macs; the handshake now waits for a response."""
        ss = _initial_state(self.remote_static)
        m = noise.write_message_1(
            ss,
            self.identity.private_key,
            self.identity.public_key,
            ephemeral_private,
            self.remote_static,
            timestamp,
            static_static=self.precomputed_static_static,
        )
        self._ss = ss
        self._ephemeral_private = ephemeral_private
        self.local_index = local_index
        self.state = State.INITIATION_CREATED
        return Initiation(local_index, m.ephemeral, m.encrypted_static, m.encrypted_payload)

    def fork_initiation(self) -> Handshake | None:
        """A copy of our initiation in flight (None if there is none), so that it can
        still take its response after this handshake answers the peer's own initiation:
        two peers that initiate at once then both complete instead of both waiting for
        REKEY_TIMEOUT."""
        if self.state is not State.INITIATION_CREATED or self._ss is None:
            return None
        twin = copy.copy(self)
        twin._ss = self._ss.copy()
        return twin

    def consume_response(self, msg: Response) -> None:
        if self.state is not State.INITIATION_CREATED or self._ss is None:
            raise ProtocolError("response without an initiation in flight")
        if msg.receiver != self.local_index:
            raise ProtocolError("response to another initiation")
        ss = self._ss.copy()
        payload = noise.read_message_2(
            ss,
            self._ephemeral_private,
            self.identity.private_key,
            self.preshared_key,
            noise.Message2(msg.ephemeral, msg.encrypted_nothing),
        )
        if payload:
            raise ProtocolError("response payload must be empty")
        self._ss = ss
        self.remote_index = msg.sender
        self.state = State.RESPONSE_CONSUMED

    # -- responder --------------------------------------------------------------------

    def accept_initiation(self, consumed: ConsumedInitiation, now: float) -> None:
        """Take a decrypted initiation for this peer, after replay and flood checks."""
        if consumed.initiator_static != self.remote_static:
            raise ProtocolError("initiation is from another peer")
        if consumed.timestamp <= self.last_timestamp:
            raise ProtocolError("replayed initiation (timestamp not newer)")
        if (
            self.last_initiation_consumed_at is not None
            and now - self.last_initiation_consumed_at < INITIATION_MIN_INTERVAL_S
        ):
            raise ProtocolError("initiation flood: too soon after the last one")
        self.last_timestamp = consumed.timestamp
        self.last_initiation_consumed_at = now
        self._ss = consumed.state
        self._remote_ephemeral = consumed.ephemeral
        self.remote_index = consumed.sender
        self.state = State.INITIATION_CONSUMED

    def create_response(self, local_index: int, ephemeral_private: bytes) -> Response:
        if self.state is not State.INITIATION_CONSUMED or self._ss is None:
            raise ProtocolError("no initiation to respond to")
        m = noise.write_message_2(
            self._ss,
            ephemeral_private,
            self._remote_ephemeral,
            self.remote_static,
            self.preshared_key,
            b"",
        )
        self.local_index = local_index
        self.state = State.RESPONSE_CREATED
        return Response(local_index, self.remote_index, m.ephemeral, m.encrypted_payload)

    # -- both -------------------------------------------------------------------------

    def derive_keys(self) -> SessionKeys:
        """Split the chaining key into transport keys; the handshake state is wiped."""
        if self._ss is None or self.state not in (State.RESPONSE_CONSUMED, State.RESPONSE_CREATED):
            raise ProtocolError("handshake not complete")
        first, second = self._ss.split()
        initiator = self.state is State.RESPONSE_CONSUMED
        keys = SessionKeys(
            send_key=first if initiator else second,
            receive_key=second if initiator else first,
            is_initiator=initiator,
            local_index=self.local_index,
            remote_index=self.remote_index,
        )
        self.clear()
        return keys


def consume_initiation(identity: Identity, msg: Initiation) -> ConsumedInitiation:
    """Decrypt an initiation addressed to ``identity``; the caller then finds the peer."""
    if (
        len(msg.encrypted_static) != ENCRYPTED_STATIC_SIZE
        or len(msg.encrypted_timestamp) != ENCRYPTED_TIMESTAMP_SIZE
    ):
        raise ProtocolError("initiation fields have wrong sizes")
    ss = _initial_state(identity.public_key)
    initiator_static, timestamp, _ = noise.read_message_1(
        ss,
        identity.private_key,
        noise.Message1(msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp),
    )
    return ConsumedInitiation(initiator_static, timestamp, msg.sender, msg.ephemeral, ss)
