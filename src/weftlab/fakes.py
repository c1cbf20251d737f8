"""Deterministic stand-ins for the clock and the entropy source, for tests."""

from __future__ import annotations

import hashlib


class SeededEntropy:
    """A reproducible byte stream: SHA-256 in counter mode over a seed."""

    def __init__(self, seed: bytes | str = b"weftnet") -> None:
        self._seed = seed.encode() if isinstance(seed, str) else seed
        self._counter = 0
        self._buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
