"""Relay frames: the wire format between a node and a relay server (docs/relay-protocol.md).

Theory of operation: after the HTTP upgrade on ``/relay`` (see ``upgrade.py``) the TCP
stream carries frames, each ``type (1) | length (4, big-endian) | payload``. The server
speaks first with SERVER_KEY (a magic, its X25519 public key and a fresh random challenge
for this connection). The client answers CLIENT_INFO: its node public key, a nonce, and a
NaCl box made with the node's private key and the server's public key, holding the
challenge; the box opening under (server private, claimed key) is what proves that the
client holds the node key, and the challenge inside it that the proof was made for this
connection (a CLIENT_INFO captured from another connection is refused). The server answers SERVER_INFO, boxed
the other way, which proves the server holds the key it announced. From then on the
client sends SEND_PACKET (destination key + opaque datagram) and receives RECV_PACKET
(source key + datagram); the relay never looks inside a datagram, which is WireGuard
ciphertext. KEEPALIVE, PING/PONG, NOTE_PREFERRED, PEER_GONE and ERROR manage the link.

Batches: both hellos may list ``features``; when both list FEATURE_BATCH, the client may
send SEND_PACKET_BATCH (destination key, a segment size ``seg`` and datagrams back to
back, each ``seg`` bytes but the last: the layout of a UDP GSO send) and the server
forwards it whole as RECV_PACKET_BATCH, so a 64 KiB run of datagrams costs one frame,
not forty. A server splits a batch into RECV_PACKETs for a client that did not list the
feature; a client never sends a batch to a server that did not. An unknown feature is
ignored, so an older peer (which sends no list) simply gets no batches.

Mesh: the relays of one region watch each other (mesh.py, meshauth.py). A relay connects
to a peer like a client whose hello carries ``mesh`` (a proof of the shared secret; the
peer's SERVER_INFO carries its own); the peer then sends PEER_PRESENT / PEER_GONE for its
clients, and takes FORWARD_PACKET(_BATCH): a datagram from one of the watcher's clients
(source key kept) for one of its own. These three frames may be 32 bytes longer than
others (MAX_MESH_PAYLOAD); the header check knows which types may.

Every frame type is a frozen, slotted dataclass: ``pack()`` gives the whole frame
(header included) and ``unpack()`` takes exactly one whole frame and refuses anything
else with ProtocolError, so ``X.unpack(b).pack() == b`` for every ``b`` it accepts.
``FrameDecoder`` cuts a byte stream into frames whatever the chunking; it checks a
header as soon as it has one, so a bad type or an oversized length is refused before
the payload arrives. Nothing here does I/O, reads a clock or draws randomness: nonces and
challenges come in as arguments.
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from weftnet.wireguard.errors import ProtocolError

PROTOCOL_VERSION = 2  # the "version" inside CLIENT_INFO and SERVER_INFO (2: the challenge)
MAGIC = b"WEFTRLY1"  # first 8 payload bytes of SERVER_KEY: "this is a weft relay, v1 framing"
KEY_LEN = 32  # X25519 public key (relay server key, node keys)
NONCE_LEN = 24  # crypto_box nonce
CHALLENGE_LEN = 24  # SERVER_KEY's per-connection random challenge, echoed in CLIENT_INFO
BOX_TAG_LEN = 16  # Poly1305 tag that every crypto_box ciphertext carries
PING_LEN = 8  # opaque PING/PONG payload, echoed back unchanged
MAX_PACKET = 64 * 1024  # largest relayed datagram (a UDP payload fits)
MAX_PAYLOAD = MAX_PACKET + 32  # largest frame payload: a key + the largest datagram
HEADER = struct.Struct(">BI")  # type (1 byte) + payload length (4 bytes, big-endian)
HEADER_LEN = HEADER.size  # 5

SERVER_KEY = 0x01
CLIENT_INFO = 0x02
SERVER_INFO = 0x03
SEND_PACKET = 0x04
RECV_PACKET = 0x05
KEEPALIVE = 0x06
NOTE_PREFERRED = 0x07
PEER_GONE = 0x08
PING = 0x09
PONG = 0x0A
ERROR = 0x0B

SEND_PACKET_BATCH = 0x0C
RECV_PACKET_BATCH = 0x0D

PEER_PRESENT = 0x0E  # mesh: relay -> mesh peer, "this key is connected to me"
FORWARD_PACKET = 0x0F  # mesh: mesh peer -> relay, a datagram for one of its clients
FORWARD_PACKET_BATCH = 0x10  # mesh: the same for a batch
MESH_PROOF_LEN = 32  # HMAC-SHA256 of the mesh secret over the handshake (meshauth.py)
MAX_MESH_PAYLOAD = MAX_PAYLOAD + KEY_LEN  # a forwarded frame also names its source

FEATURE_BATCH = "batch"  # in a hello's "features": speaks SEND/RECV_PACKET_BATCH
FEATURES = frozenset({FEATURE_BATCH})  # what this implementation announces
SEG_LEN = 2  # a batch's segment size field (big-endian)
MAX_BATCH_BYTES = MAX_PAYLOAD - KEY_LEN - SEG_LEN  # datagram bytes in a batch: 65,534
MAX_BATCH_SEGMENTS = 128  # datagrams in a batch (Linux's UDP_MAX_SEGMENTS); bounds a split
SEG = struct.Struct(">H")

PEER_GONE_DISCONNECTED = 0  # the peer was connected here and has gone
PEER_GONE_NOT_HERE = 1  # the peer is not connected to this relay

CHALLENGE_MISMATCH = "CLIENT_INFO does not hold this connection's challenge (a replay?)"


def _header(kind: int, payload_len: int) -> bytes:
    if payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {payload_len} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, payload_len)


def _payload_view(
    data: bytes | memoryview, kind: int, name: str, limit: int = MAX_PAYLOAD
) -> memoryview:
    """The payload of one whole frame ``data`` of type ``kind`` (not copied), at most
    ``limit`` bytes, or ProtocolError."""
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"{name} frame shorter than its {HEADER_LEN}-byte header")
    got_kind, length = HEADER.unpack_from(data)
    if got_kind != kind:
        raise ProtocolError(f"not a {name} frame (type {got_kind:#04x})")
    if length > limit:
        raise ProtocolError(f"frame payload of {length} bytes exceeds {limit}")
    if len(data) != HEADER_LEN + length:
        raise ProtocolError(f"{name} frame length field says {length}, got {len(data) - 5}")
    return memoryview(data)[HEADER_LEN:]


def _payload(data: bytes | memoryview, kind: int, name: str) -> bytes:
    """The payload of one whole frame ``data`` of type ``kind``, or ProtocolError."""
    return bytes(_payload_view(data, kind, name))


def _key(key: bytes, what: str) -> None:
    if len(key) != KEY_LEN:
        raise ProtocolError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")


_SERVER_KEY_LEN = len(MAGIC) + KEY_LEN + CHALLENGE_LEN  # 64


@dataclass(frozen=True, slots=True)
class ServerKey:
    """0x01, server -> client, first frame: MAGIC (8) + server public key (32) +
    challenge (24), fresh and random for every connection."""

    TYPE: ClassVar[int] = SERVER_KEY
    key: bytes
    challenge: bytes

    def pack(self) -> bytes:
        _key(self.key, "server key")
        if len(self.challenge) != CHALLENGE_LEN:
            raise ProtocolError(f"a challenge is {CHALLENGE_LEN} bytes")
        return _header(SERVER_KEY, _SERVER_KEY_LEN) + MAGIC + self.key + self.challenge

    @classmethod
    def unpack(cls, data: bytes) -> ServerKey:
        p = _payload(data, SERVER_KEY, "SERVER_KEY")
        if len(p) != _SERVER_KEY_LEN:
            raise ProtocolError(
                f"SERVER_KEY payload must be {_SERVER_KEY_LEN} bytes, got {len(p)}"
                " (an older relay protocol?)"
            )
        if p[: len(MAGIC)] != MAGIC:
            raise ProtocolError("SERVER_KEY magic is wrong: not a weft relay")
        return cls(p[len(MAGIC) : len(MAGIC) + KEY_LEN], p[len(MAGIC) + KEY_LEN :])


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What CLIENT_INFO's box holds: ``challenge`` is SERVER_KEY's, echoed."""

    version: int
    preferred: bool
    challenge: bytes
    features: frozenset[str] = frozenset()  # FEATURE_* the client speaks
    mesh: bytes | None = None  # a mesh peer's proof that it holds the mesh secret


