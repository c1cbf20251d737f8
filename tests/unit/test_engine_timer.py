"""The engine's one timer, under asyncio and under uvloop (weftd runs uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

from weftnet.node.engine import OneTimer

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("factory", LOOPS.values(), ids=list(LOOPS))
def test_rearm_with_a_zero_delay_then_a_later_one(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    # Regression: uvloop returns a plain Handle for call_later(0, ...), and re-arming
    # asked it for when(): AttributeError under load.
    fired: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timer = OneTimer(lambda: fired.append(loop.time()))
        timer.arm(loop, 0.0)
        timer.arm(loop, 0.0)  # already armed sooner or as soon: kept
        timer.arm(loop, 5.0)
        await asyncio.sleep(0.05)
        assert len(fired) == 1
        timer.arm(loop, 5.0)
        timer.arm(loop, 0.01)  # sooner: replaces the 5 s one
        await asyncio.sleep(0.1)
        assert len(fired) == 2
        timer.cancel()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())
