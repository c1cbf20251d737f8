"""Token bucket and notice throttle, stepped with a fake clock."""

from __future__ import annotations

import pytest

from weftlab.fakes import FakeClock
from weftnet.relay.limits import NoticeThrottle, TokenBucket


def test_bucket_starts_full_and_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1000, burst=3000, now=clock.now)
    assert bucket.take(3000, clock.now)
    assert not bucket.take(1, clock.now)
    clock.advance(0.5)
    assert bucket.tokens(clock.now) == pytest.approx(500)
    assert not bucket.take(600, clock.now)  # a refusal takes nothing
    assert bucket.take(500, clock.now)
    clock.advance(100)
    assert bucket.tokens(clock.now) == 3000  # capped at burst


def test_bucket_refuses_a_packet_larger_than_burst_without_locking_out() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=100, burst=1000, now=clock.now)
    assert not bucket.take(1001, clock.now)
    assert bucket.take(1000, clock.now)


def test_bucket_ignores_time_running_backwards() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=100, burst=100, now=clock.now)
    assert bucket.take(100, clock.now)
    assert bucket.tokens(clock.now - 50) == 0


def test_bucket_sustained_rate_over_many_steps() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10_000, burst=1_000, now=clock.now)
    passed = 0
    for _ in range(10_000):  # 10 s of offering 1 kB every millisecond (1 MB/s)
        clock.advance(0.001)
        passed += 1000 * bucket.take(1000, clock.now)
    assert passed == pytest.approx(1_000 + 10 * 10_000, rel=0.02)


def test_throttle_allows_one_notice_per_interval_per_key() -> None:
    clock = FakeClock()
    throttle = NoticeThrottle(interval_s=1.0)
    assert throttle.allow(b"a", clock.now)
    assert throttle.allow(b"b", clock.now)
    assert not throttle.allow(b"a", clock.advance(0.9))
    assert throttle.allow(b"a", clock.advance(0.1))


def test_throttle_memory_is_bounded() -> None:
    clock = FakeClock()
    throttle = NoticeThrottle(interval_s=1.0, max_keys=8)
    for i in range(100):
        throttle.allow(bytes([i]), clock.now)
        assert len(throttle) <= 8
