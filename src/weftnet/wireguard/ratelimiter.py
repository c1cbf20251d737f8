"""A per-source token bucket for handshake work (wireguard-go ratelimiter/, the kernel's
ratelimiter.c).

Theory of operation: under load (whitepaper section 5.3), a handshake message that
proves its source address with a valid mac2 is still expensive (Curve25519), so each
source may have only RATELIMIT_PACKETS_PER_S of them processed a second, with bursts of
RATELIMIT_BURST. A source is an IPv4 address or an IPv6 /64 (as in the kernel: one
host usually owns a whole /64). The device keeps a second limiter of its own for the
cookie replies it sends, so a flood never turns it into a reflector at line rate.

Each source has a bucket of tokens counted in nanoseconds of credit: a message costs
``1e9 / per_s`` and the bucket holds at most ``burst`` of them. Time adds credit. A
source not seen for a second has a full bucket again, which is what a new entry gets
(minus the message that creates it), so such entries are forgotten: entries are kept in
the order they were last used, and the stale ones at the front are dropped as new
sources arrive. The table never holds more than ``max_entries`` sources; a new source
that would need more is refused (the kernel's choice: under a spoofed flood from more
sources than that, handshakes wait rather than memory grows).

Pure: ``allow(source, now)`` takes monotonic seconds; no clock, no threads.
"""

from __future__ import annotations

from weftnet.wireguard.constants import (
    RATELIMIT_BURST,
    RATELIMIT_MAX_ENTRIES,
    RATELIMIT_PACKETS_PER_S,
)

NS_PER_S = 1_000_000_000
STALE_AFTER_NS = NS_PER_S  # an entry unused this long has a full bucket: forget it
IPV6_PREFIX_BYTES = 8  # IPv6 sources are limited per /64


class RateLimiter:
    """``allow(source, now)``: may one more message from ``source`` be processed?"""

    __slots__ = ("_cost_ns", "_entries", "_max_entries", "_max_tokens_ns")

    def __init__(
        self,
        per_s: int = RATELIMIT_PACKETS_PER_S,
        burst: int = RATELIMIT_BURST,
        max_entries: int = RATELIMIT_MAX_ENTRIES,
    ) -> None:
        if per_s <= 0 or burst <= 0 or max_entries <= 0:
            raise ValueError("a rate limiter needs a positive rate, burst and size")
        self._cost_ns = NS_PER_S // per_s
        self._max_tokens_ns = self._cost_ns * burst
        self._max_entries = max_entries
        # source -> [tokens_ns, last_ns]; dict order is least recently used first.
        self._entries: dict[bytes, list[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, source: bytes, now: float) -> bool:
        """``source``: a packed IP address (16-byte ones count per /64) or any other
        name of a source, such as a relay's. Takes one token if there is one."""
        if len(source) == 16:
            source = source[:IPV6_PREFIX_BYTES]
        now_ns = int(now * NS_PER_S)
        entries = self._entries
        entry = entries.pop(source, None)
        if entry is None:
            self._forget_stale(now_ns)
            if len(entries) >= self._max_entries:
                return False
            entries[source] = [self._max_tokens_ns - self._cost_ns, now_ns]
            return True
        entries[source] = entry  # now the most recently used
        tokens = entry[0] + now_ns - entry[1]
        entry[0] = tokens if tokens < self._max_tokens_ns else self._max_tokens_ns
        entry[1] = now_ns
        if entry[0] >= self._cost_ns:
            entry[0] -= self._cost_ns
            return True
        return False

    def _forget_stale(self, now_ns: int) -> None:
        """Drop entries unused for STALE_AFTER_NS, oldest first; they are full again."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if now_ns - entries[oldest][1] < STALE_AFTER_NS:
                return
            del entries[oldest]
