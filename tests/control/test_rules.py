"""The pure pieces of the server: addresses, names, durations, key formats."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftlab.fakes import SeededEntropy
from weftnet.control.domain import credentials, ipam, names
from weftnet.control.server.app import parse_listen


def test_first_addresses_pair_v4_and_v6() -> None:
    assert ipam.addresses(ipam.allocate(set())) == ("100.64.0.1", "fd7a:115c:a1e0::1")
    assert ipam.addresses(300) == ("100.64.1.44", "fd7a:115c:a1e0::12c")
    assert ipam.host_number("100.64.1.44") == 300


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.0",
        "100.64.0.255",
        "100.64.1.0",
        "100.100.100.100",
        "100.100.100.1",
        "100.127.255.255",
    ],
)
def test_reserved_addresses_are_never_handed_out(address: str) -> None:
    assert not ipam.usable(ipam.host_number(address))


def test_allocation_takes_the_lowest_free_usable_number() -> None:
    assert ipam.allocate({1, 2, 4}) == 3
    assert ipam.allocate(set(range(1, 255))) == 257  # .255 and x.1.0 skipped
    n = ipam.host_number("100.100.99.254")
    assert ipam.addresses(ipam.allocate(set(range(1, n + 1))))[0] == "100.100.101.1"


def test_every_address_stays_inside_its_range() -> None:
    for n in (1, 2**16 + 1, ipam.MAX_HOST - 1):
        v4, v6 = ipam.addresses(n)
        assert ipaddress.ip_address(v4) in ipam.IPV4_RANGE
        assert ipaddress.ip_address(v6) in ipam.IPV6_RANGE
    assert not ipam.usable(0) and not ipam.usable(ipam.MAX_HOST + 1)


@pytest.mark.parametrize(
    ("hostname", "label"),
    [
        ("My Laptop", "my-laptop"),
        ("db_01.example.com", "db-01-example-com"),
        ("--x--", "x"),
        ("", "node"),
        ("ÄÖÜ", "node"),
        ("a" * 80, "a" * 63),
    ],
)
def test_dns_label(hostname: str, label: str) -> None:
    assert names.dns_label(hostname) == label


def test_given_names_get_a_suffix_on_collision() -> None:
    taken: set[str] = set()
    for _ in range(3):
        taken.add(names.unique_given_name("laptop", taken.__contains__))
    assert taken == {"laptop", "laptop-1", "laptop-2"}
    long = "b" * 63
    assert names.unique_given_name(long, {long}.__contains__) == "b" * 61 + "-1"


@pytest.mark.parametrize("bad", ["", "-a", "a-", "A", "a.b", "a" * 64])
def test_invalid_given_names(bad: str) -> None:
    with pytest.raises(ValueError):
        names.check_given_name(bad)


def test_durations() -> None:
    assert names.parse_duration("90d") == 90 * 86400
    assert names.parse_duration("1h30m") == 5400
    assert names.parse_duration("2w") == 14 * 86400
    for bad in ("", "0s", "10", "1y", "h1", "1h 30m"):
        with pytest.raises(ValueError):
            names.parse_duration(bad)
    assert names.format_duration(1800) == "30m"


def test_tags_and_user_names() -> None:
    assert names.check_tags(["tag:b", "tag:a", "tag:a"]) == ("tag:a", "tag:b")
    for bad in (["a"], ["tag:"], ["tag:A"], ["tag:a b"]):
        with pytest.raises(ValueError):
            names.check_tags(bad)
    assert names.check_user_name("alice@example.com") == "alice@example.com"
    for bad_name in ("", "a b", "a/b", "@x.com", "a@", "a@b"):
        with pytest.raises(ValueError):
            names.check_user_name(bad_name)


def test_key_text_and_hash() -> None:
    text, prefix = credentials.new_key("weftkey", SeededEntropy("k"))
    kind, got_prefix, secret = text.split("-")
    assert (kind, got_prefix) == ("weftkey", prefix) and len(prefix) == 12 and len(secret) == 48
    assert credentials.key_prefix("weftkey", text) == prefix
    assert credentials.key_matches(text, credentials.key_hash(text))
    assert not credentials.key_matches(text[:-1] + "0", credentials.key_hash(text))
    for bad in ("weftapi-" + text[8:], "weftkey-xyz-abc", text[:40], ""):
        with pytest.raises(ValueError):
            credentials.key_prefix("weftkey", bad)


def test_login_codes() -> None:
    code = credentials.new_code(SeededEntropy("c"))
    assert credentials.code_from_url(f"http://h:8080/register/{code}") == code
    with pytest.raises(ValueError):
        credentials.code_from_url("http://h:8080/register/nope")


@given(st.text(max_size=120))
def test_text_parsers_answer_or_raise_value_error(text: str) -> None:
    for parse in (
        lambda t: credentials.key_prefix("weftkey", t),
        credentials.code_from_url,
        names.parse_duration,
        names.check_given_name,
        names.check_user_name,
        lambda t: names.check_tags([t]),
        parse_listen,
    ):
        with contextlib.suppress(ValueError):
            parse(text)
    label = names.dns_label(text)
    assert names.check_given_name(label) == label
