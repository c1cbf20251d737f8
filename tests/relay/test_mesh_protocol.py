"""The mesh's frames and proofs (pure): parsers fuzzed, sizes at their limits, proofs
bound to one challenge, both keys and one direction."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey

from tests.relay.helpers import keypair
from weftnet.relay import meshauth
from weftnet.relay import protocol as p
from weftnet.wireguard.errors import ProtocolError

keys = st.binary(min_size=32, max_size=32)
MESH_KINDS = (p.PEER_PRESENT, p.FORWARD_PACKET, p.FORWARD_PACKET_BATCH)


@given(st.sampled_from(MESH_KINDS), st.binary(max_size=200))
def test_mesh_frames_parse_or_raise_protocol_error(kind: int, body: bytes) -> None:
    raw = p.HEADER.pack(kind, len(body)) + body
    try:
        frame = p.unpack_frame(raw)
    except ProtocolError:
        return
    assert frame.pack() == raw


@given(keys, keys, st.binary(max_size=3000))
def test_forward_packet_keeps_both_keys_and_the_datagram(src: bytes, dst: bytes, d: bytes) -> None:
    frame = p.ForwardPacket.unpack(p.ForwardPacket(src, dst, d).pack())
    assert (frame.src, frame.dst, frame.packet) == (src, dst, d)


def test_largest_forwarded_frames_fit_the_mesh_payload_and_no_more() -> None:
    src, dst = os.urandom(32), os.urandom(32)
    big = p.ForwardPacket(src, dst, bytes(p.MAX_PACKET)).pack()
    assert len(big) == p.HEADER_LEN + p.MAX_MESH_PAYLOAD
    assert p.FrameDecoder().feed(big) == [p.ForwardPacket(src, dst, bytes(p.MAX_PACKET))]
    batch = p.ForwardPacketBatch(src, dst, 1000, bytes(p.MAX_BATCH_BYTES)).pack()
    assert len(batch) == p.HEADER_LEN + p.MAX_MESH_PAYLOAD
    with pytest.raises(ProtocolError, match="exceeds"):
        p.ForwardPacket(src, dst, bytes(p.MAX_PACKET + 1)).pack()
    with pytest.raises(ProtocolError, match="exceeds"):
        p.FrameDecoder().feed(p.HEADER.pack(p.FORWARD_PACKET, p.MAX_MESH_PAYLOAD + 1))
    # The larger limit is the mesh frames' alone: a node's SEND_PACKET keeps the old one.
    with pytest.raises(ProtocolError, match="exceeds"):
        p.FrameDecoder().feed(p.HEADER.pack(p.SEND_PACKET, p.MAX_PAYLOAD + 1))


@given(keys, keys, st.integers(0, 0xFFFF), st.binary(max_size=600))
def test_forward_batch_parses_or_refuses_whatever_its_seg(
    src: bytes, dst: bytes, seg: int, data: bytes
) -> None:
    raw = p.HEADER.pack(p.FORWARD_PACKET_BATCH, 66 + len(data)) + src + dst
    raw += p.SEG.pack(seg) + data
    try:
        frame = p.ForwardPacketBatch.unpack(raw)
    except ProtocolError:
        assert not data or seg == 0 or p.batch_segments(len(data), seg) > p.MAX_BATCH_SEGMENTS
        return
    assert frame == p.ForwardPacketBatch(src, dst, seg, data)


def test_truncated_mesh_frames_say_why() -> None:
    with pytest.raises(ProtocolError, match="two 32-byte keys"):
        p.ForwardPacket.unpack(p.HEADER.pack(p.FORWARD_PACKET, 40) + bytes(40))
    with pytest.raises(ProtocolError, match="segment size"):
        p.ForwardPacketBatch.unpack(p.HEADER.pack(p.FORWARD_PACKET_BATCH, 65) + bytes(65))
    with pytest.raises(ProtocolError, match="32 bytes"):
        p.PeerPresent.unpack(p.HEADER.pack(p.PEER_PRESENT, 31) + bytes(31))


SECRET = b"s" * 64


def _proofs(secret: bytes = SECRET) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    challenge, client, server = os.urandom(24), os.urandom(32), os.urandom(32)
    c = meshauth.client_proof(secret, challenge, client, server)
    s = meshauth.server_proof(secret, challenge, client, server)
    return challenge, client, server, c, s


def test_proofs_bind_the_secret_the_challenge_both_keys_and_the_direction() -> None:
    challenge, client, server, c, s = _proofs()
    assert len(c) == len(s) == p.MESH_PROOF_LEN
    assert c != s  # a client's proof never passes as a server's, nor the reverse
    assert meshauth.proof_matches(meshauth.client_proof(SECRET, challenge, client, server), c)
    for other in (
        meshauth.client_proof(b"t" * 64, challenge, client, server),
        meshauth.client_proof(SECRET, os.urandom(24), client, server),
        meshauth.client_proof(SECRET, challenge, os.urandom(32), server),
        meshauth.client_proof(SECRET, challenge, client, os.urandom(32)),
    ):
        assert not meshauth.proof_matches(other, c)
    assert not meshauth.proof_matches(c, None)


@pytest.mark.parametrize("raw", [b"", b"short", b" " * 100, b"x" * 5000])
def test_unusable_secrets_are_refused_without_echoing_them(raw: bytes) -> None:
    with pytest.raises(meshauth.MeshSecretError) as e:
        meshauth.parse_secret(raw)
    assert "openssl rand" in str(e.value) and "short" not in str(e.value)


def test_a_secret_file_keeps_its_bytes_but_not_surrounding_whitespace() -> None:
    assert meshauth.parse_secret(b"  " + b"a" * 40 + b"\n") == b"a" * 40


@given(st.booleans(), st.booleans())
def test_hellos_carry_the_mesh_proof_only_when_given(client_has: bool, server_has: bool) -> None:
    node_private, node_public = keypair()
    server_private, server_public = keypair()
    challenge, proof = os.urandom(24), os.urandom(32)
    hello = p.ClientHello(2, False, challenge, p.FEATURES, proof if client_has else None)
    info = p.ClientInfo.create(node_private, server_public, hello, os.urandom(24))
    opened = p.ClientInfo.unpack(info.pack()).open(server_private, challenge)
    assert opened.mesh == (proof if client_has else None)
    sh = p.ServerHello(2, 1, 2, p.FEATURES, proof if server_has else None)
    sinfo = p.ServerInfo.create(server_private, node_public, sh, os.urandom(24))
    assert sinfo.open(node_private, server_public).mesh == (proof if server_has else None)


@pytest.mark.parametrize("mesh", [123, "zz" * 32, "ab" * 31, ["x"]])
def test_malformed_mesh_proofs_in_a_hello_are_refused(mesh: object) -> None:
    node_private, node_public = keypair()
    server_private, server_public = keypair()
    challenge, nonce = os.urandom(24), os.urandom(24)
    body = {"version": 2, "preferred": False, "challenge": challenge.hex(), "mesh": mesh}
    sealed = (
        Box(PrivateKey(node_private), PublicKey(server_public))
        .encrypt(json.dumps(body).encode(), nonce)
        .ciphertext
    )
    with pytest.raises(ProtocolError, match="mesh"):
        p.ClientInfo(node_public, nonce, sealed).open(server_private, challenge)
