"""Disco codec: exact layouts, sealing and opening, refusals, demultiplexing, fuzz."""

from __future__ import annotations

import contextlib
import ipaddress

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftlab.fakes import SeededEntropy
from weftnet import disco, stun
from weftnet.disco import CallMeMaybe, Packet, Ping, Pong
from weftnet.wireguard.errors import ProtocolError

_rand = SeededEntropy("disco tests")
ALICE, BOB, MALLORY = _rand(32), _rand(32), _rand(32)
ALICE_PUB, BOB_PUB = disco.public_key(ALICE), disco.public_key(BOB)
TXID = bytes.fromhex("000102030405060708090a0b")
NODE_KEY = bytes(range(32, 64))
NONCE = bytes(range(24))


def test_magic_is_never_stun_or_wireguard() -> None:
    assert "WE\N{SPOOL OF THREAD}".encode() == disco.MAGIC
    assert len(disco.MAGIC) == 6
    assert disco.MAGIC[0] >= 0x40  # STUN needs the top two bits clear
    assert disco.MAGIC[0] not in (1, 2, 3, 4)  # WireGuard message types
    packet = disco.seal(Ping(TXID, NODE_KEY), ALICE, BOB_PUB, NONCE)
    assert disco.is_disco(packet) and not stun.is_stun(packet)
    assert not disco.is_disco(stun.binding_request(TXID))
    assert not disco.is_disco(bytes((1, 0, 0, 0)) + disco.MAGIC + bytes(138))
    assert not disco.is_disco(disco.MAGIC)  # too short to hold anything


def test_message_layouts() -> None:
    assert Ping(TXID, NODE_KEY).pack() == b"\x01\x00" + TXID + NODE_KEY
    assert Pong(TXID, ("198.18.0.1", 41641)).pack() == (
        b"\x02\x00" + TXID + bytes(10) + b"\xff\xff" + bytes((198, 18, 0, 1)) + b"\xa2\xa9"
    )
    v6 = ("2001:db8::1", 1)
    assert Pong(TXID, v6).pack()[-18:] == ipaddress.IPv6Address(v6[0]).packed + b"\x00\x01"
    assert CallMeMaybe(()).pack() == b"\x03\x00"
    cmm = CallMeMaybe((("198.18.0.1", 1), ("2001:db8::2", 2)))
    assert cmm.pack() == b"\x03\x00" + b"".join(disco.pack_endpoint(e) for e in cmm.endpoints)
    assert len(cmm.pack()) == 2 + 2 * disco.ENDPOINT_SIZE


def test_packet_layout_is_magic_key_nonce_and_a_nacl_box() -> None:
    message = Ping(TXID, NODE_KEY)
    packet = disco.seal(message, ALICE, BOB_PUB, NONCE)
    box = nacl.bindings.crypto_box(message.pack(), NONCE, BOB_PUB, ALICE)
    assert packet == disco.MAGIC + ALICE_PUB + NONCE + box
    assert len(packet) == disco.PACKET_HEADER_SIZE + 16 + 2 + 44


@pytest.mark.parametrize(
    "message",
    [
        Ping(TXID, NODE_KEY),
        Pong(TXID, ("198.18.7.7", 65535)),
        Pong(TXID, ("fd7a:115c:a1e0::1", 0)),
        CallMeMaybe(()),
        CallMeMaybe(tuple(("198.18.0.1", p) for p in range(disco.MAX_CALL_ME_MAYBE_ENDPOINTS))),
    ],
    ids=["ping", "pong4", "pong6", "cmm-empty", "cmm-full"],
)
def test_seal_then_open(message: disco.Message) -> None:
    raw = disco.seal(message, ALICE, BOB_PUB, NONCE)
    packet = Packet.unpack(raw)
    assert packet.sender == ALICE_PUB
    assert packet.pack() == raw
    assert disco.open_packet(packet, BOB) == message


def test_full_call_me_maybe_fits_the_ipv6_minimum_mtu() -> None:
    full = CallMeMaybe(tuple(("2001:db8::1", p) for p in range(disco.MAX_CALL_ME_MAYBE_ENDPOINTS)))
    assert len(disco.seal(full, ALICE, BOB_PUB, NONCE)) <= 1280 - 40 - 8
    too_many = CallMeMaybe((*full.endpoints, ("198.18.0.1", 1)))
    with pytest.raises(ProtocolError):
        too_many.pack()
    with pytest.raises(ProtocolError):
        CallMeMaybe.unpack(b"\x03\x00" + disco.pack_endpoint(("198.18.0.1", 1)) * 65)


def test_only_the_intended_receiver_can_open() -> None:
    packet = Packet.unpack(disco.seal(Ping(TXID, NODE_KEY), ALICE, BOB_PUB, NONCE))
    with pytest.raises(ProtocolError, match="does not open"):
        disco.open_packet(packet, MALLORY)


def test_a_forged_sender_key_does_not_open() -> None:
    packet = Packet.unpack(disco.seal(Ping(TXID, NODE_KEY), MALLORY, BOB_PUB, NONCE))
    forged = Packet(ALICE_PUB, packet.nonce, packet.box)
    with pytest.raises(ProtocolError):
        disco.open_packet(forged, BOB)