@dataclass(frozen=True, slots=True)
class ServerHello:
    """What SERVER_INFO's box holds: the limits the server applies to this client."""

    version: int
    rate_bytes_per_s: int
    burst_bytes: int
    features: frozenset[str] = frozenset()  # FEATURE_* the server speaks
    mesh: bytes | None = None  # to a mesh peer: the relay's proof of the mesh secret


def _seal(private_key: bytes, peer_public: bytes, body: dict[str, Any], nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ProtocolError(f"a nonce is {NONCE_LEN} bytes")
    plain = json.dumps(body, separators=(",", ":")).encode()
    return Box(PrivateKey(private_key), PublicKey(peer_public)).encrypt(plain, nonce).ciphertext


def _open(private_key: bytes, peer_public: bytes, nonce: bytes, sealed: bytes) -> dict[str, Any]:
    try:
        plain = Box(PrivateKey(private_key), PublicKey(peer_public)).decrypt(sealed, nonce)
    except (CryptoError, ValueError) as e:
        raise ProtocolError("box does not open with the claimed key") from e
    try:
        body = json.loads(plain)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError("box does not hold JSON") from e
    if not isinstance(body, dict):
        raise ProtocolError("box does not hold a JSON object")
    if body.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported relay protocol version {body.get('version')!r}")
    return body


def _features(body: dict[str, Any]) -> frozenset[str]:
    """A hello's optional "features": a list of strings (absent in older peers' hellos)."""
    listed = body.get("features", [])
    if not isinstance(listed, list) or not all(isinstance(f, str) for f in listed):
        raise ProtocolError("hello 'features' must be a list of strings")
    return frozenset(listed)


def _mesh_field(body: dict[str, Any], mesh: bytes | None) -> dict[str, Any]:
    if mesh is None:
        return body
    if len(mesh) != MESH_PROOF_LEN:
        raise ProtocolError(f"a mesh proof is {MESH_PROOF_LEN} bytes")
    return {**body, "mesh": mesh.hex()}


def _mesh_proof(body: dict[str, Any]) -> bytes | None:
    """A hello's optional "mesh" proof: hex of MESH_PROOF_LEN bytes (only mesh peers')."""
    text = body.get("mesh")
    if text is None:
        return None
    if not isinstance(text, str) or len(text) != 2 * MESH_PROOF_LEN:
        raise ProtocolError(f"hello 'mesh' must be {MESH_PROOF_LEN} bytes in hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ProtocolError("hello 'mesh' is not hex") from None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """0x02, client -> server: node key (32) + nonce (24) + box(JSON ClientHello).

    The JSON is {"version": 2, "preferred": bool, "challenge": hex of SERVER_KEY's}.
    """

    TYPE: ClassVar[int] = CLIENT_INFO
    node_key: bytes
    nonce: bytes
    sealed: bytes

    @classmethod
    def create(
        cls, node_private: bytes, server_public: bytes, hello: ClientHello, nonce: bytes
    ) -> ClientInfo:
        node_public = bytes(PrivateKey(node_private).public_key)
        if len(hello.challenge) != CHALLENGE_LEN:
            raise ProtocolError(f"a challenge is {CHALLENGE_LEN} bytes")
        body = {
            "version": hello.version,
            "preferred": hello.preferred,
            "challenge": hello.challenge.hex(),
            "features": sorted(hello.features),
        }
        body = _mesh_field(body, hello.mesh)
        return cls(node_public, nonce, _seal(node_private, server_public, body, nonce))

    def open(self, server_private: bytes, challenge: bytes) -> ClientHello:
        """The hello, if the box was made with the private half of ``node_key`` and holds
        ``challenge`` (the one this connection's SERVER_KEY carried)."""
        body = _open(server_private, self.node_key, self.nonce, self.sealed)
        preferred = body.get("preferred", False)
        if not isinstance(preferred, bool):
            raise ProtocolError("CLIENT_INFO 'preferred' must be true or false")
        echoed = body.get("challenge")
        if not isinstance(echoed, str) or not hmac.compare_digest(
            echoed.encode(), challenge.hex().encode()
        ):
            raise ProtocolError(CHALLENGE_MISMATCH)
        return ClientHello(
            PROTOCOL_VERSION, preferred, challenge, _features(body), _mesh_proof(body)
        )

    def pack(self) -> bytes:
        _key(self.node_key, "node key")
        if len(self.nonce) != NONCE_LEN:
            raise ProtocolError(f"a nonce is {NONCE_LEN} bytes")
        n = KEY_LEN + NONCE_LEN + len(self.sealed)
        return _header(CLIENT_INFO, n) + self.node_key + self.nonce + self.sealed

    @classmethod
    def unpack(cls, data: bytes) -> ClientInfo:
        p = _payload(data, CLIENT_INFO, "CLIENT_INFO")
        if len(p) < KEY_LEN + NONCE_LEN + BOX_TAG_LEN:
            raise ProtocolError(f"CLIENT_INFO payload of {len(p)} bytes is too short")
        return cls(p[:KEY_LEN], p[KEY_LEN : KEY_LEN + NONCE_LEN], p[KEY_LEN + NONCE_LEN :])


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """0x03, server -> client: nonce (24) + box(JSON ServerHello)."""

    TYPE: ClassVar[int] = SERVER_INFO
    nonce: bytes
    sealed: bytes

    @classmethod
    def create(
        cls, server_private: bytes, node_public: bytes, hello: ServerHello, nonce: bytes
    ) -> ServerInfo:
        body = {
            "version": hello.version,
            "rate_bytes_per_s": hello.rate_bytes_per_s,
            "burst_bytes": hello.burst_bytes,
            "features": sorted(hello.features),
        }
        body = _mesh_field(body, hello.mesh)
        return cls(nonce, _seal(server_private, node_public, body, nonce))

    def open(self, node_private: bytes, server_public: bytes) -> ServerHello:
        """The hello, if the box was made with the private half of ``server_public``."""
        body = _open(node_private, server_public, self.nonce, self.sealed)
        rate, burst = body.get("rate_bytes_per_s"), body.get("burst_bytes")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rate, burst)):
            raise ProtocolError("SERVER_INFO limits must be integers")
        features, mesh = _features(body), _mesh_proof(body)
        return ServerHello(PROTOCOL_VERSION, rate, burst, features, mesh)  # type: ignore[arg-type]

    def pack(self) -> bytes:
        if len(self.nonce) != NONCE_LEN:
            raise ProtocolError(f"a nonce is {NONCE_LEN} bytes")
        return _header(SERVER_INFO, NONCE_LEN + len(self.sealed)) + self.nonce + self.sealed

    @classmethod
    def unpack(cls, data: bytes) -> ServerInfo:
        p = _payload(data, SERVER_INFO, "SERVER_INFO")
        if len(p) < NONCE_LEN + BOX_TAG_LEN:
            raise ProtocolError(f"SERVER_INFO payload of {len(p)} bytes is too short")
        return cls(p[:NONCE_LEN], p[NONCE_LEN:])


def _addressed(kind: int, key: bytes, packet: bytes) -> bytes:
    _key(key, "node key")
    if len(packet) > MAX_PACKET:
        raise ProtocolError(f"packet of {len(packet)} bytes exceeds {MAX_PACKET}")
    return HEADER.pack(kind, KEY_LEN + len(packet)) + key + packet


def _split_addressed(data: bytes, kind: int, name: str) -> tuple[bytes, bytes]:
    p = _payload(data, kind, name)
    if len(p) < KEY_LEN:
        raise ProtocolError(f"{name} payload of {len(p)} bytes has no {KEY_LEN}-byte key")
    return p[:KEY_LEN], p[KEY_LEN:]


@dataclass(frozen=True, slots=True)
class SendPacket:
    """0x04, client -> server: destination node key (32) + datagram (0..64 KiB)."""

    TYPE: ClassVar[int] = SEND_PACKET
    dst: bytes
    packet: bytes

    def pack(self) -> bytes:
        return _addressed(SEND_PACKET, self.dst, self.packet)

    @classmethod
    def unpack(cls, data: bytes) -> SendPacket:
        return cls(*_split_addressed(data, SEND_PACKET, "SEND_PACKET"))


@dataclass(frozen=True, slots=True)
class RecvPacket:
    """0x05, server -> client: source node key (32) + datagram (0..64 KiB)."""

    TYPE: ClassVar[int] = RECV_PACKET
    src: bytes
    packet: bytes

    def pack(self) -> bytes:
        return _addressed(RECV_PACKET, self.src, self.packet)

    @classmethod
    def unpack(cls, data: bytes) -> RecvPacket:
        return cls(*_split_addressed(data, RECV_PACKET, "RECV_PACKET"))


def batch_segments(size: int, seg: int) -> int:
    """How many datagrams ``size`` bytes cut every ``seg`` bytes hold (the last shorter)."""
    return -(-size // seg)


def _check_batch(seg: int, data: bytes, name: str) -> None:
    if not 1 <= len(data) <= MAX_BATCH_BYTES:
        raise ProtocolError(f"{name} holds {len(data)} bytes, not 1..{MAX_BATCH_BYTES}")
    if not 1 <= seg <= 0xFFFF:
        raise ProtocolError(f"{name} segment size {seg} is not 1..65535")
    if batch_segments(len(data), seg) > MAX_BATCH_SEGMENTS:
        raise ProtocolError(f"{name} holds over {MAX_BATCH_SEGMENTS} datagrams")


def _pack_batch(kind: int, key: bytes, seg: int, data: bytes, name: str) -> bytes:
    _key(key, "node key")
    _check_batch(seg, data, name)
    return HEADER.pack(kind, KEY_LEN + SEG_LEN + len(data)) + key + SEG.pack(seg) + data


def _unpack_batch(data: bytes, kind: int, name: str) -> tuple[bytes, int, bytes]:
    p = _payload_view(data, kind, name)  # the datagrams are copied once, not twice
    if len(p) < KEY_LEN + SEG_LEN:
        raise ProtocolError(f"{name} payload of {len(p)} bytes has no key and segment size")
    (seg,) = SEG.unpack_from(p, KEY_LEN)
    blob = bytes(p[KEY_LEN + SEG_LEN :])
    _check_batch(seg, blob, name)
    return bytes(p[:KEY_LEN]), seg, blob


def split_batch(data: bytes, seg: int) -> list[bytes]:
    """The datagrams of a batch: ``data`` cut every ``seg`` bytes."""
    return [data[off : off + seg] for off in range(0, len(data), seg)]


@dataclass(frozen=True, slots=True)
class SendPacketBatch:
    """0x0C, client -> server (FEATURE_BATCH): destination key (32) + segment size (2) +
    1..MAX_BATCH_BYTES of datagrams, each ``seg`` bytes but the last (at most 128)."""

    TYPE: ClassVar[int] = SEND_PACKET_BATCH
    dst: bytes
    seg: int
    data: bytes

    def pack(self) -> bytes:
        return _pack_batch(SEND_PACKET_BATCH, self.dst, self.seg, self.data, "SEND_PACKET_BATCH")

    @classmethod
    def unpack(cls, data: bytes) -> SendPacketBatch:
        return cls(*_unpack_batch(data, SEND_PACKET_BATCH, "SEND_PACKET_BATCH"))


@dataclass(frozen=True, slots=True)
class RecvPacketBatch:
    """0x0D, server -> client (FEATURE_BATCH): source key (32) + segment size (2) +
    datagrams, as SEND_PACKET_BATCH; the relay forwards the datagrams unchanged."""

    TYPE: ClassVar[int] = RECV_PACKET_BATCH
    src: bytes
    seg: int
    data: bytes

    def pack(self) -> bytes:
        return _pack_batch(RECV_PACKET_BATCH, self.src, self.seg, self.data, "RECV_PACKET_BATCH")

    @classmethod
    def unpack(cls, data: bytes) -> RecvPacketBatch:
        return cls(*_unpack_batch(data, RECV_PACKET_BATCH, "RECV_PACKET_BATCH"))


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """0x06, either way: empty; proves the link is alive and keeps NAT state warm."""

    TYPE: ClassVar[int] = KEEPALIVE

    def pack(self) -> bytes:
        return HEADER.pack(KEEPALIVE, 0)

    @classmethod
    def unpack(cls, data: bytes) -> KeepAlive:
        if _payload(data, KEEPALIVE, "KEEPALIVE"):
            raise ProtocolError("KEEPALIVE payload must be empty")
        return cls()


@dataclass(frozen=True, slots=True)
class NotePreferred:
    """0x07, client -> server: 1 byte, 1 if this relay is the node's home, else 0."""

    TYPE: ClassVar[int] = NOTE_PREFERRED
    preferred: bool

    def pack(self) -> bytes:
        return HEADER.pack(NOTE_PREFERRED, 1) + (b"\x01" if self.preferred else b"\x00")

    @classmethod
    def unpack(cls, data: bytes) -> NotePreferred:
        p = _payload(data, NOTE_PREFERRED, "NOTE_PREFERRED")
        if p not in (b"\x00", b"\x01"):
            raise ProtocolError("NOTE_PREFERRED payload must be one byte, 0 or 1")
        return cls(p == b"\x01")


@dataclass(frozen=True, slots=True)
class PeerGone:
    """0x08, server -> client: node key (32) + reason (1).

    Reasons other than PEER_GONE_DISCONNECTED and PEER_GONE_NOT_HERE are accepted and
    kept, so a newer server may add some without breaking older clients.
    """

    TYPE: ClassVar[int] = PEER_GONE
    node_key: bytes
    reason: int

    def pack(self) -> bytes:
        _key(self.node_key, "node key")
        if not 0 <= self.reason <= 255:
            raise ProtocolError("PEER_GONE reason is one byte")
        return HEADER.pack(PEER_GONE, KEY_LEN + 1) + self.node_key + bytes((self.reason,))

    @classmethod
    def unpack(cls, data: bytes) -> PeerGone:
        p = _payload(data, PEER_GONE, "PEER_GONE")
        if len(p) != KEY_LEN + 1:
            raise ProtocolError(f"PEER_GONE payload must be {KEY_LEN + 1} bytes, got {len(p)}")
        return cls(p[:KEY_LEN], p[KEY_LEN])


def _ping_payload(data: bytes, kind: int, name: str) -> bytes:
    p = _payload(data, kind, name)
    if len(p) != PING_LEN:
        raise ProtocolError(f"{name} payload must be {PING_LEN} bytes, got {len(p)}")
    return p


@dataclass(frozen=True, slots=True)
class Ping:
    """0x09, either way: 8 opaque bytes; the receiver answers PONG with the same bytes."""

    TYPE: ClassVar[int] = PING
    data: bytes

    def pack(self) -> bytes:
        if len(self.data) != PING_LEN:
            raise ProtocolError(f"PING payload must be {PING_LEN} bytes")
        return HEADER.pack(PING, PING_LEN) + self.data

    @classmethod
    def unpack(cls, data: bytes) -> Ping:
        return cls(_ping_payload(data, PING, "PING"))


@dataclass(frozen=True, slots=True)
class Pong:
    """0x0A, either way: the 8 bytes of the PING it answers."""

    TYPE: ClassVar[int] = PONG
    data: bytes

    def pack(self) -> bytes:
        if len(self.data) != PING_LEN:
            raise ProtocolError(f"PONG payload must be {PING_LEN} bytes")
        return HEADER.pack(PONG, PING_LEN) + self.data

    @classmethod
    def unpack(cls, data: bytes) -> Pong:
        return cls(_ping_payload(data, PONG, "PONG"))


@dataclass(frozen=True, slots=True)
class Error:
    """0x0B, server -> client: UTF-8 reason; the server closes the connection after it."""

    TYPE: ClassVar[int] = ERROR
    reason: str

    def pack(self) -> bytes:
        raw = self.reason.encode()
        return _header(ERROR, len(raw)) + raw

    @classmethod
    def unpack(cls, data: bytes) -> Error:
        p = _payload(data, ERROR, "ERROR")
        try:
            return cls(p.decode())
        except UnicodeDecodeError as e:
            raise ProtocolError("ERROR reason is not UTF-8") from e


# -- the mesh: frames between the relays of one region (docs/relay-protocol.md, "Mesh") ----
# Only a connection whose hello carried a valid mesh proof may send FORWARD_PACKET(_BATCH)
# or receive PEER_PRESENT; a node's connection that sends one is closed as malformed.


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """0x0E, relay -> mesh peer: node key (32) now connected to the relay. Its leaving
    is told with PEER_GONE(disconnected)."""

    TYPE: ClassVar[int] = PEER_PRESENT
    node_key: bytes

    def pack(self) -> bytes:
        _key(self.node_key, "node key")
        return HEADER.pack(PEER_PRESENT, KEY_LEN) + self.node_key

    @classmethod
    def unpack(cls, data: bytes) -> PeerPresent:
        p = _payload(data, PEER_PRESENT, "PEER_PRESENT")
        if len(p) != KEY_LEN:
            raise ProtocolError(f"PEER_PRESENT payload must be {KEY_LEN} bytes, got {len(p)}")
        return cls(p)


def _forward_view(data: bytes, kind: int, name: str) -> tuple[bytes, bytes, memoryview]:
    """Source key, destination key and the rest of a forwarded frame (checked header)."""
    view = _payload_view(data, kind, name, MAX_MESH_PAYLOAD)
    if len(view) < 2 * KEY_LEN:
        raise ProtocolError(f"{name} payload of {len(view)} bytes has no two {KEY_LEN}-byte keys")
    return bytes(view[:KEY_LEN]), bytes(view[KEY_LEN : 2 * KEY_LEN]), view[2 * KEY_LEN :]


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    """0x0F, mesh peer -> relay: source key (32) + destination key (32) + datagram
    (0..64 KiB). The relay delivers it to its client ``dst`` as RECV_PACKET from ``src``."""

    TYPE: ClassVar[int] = FORWARD_PACKET
    src: bytes
    dst: bytes
    packet: bytes

    def pack(self) -> bytes:
        _key(self.src, "source key")
        _key(self.dst, "destination key")
        if len(self.packet) > MAX_PACKET:
            raise ProtocolError(f"packet of {len(self.packet)} bytes exceeds {MAX_PACKET}")
        n = 2 * KEY_LEN + len(self.packet)
        return HEADER.pack(FORWARD_PACKET, n) + self.src + self.dst + self.packet

    @classmethod
    def unpack(cls, data: bytes) -> ForwardPacket:
        src, dst, rest = _forward_view(data, FORWARD_PACKET, "FORWARD_PACKET")
        return cls(src, dst, bytes(rest))


@dataclass(frozen=True, slots=True)
class ForwardPacketBatch:
    """0x10, mesh peer -> relay: source key (32) + destination key (32) + seg (2) +
    datagrams, as SEND_PACKET_BATCH; delivered as RECV_PACKET_BATCH from ``src``."""

    TYPE: ClassVar[int] = FORWARD_PACKET_BATCH
    src: bytes
    dst: bytes
    seg: int
    data: bytes

    def pack(self) -> bytes:
        name = "FORWARD_PACKET_BATCH"
        _key(self.src, "source key")
        _key(self.dst, "destination key")
        _check_batch(self.seg, self.data, name)
        n = 2 * KEY_LEN + SEG_LEN + len(self.data)
        head = HEADER.pack(FORWARD_PACKET_BATCH, n) + self.src + self.dst
        return head + SEG.pack(self.seg) + self.data

    @classmethod
    def unpack(cls, data: bytes) -> ForwardPacketBatch:
        name = "FORWARD_PACKET_BATCH"
        src, dst, rest = _forward_view(data, FORWARD_PACKET_BATCH, name)
        if len(rest) < SEG_LEN:
            raise ProtocolError(f"{name} payload has no segment size")
        (seg,) = SEG.unpack_from(rest)
        blob = bytes(rest[SEG_LEN:])
        _check_batch(seg, blob, name)
        return cls(src, dst, seg, blob)


Frame = (
    ServerKey | ClientInfo | ServerInfo | SendPacket | RecvPacket | KeepAlive | NotePreferred
    | PeerGone | Ping | Pong | Error | SendPacketBatch | RecvPacketBatch | PeerPresent
    | ForwardPacket | ForwardPacketBatch
)  # fmt: skip

FRAME_TYPES: dict[int, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        ServerKey, ClientInfo, ServerInfo, SendPacket, RecvPacket, KeepAlive, NotePreferred,
        PeerGone, Ping, Pong, Error, SendPacketBatch, RecvPacketBatch, PeerPresent,
        ForwardPacket, ForwardPacketBatch,
    )
}  # fmt: skip
MESH_FRAMES = (PeerPresent, ForwardPacket, ForwardPacketBatch)  # only between mesh peers


def check_header(kind: int, length: int) -> None:
    """Refuse a header before its payload arrives: unknown type or oversized length."""
    if kind not in FRAME_TYPES:
        raise ProtocolError(f"unknown relay frame type {kind:#04x}")
    limit = MAX_MESH_PAYLOAD if kind in (FORWARD_PACKET, FORWARD_PACKET_BATCH) else MAX_PAYLOAD
    if length > limit:
        raise ProtocolError(f"frame payload of {length} bytes exceeds {limit}")


def unpack_frame(data: bytes) -> Frame:
    """Exactly one whole frame, of any type."""
    if len(data) < HEADER_LEN:
        raise ProtocolError(f"frame shorter than its {HEADER_LEN}-byte header")
    kind, length = HEADER.unpack_from(data)
    check_header(kind, length)
    return FRAME_TYPES[kind].unpack(data)


class FrameDecoder:
    """Cuts a byte stream into frames: ``feed(chunk)`` returns the frames it completed.

    Raises ProtocolError as soon as the stream is malformed; frames completed earlier in
    the same chunk are then not returned, and every later ``feed`` raises again (the
    connection is to be closed). ``buffered`` is how many bytes wait for a frame's end.
    """

    __slots__ = ("_buf", "_failed")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        frames: list[Frame] = []
        try:
            pos = self._finish_buffered(data, frames)
            if pos < 0:
                return frames
            # Whole frames are cut straight out of ``data``; only the bytes of an
            # unfinished frame at its end are copied, to wait in ``_buf``.
            end = len(data)
            with memoryview(data) as view:
                while end - pos >= HEADER_LEN:
                    kind, length = HEADER.unpack_from(data, pos)
                    check_header(kind, length)
                    stop = pos + HEADER_LEN + length
                    if stop > end:
                        break
                    # unpack() takes any bytes-like frame; each copies what it keeps
                    frames.append(FRAME_TYPES[kind].unpack(view[pos:stop]))  # type: ignore[arg-type]
                    pos = stop
                self._buf += view[pos:]
        except ProtocolError as e:
            self._failed = e
            self._buf.clear()
            raise
        return frames

    def _finish_buffered(self, data: bytes, frames: list[Frame]) -> int:
        """Complete the frame waiting in ``_buf`` from the start of ``data`` (appending it
        to ``frames``); where in ``data`` the next frame begins, or -1 if all of ``data``
        went into ``_buf`` and the frame is still unfinished."""
        buf = self._buf
        if not buf:
            return 0
        pos = 0
        if len(buf) < HEADER_LEN:
            pos = HEADER_LEN - len(buf)
            buf += data[:pos]
            if len(buf) < HEADER_LEN:
                return -1
            check_header(*HEADER.unpack_from(buf))
        _, length = HEADER.unpack_from(buf)
        missing = HEADER_LEN + length - len(buf)
        buf += memoryview(data)[pos : pos + missing]
        if len(data) - pos < missing:
            return -1
        frame = bytes(buf)
        buf.clear()
        frames.append(unpack_frame(frame))
        return pos + missing
