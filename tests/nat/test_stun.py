"""STUN codec: RFC 5769 known answers, round trips, demultiplexing, fuzz."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet import stun
from weftnet.stun import Attribute, Message, StunErrorResponse
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# RFC 5769 (Test Vectors for STUN), sections 2.1-2.3, as printed there. Their padding
# after SOFTWARE and USERNAME is 0x20 on purpose. Short-term password for all three:
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TXID = _hex("b7e7a701bc34d686fa87dfae")
RFC5769_REQUEST = _hex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)
RFC5769_IPV4_RESPONSE = _hex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_IPV6_RESPONSE = _hex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "00200014"
    "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)


def test_rfc5769_sample_request() -> None:
    assert stun.is_stun(RFC5769_REQUEST)
    assert stun.parse_request(RFC5769_REQUEST) == RFC5769_TXID  # FINGERPRINT checked
    assert stun.message_integrity_ok(RFC5769_REQUEST, RFC5769_PASSWORD)
    assert not stun.message_integrity_ok(RFC5769_REQUEST, b"wrong password")
    msg = Message.unpack(RFC5769_REQUEST)
    assert msg.get(stun.ATTR_SOFTWARE) == b"STUN test client"
    assert msg.get(stun.ATTR_USERNAME) == b"evtj:h6vY"
    with pytest.raises(ProtocolError, match="not a STUN Binding response"):
        stun.parse_response(RFC5769_REQUEST)


def test_rfc5769_ipv4_response() -> None:
    assert stun.parse_response(RFC5769_IPV4_RESPONSE) == (RFC5769_TXID, ("192.0.2.1", 32853))
    assert stun.message_integrity_ok(RFC5769_IPV4_RESPONSE, RFC5769_PASSWORD)
    assert Message.unpack(RFC5769_IPV4_RESPONSE).get(stun.ATTR_SOFTWARE) == b"test vector"


def test_rfc5769_ipv6_response() -> None:
    txid, mapped = stun.parse_response(RFC5769_IPV6_RESPONSE)
    assert (txid, mapped) == (RFC5769_TXID, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
    assert stun.message_integrity_ok(RFC5769_IPV6_RESPONSE, RFC5769_PASSWORD)


def test_rfc5769_xor_mapped_address_encoding() -> None:
    """Our server side writes the same XOR-MAPPED-ADDRESS bytes as the RFC's vectors."""
    for vector, mapped in (
        (RFC5769_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (RFC5769_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ):
        ours = Message.unpack(stun.binding_response(RFC5769_TXID, mapped))
        theirs = Message.unpack(vector)
        assert ours.get(stun.ATTR_XOR_MAPPED_ADDRESS) == theirs.get(stun.ATTR_XOR_MAPPED_ADDRESS)


@pytest.mark.parametrize("vector", [RFC5769_REQUEST, RFC5769_IPV4_RESPONSE, RFC5769_IPV6_RESPONSE])
def test_any_flipped_bit_before_the_fingerprint_is_caught(vector: bytes) -> None:
    # Flip a bit inside SOFTWARE's value: framing stays valid, only the CRC can tell.
    corrupt = bytearray(vector)
    corrupt[25] ^= 0x01
    with pytest.raises(ProtocolError, match="FINGERPRINT"):
        Message.unpack(bytes(corrupt))


def test_binding_request_layout() -> None:
    txid = bytes(range(12))
    req = stun.binding_request(txid)
    assert req[:20] == _hex("000100082112a442") + txid  # header; length = FINGERPRINT only
    assert req[20:24] == _hex("80280004")
    assert len(req) == 28
    assert stun.parse_request(req) == txid
    with_software = stun.binding_request(txid, software="weftnet 0.1")
    msg = Message.unpack(with_software)
    assert msg.get(stun.ATTR_SOFTWARE) == b"weftnet 0.1"
    assert [a.type for a in msg.attributes] == [stun.ATTR_SOFTWARE, stun.ATTR_FINGERPRINT]
    assert len(with_software) % 4 == 0


def test_request_and_response_round_trip() -> None:
    txid = b"\x01" * 12
    for mapped in (("198.18.0.7", 41641), ("2001:db8::1", 3478), ("0.0.0.0", 0)):
        assert stun.parse_request(stun.binding_request(txid, "x")) == txid
        assert stun.parse_response(stun.binding_response(txid, mapped)) == (txid, mapped)


def test_ipv4_mapped_ipv6_address_comes_back_as_ipv4() -> None:
    txid = b"\x02" * 12
    resp = stun.binding_response(txid, ("::ffff:198.18.0.9", 9))
    assert stun.parse_response(resp) == (txid, ("198.18.0.9", 9))


def test_mapped_address_fallback_without_fingerprint() -> None:
    txid = b"\x03" * 12
    value = bytes((0, 1)) + (5000).to_bytes(2, "big") + bytes((198, 18, 1, 2))
    resp = Message(
        stun.BINDING_SUCCESS_RESPONSE, txid, (Attribute(stun.ATTR_MAPPED_ADDRESS, value),)
    ).pack()
    assert stun.parse_response(resp) == (txid, ("198.18.1.2", 5000))


def test_xor_mapped_address_wins_over_mapped_address() -> None:
    txid = b"\x04" * 12
    plain = bytes((0, 1)) + (1).to_bytes(2, "big") + bytes(4)
    xor = Message.unpack(stun.binding_response(txid, ("198.18.3.4", 77))).get(
        stun.ATTR_XOR_MAPPED_ADDRESS
    )
    assert xor is not None
    resp = Message(
        stun.BINDING_SUCCESS_RESPONSE,
        txid,
        (Attribute(stun.ATTR_MAPPED_ADDRESS, plain), Attribute(stun.ATTR_XOR_MAPPED_ADDRESS, xor)),
    ).pack(fingerprint=True)
    assert stun.parse_response(resp) == (txid, ("198.18.3.4", 77))


def test_error_response_is_a_protocol_error_with_code_and_reason() -> None:
    txid = b"\x05" * 12
    resp = stun.binding_error_response(txid, 400, "Bad Request")
    with pytest.raises(StunErrorResponse) as info:
        stun.parse_response(resp)
    assert (info.value.txid, info.value.code, info.value.reason) == (txid, 400, "Bad Request")
    assert isinstance(info.value, ProtocolError)


def test_response_without_an_address_is_refused() -> None:
    resp = Message(stun.BINDING_SUCCESS_RESPONSE, b"\x06" * 12).pack(fingerprint=True)
    with pytest.raises(ProtocolError, match="MAPPED-ADDRESS"):
        stun.parse_response(resp)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:19],  # shorter than a header
        lambda b: b"\x40" + b[1:],  # top bits set
        lambda b: b[:4] + b"\x21\x12\xa4\x43" + b[8:],  # wrong cookie
        lambda b: b + b"\x00\x00\x00\x00",  # length field does not cover the datagram
        lambda b: b[:-1],  # truncated fingerprint
    ],
)
def test_malformed_messages_are_refused(mutate: Callable[[bytes], bytes]) -> None:
    good = stun.binding_response(b"\x07" * 12, ("198.18.0.1", 1))
    with pytest.raises(ProtocolError):
        stun.parse_response(mutate(good))


