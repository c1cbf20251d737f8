"""Relay frames: every input parses or raises ProtocolError; pack(unpack(x)) == x;
the decoder gives the same frames however the stream is cut."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey

from tests.relay.helpers import keypair
from weftnet.relay import protocol as p
from weftnet.wireguard.errors import ProtocolError

keys = st.binary(min_size=32, max_size=32)
challenges = st.binary(min_size=p.CHALLENGE_LEN, max_size=p.CHALLENGE_LEN)
packets = st.binary(max_size=2000) | st.binary(min_size=p.MAX_PACKET, max_size=p.MAX_PACKET)

segs = st.integers(p.MAX_BATCH_BYTES // p.MAX_BATCH_SEGMENTS + 1, 0xFFFF)  # never too many
batch_data = st.binary(min_size=1, max_size=3000) | st.binary(
    min_size=p.MAX_BATCH_BYTES, max_size=p.MAX_BATCH_BYTES
)

frames: st.SearchStrategy[p.Frame] = st.one_of(
    st.builds(p.ServerKey, keys, challenges),
    st.builds(
        p.ClientInfo,
        keys,
        st.binary(min_size=24, max_size=24),
        st.binary(min_size=16, max_size=200),
    ),
    st.builds(
        p.ServerInfo, st.binary(min_size=24, max_size=24), st.binary(min_size=16, max_size=200)
    ),
    st.builds(p.SendPacket, keys, packets),
    st.builds(p.RecvPacket, keys, packets),
    st.builds(p.KeepAlive),
    st.builds(p.NotePreferred, st.booleans()),
    st.builds(p.PeerGone, keys, st.integers(0, 255)),
    st.builds(p.Ping, st.binary(min_size=8, max_size=8)),
    st.builds(p.Pong, st.binary(min_size=8, max_size=8)),
    st.builds(p.Error, st.text(max_size=200)),
    st.builds(p.SendPacketBatch, keys, segs, batch_data),
    st.builds(p.RecvPacketBatch, keys, segs, batch_data),
    st.builds(p.PeerPresent, keys),
    st.builds(p.ForwardPacket, keys, keys, packets),
    st.builds(p.ForwardPacketBatch, keys, keys, segs, batch_data),
)


def _plausible_frames() -> st.SearchStrategy[bytes]:
    """Bytes that begin with a plausible header, so fuzzing reaches the payload checks."""
    return st.builds(
        lambda kind, body: p.HEADER.pack(kind, len(body)) + body,
        st.integers(0, 18),
        st.binary(max_size=120),
    )


@given(st.binary(max_size=300) | _plausible_frames())
def test_any_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        frame = p.unpack_frame(data)
    except ProtocolError:
        return
    assert frame.pack() == data


@given(frames)
def test_round_trip(frame: p.Frame) -> None:
    raw = frame.pack()
    assert p.unpack_frame(raw) == frame
    assert type(frame).unpack(raw) == frame
    assert p.unpack_frame(raw).pack() == raw


@settings(max_examples=200)
@given(st.lists(frames, max_size=8), st.data())
def test_decoder_is_independent_of_chunking(stream: list[p.Frame], data: st.DataObject) -> None:
    raw = b"".join(f.pack() for f in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    decoder = p.FrameDecoder()
    got: list[p.Frame] = []
    for start, stop in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        got += decoder.feed(raw[start:stop])
    assert got == stream
    assert decoder.buffered == 0


@given(st.binary(max_size=400), st.data())
def test_decoder_on_garbage_returns_frames_or_raises(raw: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    decoder = p.FrameDecoder()
    got: list[p.Frame] = []
    try:
        for start, stop in zip([0, *cuts], [*cuts, len(raw)], strict=True):
            got += decoder.feed(raw[start:stop])
    except ProtocolError:
        with pytest.raises(ProtocolError):  # a failed decoder stays failed
            decoder.feed(b"")
        return
    consumed = b"".join(f.pack() for f in got)
    assert raw.startswith(consumed)
    assert decoder.buffered == len(raw) - len(consumed)


@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_garbage_after_good_frames_is_refused_in_any_chunking(
    stream: list[p.Frame], data: st.DataObject
) -> None:
    raw = b"".join(f.pack() for f in stream) + p.HEADER.pack(0x7F, 0)
    cut = data.draw(st.integers(0, len(raw)))
    decoder = p.FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(raw[:cut])
        decoder.feed(raw[cut:])


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = p.FrameDecoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(p.HEADER.pack(p.SEND_PACKET, p.MAX_PAYLOAD + 1))


def test_largest_payload_is_accepted() -> None:
    frame = p.SendPacket(bytes(32), bytes(p.MAX_PACKET))
    raw = frame.pack()
    assert len(raw) == p.HEADER_LEN + p.MAX_PAYLOAD
    assert p.FrameDecoder().feed(raw) == [frame]


@pytest.mark.parametrize(
    "raw, why",
    [
        (p.HEADER.pack(0x00, 0), "unknown"),
        (p.HEADER.pack(0x11, 0), "unknown"),
        (p.HEADER.pack(p.SEND_PACKET_BATCH, 33) + bytes(33), "no key and segment size"),
        (p.HEADER.pack(p.SEND_PACKET_BATCH, 34) + bytes(32) + b"\x00\x01", "holds 0 bytes"),
        (p.HEADER.pack(p.RECV_PACKET_BATCH, 35) + bytes(32) + b"\x00\x00x", "segment size 0"),
        (
            p.HEADER.pack(p.RECV_PACKET_BATCH, 34 + 129) + bytes(32) + b"\x00\x01" + bytes(129),
            "over 128 datagrams",
        ),
        (p.HEADER.pack(p.SERVER_KEY, 64) + b"WEFTRLY2" + bytes(56), "magic"),
        (p.HEADER.pack(p.SERVER_KEY, 63) + b"WEFTRLY1" + bytes(55), "64 bytes"),
        (p.HEADER.pack(p.SERVER_KEY, 40) + b"WEFTRLY1" + bytes(32), "older relay protocol"),
        (p.HEADER.pack(p.KEEPALIVE, 1) + b"\x00", "empty"),
        (p.HEADER.pack(p.NOTE_PREFERRED, 1) + b"\x02", "0 or 1"),
        (p.HEADER.pack(p.PING, 7) + bytes(7), "8 bytes"),
        (p.HEADER.pack(p.PONG, 9) + bytes(9), "8 bytes"),
        (p.HEADER.pack(p.PEER_GONE, 32) + bytes(32), "33 bytes"),
        (p.HEADER.pack(p.SEND_PACKET, 31) + bytes(31), "key"),
        (p.HEADER.pack(p.CLIENT_INFO, 71) + bytes(71), "too short"),
        (p.HEADER.pack(p.ERROR, 2) + b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_frames_say_why(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        p.FrameDecoder().feed(raw)


@pytest.mark.parametrize(
    "frame",
    [
        p.ServerKey(bytes(31), bytes(24)),
        p.ServerKey(bytes(32), bytes(23)),
        p.SendPacket(bytes(32), bytes(p.MAX_PACKET + 1)),
        p.RecvPacket(bytes(33), b""),
        p.PeerGone(bytes(32), 256),
        p.Ping(bytes(9)),
        p.Error("x" * (p.MAX_PAYLOAD + 1)),
        p.SendPacketBatch(bytes(32), 1400, bytes(p.MAX_BATCH_BYTES + 1)),
        p.SendPacketBatch(bytes(32), 0, b"x"),
        p.SendPacketBatch(bytes(32), 0x10000, b"x"),
        p.RecvPacketBatch(bytes(32), 10, b""),
        p.RecvPacketBatch(bytes(31), 10, b"x"),
        p.RecvPacketBatch(bytes(32), 1, bytes(p.MAX_BATCH_SEGMENTS + 1)),
    ],
)
def test_pack_refuses_what_unpack_would(frame: p.Frame) -> None:
    with pytest.raises(ProtocolError):
        frame.pack()


CH = bytes(range(24))  # a challenge


def test_client_info_proves_the_node_key() -> None:
    server_priv, server_pub = keypair()
    node_priv, node_pub = keypair()
    info = p.ClientInfo.create(node_priv, server_pub, p.ClientHello(2, True, CH), bytes(24))
    assert info.node_key == node_pub
    wire = p.ClientInfo.unpack(info.pack())
    assert wire.open(server_priv, CH) == p.ClientHello(2, True, CH)


def test_client_info_claiming_another_key_does_not_open() -> None:
    server_priv, server_pub = keypair()
    attacker_priv, _ = keypair()
    _, victim_pub = keypair()
    made = p.ClientInfo.create(attacker_priv, server_pub, p.ClientHello(2, False, CH), bytes(24))
    forged = p.ClientInfo(victim_pub, made.nonce, made.sealed)
    with pytest.raises(ProtocolError, match="does not open"):
        p.ClientInfo.unpack(forged.pack()).open(server_priv, CH)


@given(challenges, challenges)
@settings(max_examples=25)
def test_client_info_opens_only_with_its_own_challenge(made_for: bytes, asked: bytes) -> None:
    server_priv, server_pub = _SERVER
    info = p.ClientInfo.create(_NODE[0], server_pub, p.ClientHello(2, False, made_for), CH)
    wire = p.ClientInfo.unpack(info.pack())
    if made_for == asked:
        assert wire.open(server_priv, asked).challenge == asked
    else:
        with pytest.raises(ProtocolError, match="challenge"):
            wire.open(server_priv, asked)


_SERVER, _NODE = keypair(), keypair()


@pytest.mark.parametrize("challenge", [None, 7, "", "zz" * 24, "\u00e9" * 48, CH.hex()[:-2]])
def test_client_info_without_the_challenge_is_refused(challenge: object) -> None:
    server_priv, server_pub = _SERVER
    body: dict[str, object] = {"version": 2, "preferred": False}
    if challenge is not None:
        body["challenge"] = challenge
    sealed = _sealed_hello(_NODE[0], server_pub, body, CH)
    with pytest.raises(ProtocolError, match="challenge"):
        p.ClientInfo(_NODE[1], CH, sealed).open(server_priv, CH)


def test_client_hello_with_a_short_challenge_is_not_made() -> None:
    with pytest.raises(ProtocolError, match="challenge"):
        p.ClientInfo.create(_NODE[0], _SERVER[1], p.ClientHello(2, False, bytes(23)), CH)


def test_server_info_proves_the_server_key() -> None:
    server_priv, server_pub = keypair()
    node_priv, node_pub = keypair()
    hello = p.ServerHello(2, 1000, 2000)
    info = p.ServerInfo.create(server_priv, node_pub, hello, bytes(range(24)))
    assert p.ServerInfo.unpack(info.pack()).open(node_priv, server_pub) == hello
    _, other_pub = keypair()
    with pytest.raises(ProtocolError):
        info.open(node_priv, other_pub)


@pytest.mark.parametrize("version", [1, 3])
def test_boxed_hello_of_another_version_is_refused(version: int) -> None:
    server_priv, server_pub = keypair()
    node_priv, _ = keypair()
    hello = p.ClientHello(version, False, CH)
    info = p.ClientInfo.create(node_priv, server_pub, hello, bytes(24))
    with pytest.raises(ProtocolError, match="version"):
        info.open(server_priv, CH)


def _sealed_hello(private: bytes, peer_public: bytes, body: object, nonce: bytes) -> bytes:
    """A hello box as a peer would seal it, whatever ``body`` holds."""
    plain = json.dumps(body).encode()
    return Box(PrivateKey(private), PublicKey(peer_public)).encrypt(plain, nonce).ciphertext


def test_batch_known_answer() -> None:
    frame = p.SendPacketBatch(bytes(range(32)), 3, b"abcdefgh")
    raw = bytes.fromhex("0c0000002a") + bytes(range(32)) + bytes.fromhex("0003") + b"abcdefgh"
    assert frame.pack() == raw
    assert p.unpack_frame(raw) == frame
    recv = p.RecvPacketBatch(bytes(range(32)), 3, b"abcdefgh")
    assert recv.pack() == b"\x0d" + raw[1:]
    assert p.split_batch(frame.data, frame.seg) == [b"abc", b"def", b"gh"]
    assert p.batch_segments(len(frame.data), frame.seg) == 3


def test_largest_batch_fits_the_largest_payload() -> None:
    raw = p.SendPacketBatch(bytes(32), 1, bytes(p.MAX_BATCH_SEGMENTS)).pack()
    assert p.unpack_frame(raw).pack() == raw
    big = p.RecvPacketBatch(bytes(32), 0xFFFF, bytes(p.MAX_BATCH_BYTES)).pack()
    assert len(big) == p.HEADER_LEN + p.MAX_PAYLOAD


@given(keys, st.integers(1, 0xFFFF), st.binary(min_size=1, max_size=4000))
def test_batch_parses_or_refuses_whatever_its_seg(key: bytes, seg: int, data: bytes) -> None:
    raw = p.HEADER.pack(p.RECV_PACKET_BATCH, 34 + len(data)) + key + p.SEG.pack(seg) + data
    try:
        frame = p.unpack_frame(raw)
    except ProtocolError:
        assert p.batch_segments(len(data), seg) > p.MAX_BATCH_SEGMENTS
        return
    assert isinstance(frame, p.RecvPacketBatch)
    assert b"".join(p.split_batch(frame.data, frame.seg)) == data
    assert all(len(d) == seg for d in p.split_batch(frame.data, frame.seg)[:-1])


@given(st.sampled_from([[], ["batch"], ["batch", "later"]]), st.booleans())
def test_hellos_carry_features(features: list[str], preferred: bool) -> None:
    node_private, node_public = keypair()
    server_private, server_public = keypair()
    challenge = bytes(24)
    hello = p.ClientHello(p.PROTOCOL_VERSION, preferred, challenge, frozenset(features))
    info = p.ClientInfo.create(node_private, server_public, hello, bytes(24))
    assert info.open(server_private, challenge) == hello
    server_hello = p.ServerHello(p.PROTOCOL_VERSION, 1, 2, frozenset(features))
    sinfo = p.ServerInfo.create(server_private, node_public, server_hello, bytes(24))
    assert sinfo.open(node_private, server_public) == server_hello


@pytest.mark.parametrize("features", ["batch", [1], {"batch": 1}])
def test_malformed_features_are_refused(features: object) -> None:
    server_private, server_public = keypair()
    node_private, node_public = keypair()
    body = {"version": p.PROTOCOL_VERSION, "rate_bytes_per_s": 1, "burst_bytes": 1}
    sealed = _sealed_hello(server_private, node_public, {**body, "features": features}, bytes(24))
    with pytest.raises(ProtocolError, match="features"):
        p.ServerInfo(bytes(24), sealed).open(node_private, server_public)


def test_hello_of_an_older_peer_has_no_features() -> None:
    server_private, server_public = keypair()
    node_private, node_public = keypair()
    body = {"version": p.PROTOCOL_VERSION, "rate_bytes_per_s": 1, "burst_bytes": 1}
    sealed = _sealed_hello(server_private, node_public, body, bytes(24))
    assert p.ServerInfo(bytes(24), sealed).open(node_private, server_public).features == set()
