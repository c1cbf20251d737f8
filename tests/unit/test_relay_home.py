"""A node's home relay region is the one with the lowest measured latency."""

from __future__ import annotations

import asyncio

from weftnet.magicsock.conn import Relays


class StubClient:
    def __init__(self, latency: float | None) -> None:
        self.latency = latency
        self.preferred: bool | None = None
        self.sent: list[tuple[bytes, bytes]] = []

    async def wait_connected(self, timeout: float) -> bool:
        return self.latency is not None

    async def ping(self, timeout: float = 5.0) -> float:
        assert self.latency is not None
        return self.latency

    def note_preferred(self, preferred: bool) -> None:
        self.preferred = preferred

    def send(self, dst: bytes, data: bytes) -> bool:
        self.sent.append((dst, data))
        return True


def relays(**latencies: float | None) -> Relays:
    r = Relays(bytes(32), on_packet=None)
    r.clients = {name: StubClient(lat) for name, lat in latencies.items()}  # type: ignore[misc]
    r.home = next(iter(r.clients))
    return r


def test_lowest_latency_region_becomes_home_and_preferred() -> None:
    r = relays(default=0.030, eu=0.004, down=None)
    assert asyncio.run(r.measure()) == "eu"
    assert r.latency == {"default": 0.030, "eu": 0.004}  # the unreachable one is left out
    prefs = {n: c.preferred for n, c in r.clients.items()}  # type: ignore[attr-defined]
    assert prefs == {"default": False, "eu": True, "down": False}


def test_packets_go_to_the_peers_region_else_to_home() -> None:
    r = relays(default=0.03, eu=0.004)
    asyncio.run(r.measure())
    r.send("default", b"k" * 32, b"x")
    r.send("nowhere", b"k" * 32, b"y")
    r.send(None, b"k" * 32, b"z")
    assert [d for _, d in r.clients["default"].sent] == [b"x"]  # type: ignore[attr-defined]
    assert [d for _, d in r.clients["eu"].sent] == [b"y", b"z"]  # type: ignore[attr-defined]