@pytest.mark.parametrize("flip", [0x01, 0x80])
def test_every_tampered_byte_is_caught(flip: int) -> None:
    raw = disco.seal(Pong(TXID, ("198.18.0.1", 1)), ALICE, BOB_PUB, NONCE)
    for i in range(len(disco.MAGIC), len(raw)):
        bad = bytearray(raw)
        bad[i] ^= flip
        with pytest.raises(ProtocolError):
            disco.open_packet(Packet.unpack(bytes(bad)), BOB)


def test_the_other_spelling_of_a_sender_key_is_refused() -> None:
    """X25519 ignores bit 255: the alias would open, so the frame refuses it."""
    raw = bytearray(disco.seal(Ping(TXID, NODE_KEY), ALICE, BOB_PUB, NONCE))
    raw[len(disco.MAGIC) + 31] |= 0x80
    with pytest.raises(ProtocolError, match="canonical"):
        Packet.unpack(bytes(raw))
    alias = Packet(bytes(raw[6:38]), NONCE, bytes(raw[62:]))
    with pytest.raises(ProtocolError, match="canonical"):
        alias.pack()


def test_low_order_sender_key_is_a_protocol_error() -> None:
    packet = Packet.unpack(disco.seal(Ping(TXID, NODE_KEY), ALICE, BOB_PUB, NONCE))
    with pytest.raises(ProtocolError):
        disco.open_packet(Packet(bytes(32), packet.nonce, packet.box), BOB)


@pytest.mark.parametrize(
    ("plaintext", "why"),
    [
        (b"", "empty"),
        (b"\x09\x00", "unknown disco message type"),
        (b"\x01\x01" + TXID + NODE_KEY, "version"),
        (b"\x01\x00" + TXID + NODE_KEY + b"\x00", "ping body"),
        (b"\x02\x00" + TXID + bytes(17), "pong body"),
        (b"\x03\x00" + bytes(19), "call-me-maybe"),
        (b"\x01", "not a disco ping"),
    ],
)
def test_malformed_messages_are_refused(plaintext: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        disco.unpack_message(plaintext)


def test_a_sealed_malformed_message_is_refused_after_opening() -> None:
    box = nacl.bindings.crypto_box(b"\x01\x00short", NONCE, BOB_PUB, ALICE)
    with pytest.raises(ProtocolError, match="ping body"):
        disco.open_packet(Packet(ALICE_PUB, NONCE, box), BOB)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ProtocolError):
        disco.seal(Ping(TXID, NODE_KEY), ALICE, BOB_PUB, bytes(23))
    with pytest.raises(ProtocolError):
        disco.seal(Ping(TXID[:11], NODE_KEY), ALICE, BOB_PUB, NONCE)
    with pytest.raises(ProtocolError):
        Pong(TXID, ("example.com", 1)).pack()
    with pytest.raises(ProtocolError):
        Pong(TXID, ("198.18.0.1", 65536)).pack()
    with pytest.raises(ProtocolError):
        disco.public_key(bytes(31))


def test_endpoints_are_canonical() -> None:
    assert disco.canonical_endpoint(("::ffff:198.18.0.1", 5)) == ("198.18.0.1", 5)
    assert disco.canonical_endpoint(("2001:DB8:0::1", 5)) == ("2001:db8::1", 5)
    assert disco.unpack_endpoint(disco.pack_endpoint(("::ffff:198.18.0.1", 5))) == (
        "198.18.0.1",
        5,
    )


@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(disco.MAGIC.__add__)))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        packet = Packet.unpack(data)
    except ProtocolError:
        assert not disco.is_disco(data) or data[len(disco.MAGIC) + 31] & 0x80
    else:
        assert packet.pack() == data
        with contextlib.suppress(ProtocolError):
            disco.open_packet(packet, BOB)
    try:
        message = disco.unpack_message(data)
    except ProtocolError:
        return
    assert message.pack() == data


@given(st.binary(max_size=200))
def test_arbitrary_boxes_from_a_known_sender_raise_protocol_error(box: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        disco.open_packet(Packet.unpack(disco.MAGIC + ALICE_PUB + NONCE + box), BOB)


@given(st.binary(max_size=100))
def test_arbitrary_plaintexts_sealed_by_a_peer_open_or_raise(plaintext: bytes) -> None:
    box = nacl.bindings.crypto_box(plaintext, NONCE, BOB_PUB, ALICE)
    try:
        message = disco.open_packet(Packet(ALICE_PUB, NONCE, box), BOB)
    except ProtocolError:
        return
    assert message.pack() == plaintext


_endpoint = st.tuples(st.ip_addresses().map(str), st.integers(0, 0xFFFF)).map(
    disco.canonical_endpoint
)
_message = st.one_of(
    st.builds(Ping, st.binary(min_size=12, max_size=12), st.binary(min_size=32, max_size=32)),
    st.builds(Pong, st.binary(min_size=12, max_size=12), _endpoint),
    st.builds(CallMeMaybe, st.lists(_endpoint, max_size=8).map(tuple)),
)


@given(_message, st.binary(min_size=24, max_size=24))
def test_any_message_round_trips_through_a_box(message: disco.Message, nonce: bytes) -> None:
    assert disco.unpack_message(message.pack()) == message
    assert disco.open_packet(Packet.unpack(disco.seal(message, BOB, ALICE_PUB, nonce)), ALICE) == (
        message
    )
