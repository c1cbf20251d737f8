"""TAI64N encoding, whitening and ordering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.wireguard import tai64n
from weftnet.wireguard.errors import ProtocolError

MS = 1_000_000
S = 1_000_000_000

# 1970 .. 2500, in nanoseconds
_times = st.integers(min_value=0, max_value=530 * 365 * 86400 * S)


def test_unix_epoch() -> None:
    assert tai64n.encode(0) == bytes.fromhex("400000000000000a00000000")


def test_known_value_is_whitened() -> None:
    # 2020-01-01T00:00:00.123456789Z: 123456789 ns rounds down to 7 * 2**24 = 117440512 ns.
    ts = tai64n.encode(1_577_836_800 * S + 123_456_789)
    assert ts == bytes.fromhex("400000005e0be10a07000000")
    assert tai64n.decode(ts) == 1_577_836_800 * S + 117_440_512


# wireguard-go tai64n/tai64n_test.go TestMonotonic: whitening makes timestamps within
# 10 ms of a start of 123456789 ns equal, and 20 ms later strictly after.
@pytest.mark.parametrize(
    ("delta_ns", "want_after"),
    [(10, False), (10_000, False), (1 * MS, False), (10 * MS, False), (20 * MS, True)],
)
def test_wireguard_go_monotonic_cases(delta_ns: int, want_after: bool) -> None:
    start = 123_456_789
    assert tai64n.is_after(tai64n.encode(start + delta_ns), tai64n.encode(start)) is want_after


@given(_times)
def test_granularity_is_2_to_the_24_ns(t: int) -> None:
    decoded = tai64n.decode(tai64n.encode(t))
    assert (decoded % S) % (1 << 24) == 0
    assert 0 <= t - decoded < 1 << 24


@given(_times, _times)
def test_order_follows_time(a: int, b: int) -> None:
    ta, tb = tai64n.encode(a), tai64n.encode(b)
    if a <= b:
        assert not tai64n.is_after(ta, tb)
    if tai64n.is_after(ta, tb):
        assert a > b
    if a - b >= 1 << 24:
        assert tai64n.is_after(ta, tb)


@given(_times)
def test_nothing_is_after_itself(t: int) -> None:
    ts = tai64n.encode(t)
    assert not tai64n.is_after(ts, ts)


def test_times_before_1970_still_encode_in_order() -> None:
    assert tai64n.is_after(tai64n.encode(0), tai64n.encode(-S))


def test_out_of_range_time_is_refused() -> None:
    with pytest.raises(ValueError):
        tai64n.encode(2**64 * S)
    with pytest.raises(ValueError):
        tai64n.encode(-(2**63) * S)


@pytest.mark.parametrize("length", [0, 11, 13])
def test_wrong_length_is_a_protocol_error(length: int) -> None:
    good = tai64n.encode(0)
    with pytest.raises(ProtocolError):
        tai64n.is_after(bytes(length), good)
    with pytest.raises(ProtocolError):
        tai64n.is_after(good, bytes(length))
    with pytest.raises(ProtocolError):
        tai64n.decode(bytes(length))


def test_decode_refuses_nanoseconds_past_a_second() -> None:
    with pytest.raises(ProtocolError):
        tai64n.decode(bytes.fromhex("400000000000000a3b9aca00"))


@given(st.binary(min_size=12, max_size=12))
def test_decode_parses_or_raises_protocol_error(raw: bytes) -> None:
    if int.from_bytes(raw[8:], "big") < S:
        assert tai64n.decode(raw) // S == int.from_bytes(raw[:8], "big") - tai64n.TAI64_BASE
    else:
        with pytest.raises(ProtocolError):
            tai64n.decode(raw)
