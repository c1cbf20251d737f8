"""Every parser either parses or raises ProtocolError; pack(unpack(x)) == x."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from weftlab.fakes import SeededEntropy
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    CookieReply,
    Initiation,
    Response,
    TransportHeader,
)

CODECS = [
    (Initiation, INITIATION_SIZE, 1),
    (Response, RESPONSE_SIZE, 2),
    (CookieReply, COOKIE_REPLY_SIZE, 3),
]


def _well_formed(size: int, kind: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size - 4, max_size=size - 4).map(
        lambda body: bytes((kind, 0, 0, 0)) + body
    )


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    for codec, _, _ in CODECS:
        try:
            msg = codec.unpack(data)
        except ProtocolError:
            continue
        assert msg.pack() == data
    with contextlib.suppress(ProtocolError):
        TransportHeader.unpack(data)


@given(st.data())
def test_round_trip_of_well_formed_messages(data: st.DataObject) -> None:
    for codec, size, kind in CODECS:
        raw = data.draw(_well_formed(size, kind))
        assert codec.unpack(raw).pack() == raw


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=64))
def test_transport_header_round_trip(receiver: int, counter: int, rest: bytes) -> None:
    raw = TransportHeader(receiver, counter).pack() + rest
    h = TransportHeader.unpack(raw)
    assert (h.receiver, h.counter) == (receiver, counter)


_device = Device(crypto.generate_private_key(SeededEntropy("fuzz")), SeededEntropy("fuzz2"))
_device.add_peer(crypto.public_key(crypto.generate_private_key(SeededEntropy("p"))), ["10.0.0.0/8"])


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=200),
        _well_formed(INITIATION_SIZE, 1),
        _well_formed(RESPONSE_SIZE, 2),
        _well_formed(COOKIE_REPLY_SIZE, 3),
    )
)
def test_device_handshake_input_never_crashes(data: bytes) -> None:
    before = (dict(_device.indices), [p.handshake.state for p in _device.peers.values()])
    try:
        out = _device.receive_handshake(data, ("198.18.0.9", 1234), 1000.0)
    except ProtocolError:
        out = []
    assert out == []  # random bytes never carry a valid mac1
    assert before == (dict(_device.indices), [p.handshake.state for p in _device.peers.values()])