def test_fingerprint_must_be_last() -> None:
    txid = b"\x08" * 12
    fp_first = Message(
        stun.BINDING_REQUEST,
        txid,
        (Attribute(stun.ATTR_FINGERPRINT, bytes(4)), Attribute(stun.ATTR_SOFTWARE, b"x")),
    ).pack()
    with pytest.raises(ProtocolError, match="last"):
        Message.unpack(fp_first)


def test_attributes_after_message_integrity_are_ignored() -> None:
    txid = b"\x09" * 12
    late = Message.unpack(stun.binding_response(txid, ("198.18.0.2", 2))).get(
        stun.ATTR_XOR_MAPPED_ADDRESS
    )
    assert late is not None
    msg = Message(
        stun.BINDING_SUCCESS_RESPONSE,
        txid,
        (
            Attribute(stun.ATTR_MESSAGE_INTEGRITY, bytes(20)),
            Attribute(stun.ATTR_XOR_MAPPED_ADDRESS, late),
        ),
    ).pack(fingerprint=True)
    with pytest.raises(ProtocolError, match="MAPPED-ADDRESS"):
        stun.parse_response(msg)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ProtocolError):
        stun.binding_request(b"short")
    with pytest.raises(ProtocolError):
        stun.binding_request(bytes(12), software="x" * 800)
    with pytest.raises(ProtocolError):
        stun.binding_response(bytes(12), ("not-an-ip", 1))
    with pytest.raises(ProtocolError):
        stun.binding_response(bytes(12), ("198.18.0.1", 70000))
    with pytest.raises(ProtocolError):
        stun.binding_error_response(bytes(12), 200, "OK")


