"""netmon: a burst of netlink events re-lists the local endpoints once."""

from __future__ import annotations

import asyncio

from weftnet.endpoint import Endpoint
from weftnet.node.netmon import Debounced

EPS = [Endpoint("198.18.0.2", 41641)]


def test_a_burst_of_events_is_one_change() -> None:
    seen: list[list[Endpoint]] = []

    async def scenario() -> None:
        async def listing() -> list[Endpoint]:
            return EPS

        d = Debounced(listing, seen.append)
        for _ in range(5):
            d.event()
        await asyncio.sleep(0.3)
        d.event()
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert seen == [EPS, EPS]


def test_a_failing_listing_is_logged_not_raised() -> None:
    seen: list[list[Endpoint]] = []

    async def scenario() -> None:
        async def broken() -> list[Endpoint]:
            raise OSError("netlink is gone")

        d = Debounced(broken, seen.append)
        d.event()
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert seen == []
