"""The standalone relay's admitted-key set: unknown keys are cached, and misses cannot
make the relay fetch the key list from the control server more than once per interval."""

from __future__ import annotations

import asyncio
import os
import time

from tests.relay.helpers import run
from weftlab.fakes import FakeClock
from weftnet.relay.standalone import NodeKeys


class KeyList:
    """A fake control server: the admitted keys, and how often they were fetched."""

    def __init__(self, *keys: bytes) -> None:
        self.keys = set(keys)
        self.fetches = 0

    async def __call__(self) -> frozenset[bytes]:
        self.fetches += 1
        await asyncio.sleep(0)
        return frozenset(self.keys)


def test_an_unknown_key_is_refused_from_the_cache_until_its_ttl_ends() -> None:
    async def scenario() -> None:
        clock, known, stranger = FakeClock(), os.urandom(32), os.urandom(32)
        server = KeyList(known)
        keys = NodeKeys(server, miss_interval_s=0, unknown_ttl_s=5, clock=clock)
        assert await keys.admit(known) and server.fetches == 1
        assert not await keys.admit(stranger) and server.fetches == 2
        for _ in range(100):
            assert not await keys.admit(stranger)
        assert server.fetches == 2 and keys.refused_cached == 100
        clock.advance(5)  # the entry has expired: one more fetch
        assert not await keys.admit(stranger) and server.fetches == 3
        # Registered meanwhile: a later fetch (the periodic one) admits it at once.
        server.keys.add(stranger)
        assert not await keys.admit(stranger) and server.fetches == 3
        await keys.refresh()
        assert await keys.admit(stranger) and server.fetches == 4 and keys.unknown == 0

    run(scenario())


def test_the_negative_cache_is_bounded_and_forgets_the_oldest() -> None:
    async def scenario() -> None:
        server = KeyList()
        keys = NodeKeys(server, miss_interval_s=0, max_unknown=3, clock=FakeClock())
        strangers = [os.urandom(32) for _ in range(5)]
        for key in strangers:
            assert not await keys.admit(key)
        assert keys.unknown == 3 and server.fetches == 5
        assert not await keys.admit(strangers[-1]) and server.fetches == 5  # cached
        assert not await keys.admit(strangers[0]) and server.fetches == 6  # forgotten

    run(scenario())


def test_a_new_key_per_connection_costs_at_most_one_fetch_per_interval() -> None:
    async def scenario() -> None:
        server, interval = KeyList(), 0.2
        keys = NodeKeys(server, miss_interval_s=interval)
        await keys.refresh()
        t0 = time.monotonic()
        # 50 connections at once, each with a key of its own: they share fetches.
        answers = await asyncio.gather(*(keys.admit(os.urandom(32)) for _ in range(50)))
        assert not any(answers) and server.fetches <= 1 + 2
        # And one after the other.
        for _ in range(10):
            assert not await keys.admit(os.urandom(32))
        elapsed = time.monotonic() - t0
        assert server.fetches <= 2 + elapsed / interval + 1
        assert elapsed >= (server.fetches - 2) * interval * 0.9

    run(scenario(), timeout=15)
