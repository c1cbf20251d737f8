"""TAI64N timestamps, as carried encrypted in a handshake initiation.

Theory of operation (WireGuard whitepaper sections 5.1 and 5.4.2; the format is
https://cr.yp.to/libtai/tai64.html):

A timestamp is 12 bytes: 8 bytes big-endian seconds labelled TAI64 (2**62 + 10 plus the
Unix time, the 10 being the TAI-UTC offset of 1972; like every WireGuard implementation we
ignore later leap seconds), then 4 bytes big-endian nanoseconds. Big-endian fields make
"later" the same as "bytewise greater", so a responder compares the raw bytes to refuse an
initiation that is not newer than the last one it accepted from that peer (replay
protection, whitepaper section 5.1).

Before encoding, the nanoseconds are rounded down to a multiple of 2**24 ns (about 16.8
ms): the kernel's tai64n_now() and wireguard-go's tai64n.Now() do this so a timestamp does
not leak the sender's precise clock. 2**24 ns is the largest power of two below the 20 ms
between initiations that the rate limit allows (50 a second) anyway.

The wall-clock time is an argument: this module reads no clock.
"""

from __future__ import annotations

from weftnet.wireguard.errors import ProtocolError

__all__ = ["TAI64N_LEN", "decode", "encode", "is_after"]

TAI64N_LEN = 12  # 8 bytes of seconds + 4 bytes of nanoseconds
TAI64_BASE = 0x400000000000000A  # TAI64 label of Unix time 0: 2**62 + 10 s TAI-UTC offset
WHITENER_MASK = (1 << 24) - 1  # nanosecond bits cleared: 2**24 ns granularity, ~16.8 ms
NS_PER_S = 1_000_000_000  # nanoseconds in a second
_U64_LIMIT = 1 << 64  # the seconds field is an unsigned 64-bit integer


def encode(unix_time_ns: int) -> bytes:
    """The whitened TAI64N timestamp of a Unix wall-clock time in nanoseconds.

    Pass ``time.time_ns()`` (wall clock, not monotonic: the peer compares it across
    restarts of this host).
    """
    seconds, nanoseconds = divmod(unix_time_ns, NS_PER_S)
    label = TAI64_BASE + seconds
    if not 0 <= label < _U64_LIMIT:
        raise ValueError(f"time {unix_time_ns} ns is outside the TAI64 range")
    nanoseconds &= ~WHITENER_MASK
    return label.to_bytes(8, "big") + nanoseconds.to_bytes(4, "big")


def decode(timestamp: bytes) -> int:
    """The Unix time in nanoseconds of a TAI64N timestamp (for logs and tests)."""
    _check_len(timestamp)
    label = int.from_bytes(timestamp[:8], "big")
    nanoseconds = int.from_bytes(timestamp[8:], "big")
    if nanoseconds >= NS_PER_S:
        raise ProtocolError("TAI64N nanoseconds field is 1e9 or more")
    return (label - TAI64_BASE) * NS_PER_S + nanoseconds


def is_after(a: bytes, b: bytes) -> bool:
    """True if timestamp ``a`` is strictly later than ``b`` (raw byte comparison).

    Like the kernel and wireguard-go, this compares bytes without validating fields, so
    any 12-byte value a peer encrypted counts; only the length is checked.
    """
    _check_len(a)
    _check_len(b)
    return a > b


def _check_len(timestamp: bytes) -> None:
    if len(timestamp) != TAI64N_LEN:
        raise ProtocolError(f"TAI64N timestamp must be {TAI64N_LEN} bytes, got {len(timestamp)}")
