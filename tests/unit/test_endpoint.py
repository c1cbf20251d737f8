"""The one Endpoint type: parse, format and canonical form, and the low-order key check."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.endpoint import (
    Endpoint,
    canonical,
    format_endpoint,
    is_usable_peer_address,
    parse_endpoint,
    try_parse_endpoint,
)
from weftnet.wireguard.crypto import generate_private_key, is_low_order, public_key


def test_ipv6_endpoints_print_with_brackets_and_parse_back():
    ep = parse_endpoint("[fd00:0::1]:41641")
    assert ep == Endpoint("fd00::1", 41641)
    assert str(ep) == "[fd00::1]:41641" == format_endpoint(("fd00::1", 41641))
    assert str(parse_endpoint("198.18.0.1:7")) == "198.18.0.1:7"


def test_ipv4_mapped_and_zoned_addresses_are_canonical():
    assert canonical(("::ffff:198.18.0.1", 5, 0, 0)) == Endpoint("198.18.0.1", 5)
    assert canonical(("fe80::1%eth0", 5)) == Endpoint("fe80::1", 5)


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3.4", "1.2.3.4:", "1.2.3.4:x", "1.2.3.4:70000", "fd00::1:5", "[1.2.3.4]:5",
     "host.example:5", "[fd00::1]", ":5", "1.2.3.4:-1"],
)  # fmt: skip
def test_malformed_endpoints_are_refused(text):
    with pytest.raises(ValueError):
        parse_endpoint(text)
    assert try_parse_endpoint(text) is None


@given(st.ip_addresses(), st.integers(0, 0xFFFF))
def test_format_then_parse_is_the_identity(ip, port):
    ep = canonical((str(ip), port))
    assert parse_endpoint(str(ep)) == ep


@given(st.text(max_size=60))
def test_parse_endpoint_raises_only_value_error(text):
    try:
        ep = parse_endpoint(text)
    except ValueError:
        return
    ipaddress.ip_address(ep.host)


@pytest.mark.parametrize(
    ("text", "usable"),
    [("198.18.0.1:41641", True), ("[fd00::1]:1", True), ("127.0.0.1:41641", False),
     ("[::1]:41641", False), ("224.0.0.1:41641", False), ("0.0.0.0:41641", False),
     ("[ff02::1]:41641", False), ("169.254.1.1:41641", False), ("198.18.0.1:0", False)],
)  # fmt: skip
def test_usable_peer_addresses(text, usable):
    assert is_usable_peer_address(parse_endpoint(text)) is usable


def test_low_order_keys_are_recognised():
    # All-zero, one, and the order-8 point from RFC 7748 / libsodium's blocklist.
    bad = [
        bytes(32),
        bytes([1]) + bytes(31),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ]
    for key in bad:
        assert is_low_order(key)
    assert is_low_order(b"short")
    good = public_key(generate_private_key(lambda n: bytes(range(n))))
    assert not is_low_order(good)