def test_is_stun_tells_stun_from_wireguard_and_disco() -> None:
    assert stun.is_stun(stun.binding_request(bytes(12)))
    assert stun.is_stun(RFC5769_IPV6_RESPONSE)
    cookie_le = struct.pack("<I", 0x42A41221)  # an index whose bytes spell the cookie
    assert cookie_le == b"\x21\x12\xa4\x42"
    for kind, size in (
        (1, INITIATION_SIZE),
        (2, RESPONSE_SIZE),
        (3, COOKIE_REPLY_SIZE),
        (4, TRANSPORT_MIN_SIZE),
        (4, 1420),
    ):
        wg = bytes((kind, 0, 0, 0)) + cookie_le + bytes(size - 8)
        assert not stun.is_stun(wg), (kind, size)
    assert not stun.is_stun(b"WE\xf0\x9f\xa7\xb5" + bytes(100))
    assert not stun.is_stun(b"")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for parse in (stun.parse_request, stun.parse_response):
        with contextlib.suppress(ProtocolError):
            parse(data)
    try:
        msg = Message.unpack(data)
    except ProtocolError:
        return
    assert Message.unpack(msg.pack()) == msg


_attr = st.builds(
    Attribute,
    st.integers(0, 0xFFFF).filter(lambda t: t != stun.ATTR_FINGERPRINT),
    st.binary(max_size=40),
)


@given(
    st.integers(0, 0x3FFF),
    st.binary(min_size=12, max_size=12),
    st.lists(_attr, max_size=6),
    st.booleans(),
)
def test_packed_messages_round_trip(
    kind: int, txid: bytes, attrs: list[Attribute], fingerprint: bool
) -> None:
    raw = Message(kind, txid, tuple(attrs)).pack(fingerprint=fingerprint)
    assert stun.is_stun(raw)
    msg = Message.unpack(raw)
    assert msg.pack() == raw
    assert msg.attributes[: len(attrs)] == tuple(attrs)


@given(st.binary(min_size=12, max_size=12), st.ip_addresses(), st.integers(0, 0xFFFF))
def test_any_address_round_trips(
    txid: bytes, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    canonical = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    got = stun.parse_response(stun.binding_response(txid, (str(ip), port)))
    assert got == (txid, (str(canonical), port))


@given(st.binary(min_size=12, max_size=12), st.integers(0, 1000), st.integers(1, 255))
def test_corrupted_responses_never_crash(txid: bytes, where: int, flip: int) -> None:
    raw = bytearray(stun.binding_response(txid, ("2001:db8::5", 5)))
    raw[where % len(raw)] ^= flip
    with contextlib.suppress(ProtocolError):
        stun.parse_response(bytes(raw))
