"""Per-client limits of the relay, as pure state machines driven by ``now``.

Theory of operation: ``TokenBucket`` holds up to ``burst`` tokens (bytes) and gains
``rate`` tokens per second; a packet passes if the bucket holds its size, which is then
taken out, else it is dropped and the bucket is unchanged (so one oversized packet does
not lock a client out). ``NoticeThrottle`` answers "may I tell this client about key K
now?" at most once per ``interval_s`` per key, remembering at most ``max_keys`` keys, so a
client sending to an absent peer gets a few PEER_GONE notices, not one per packet.

Both take ``now`` (monotonic seconds) as an argument and read no clock, so tests step
time by hand (weftlab.fakes.FakeClock).
"""

from __future__ import annotations


class TokenBucket:
    """A byte budget: ``rate_per_s`` sustained, ``burst`` at once."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (time never runs backwards here)."""
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
        return self._tokens

    def take(self, n: int, now: float) -> bool:
        """Take ``n`` tokens if there are that many; False (and nothing taken) if not."""
        if self.tokens(now) < n:
            return False
        self._tokens -= n
        return True


class NoticeThrottle:
    """At most one notice per key per ``interval_s``."""

    __slots__ = ("_last", "interval_s", "max_keys")

    def __init__(self, interval_s: float, max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[bytes, float] = {}

    def __len__(self) -> int:
        """How many keys it remembers now (at most ``max_keys``)."""
        return len(self._last)

    def allow(self, key: bytes, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        if last is None and len(self._last) >= self.max_keys:
            # Forget the keys whose interval is over; if all are recent, forget them all:
            # at worst a flooding client gets one more notice per key.
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            if len(self._last) >= self.max_keys:
                self._last.clear()
        self._last[key] = now
        return True
