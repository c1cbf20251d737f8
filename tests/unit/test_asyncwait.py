"""wait_within: a time limit that never loses the caller's cancellation (Python 3.11's
asyncio.wait_for does, when the awaited thing completes in the same loop iteration)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import pytest

from weftnet.asyncwait import wait_within

SRC = Path(__file__).resolve().parents[2] / "src"


async def _value() -> int:
    await asyncio.sleep(0)
    return 7


def test_returns_the_value_or_times_out() -> None:
    async def main() -> None:
        assert await wait_within(_value(), 1) == 7
        assert await wait_within(_value(), None) == 7
        with pytest.raises(TimeoutError):
            await wait_within(asyncio.sleep(10), 0.01)

    asyncio.run(main())


def test_a_cancel_that_lands_with_the_wake_up_stops_the_loop() -> None:
    """The heartbeat loop of weft-control's replicas, cancelled at shutdown just as it was
    woken: 200 tries, each must end."""

    async def heartbeat(wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_within(wake.wait(), 5)
            wake.clear()

    async def main() -> int:
        lost = 0
        for _ in range(200):
            wake = asyncio.Event()
            task = asyncio.create_task(heartbeat(wake))
            await asyncio.sleep(0)
            wake.set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1)
            if not done:
                lost += 1
                task.cancel()
                await asyncio.wait({task}, timeout=1)
        return lost

    assert asyncio.run(main()) == 0


def test_no_asyncio_wait_for_in_the_code() -> None:
    uses = [
        f"{p.relative_to(SRC)}:{n}"
        for p in SRC.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"asyncio\.wait_for\(", line)
        and not line.lstrip().startswith("#")
        and p.name != "asyncwait.py"
    ]
    assert not uses, f"use weftnet.asyncwait.wait_within instead of asyncio.wait_for: {uses}"
