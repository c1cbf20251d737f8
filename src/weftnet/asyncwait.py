"""Waiting with a time limit, without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives in the same
loop iteration as the awaited thing completes (CPython gh-86296, fixed in 3.12): the
caller's ``task.cancel()`` is lost and a loop meant to stop runs on. weft-control's
shutdown hung on exactly that (its replica heartbeat woke as the hub cancelled it), so
every timed wait goes through ``wait_within``, built on ``asyncio.timeout``, which
tells its own timeout from a cancellation of the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_within(aw: Awaitable[T], timeout_s: float | None) -> T:
    """``await aw``, or TimeoutError after ``timeout_s`` (None: no limit)."""
    async with asyncio.timeout(timeout_s):
        return await aw
