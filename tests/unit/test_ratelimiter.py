"""The per-source handshake rate limiter, case for case as wireguard-go's ratelimiter_test.go,
plus the table's bounds."""

from __future__ import annotations

import ipaddress

import pytest

from weftnet.wireguard.constants import RATELIMIT_BURST, RATELIMIT_PACKETS_PER_S
from weftnet.wireguard.ratelimiter import RateLimiter

COST_S = 1 / RATELIMIT_PACKETS_PER_S
SOURCES = [
    ipaddress.ip_address(a).packed
    for a in (
        "198.18.0.1",
        "198.18.1.1",
        "198.19.2.3",
        "2001:db8:a0b:12f0::1",
        "fd7a:115c:a1e0:1::1",
        "fd7a:115c:a1e0:2::1",
    )
]


def test_wireguard_go_sequence_for_every_source() -> None:
    # (wait before, allowed, what): ratelimiter_test.go's expectedResults.
    steps = [(0.0, True, "initial burst")] * RATELIMIT_BURST + [
        (0.0, False, "after burst"),
        (COST_S, True, "filling tokens for a single packet"),
        (0.0, False, "not having refilled enough"),
        (2 * COST_S, True, "filling tokens for a two-packet burst"),
        (0.0, True, "second packet of the two-packet burst"),
        (0.0, False, "packet after the two-packet burst"),
    ]
    limiter = RateLimiter()
    now = 1000.0
    for wait, allowed, what in steps:
        now += wait
        for source in SOURCES:
            assert limiter.allow(source, now) is allowed, (what, source)


def test_sustained_rate_is_per_s_plus_the_burst() -> None:
    limiter = RateLimiter()
    allowed = sum(limiter.allow(b"\xc6\x12\x00\x09", 1000.0 + i / 1000) for i in range(10_000))
    assert allowed == RATELIMIT_BURST + 10 * RATELIMIT_PACKETS_PER_S - 1  # 10 s at 1000/s


def test_ipv6_sources_share_their_64() -> None:
    limiter = RateLimiter(per_s=1, burst=1)
    a = ipaddress.ip_address("fd7a:115c:a1e0:5::1").packed
    b = ipaddress.ip_address("fd7a:115c:a1e0:5::2").packed
    other = ipaddress.ip_address("fd7a:115c:a1e0:6::1").packed
    assert limiter.allow(a, 10.0)
    assert not limiter.allow(b, 10.0)
    assert limiter.allow(other, 10.0)


def test_quiet_sources_are_forgotten_and_the_table_is_bounded() -> None:
    limiter = RateLimiter(max_entries=3)
    for i in range(3):
        assert limiter.allow(bytes([198, 18, 0, i]), 10.0)
    # A fourth source at once is refused rather than growing the table...
    assert not limiter.allow(b"\xc6\x12\x00\x63", 10.5)
    assert len(limiter) == 3
    # ...but once the others have been quiet for a second, they make room.
    assert limiter.allow(b"\xc6\x12\x00\x63", 11.0)
    assert len(limiter) == 1


def test_a_source_in_use_is_not_forgotten() -> None:
    limiter = RateLimiter(per_s=1, burst=2, max_entries=2)
    busy, quiet = b"\xc6\x12\x00\x01", b"\xc6\x12\x00\x02"
    assert limiter.allow(quiet, 10.0)
    assert limiter.allow(busy, 10.0) and limiter.allow(busy, 10.0)  # bucket now empty
    assert not limiter.allow(busy, 10.9)  # used again: now the most recent entry
    assert limiter.allow(b"\xc6\x12\x00\x03", 11.2)  # the quiet one makes room
    assert len(limiter) == 2
    # busy kept its bucket (1.2 s of credit: one message), a new entry would allow two.
    assert limiter.allow(busy, 11.2) and not limiter.allow(busy, 11.2)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(per_s=0)
