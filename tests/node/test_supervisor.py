"""The supervisor: failures are logged with their traceback and restarted (defect D1)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from weftnet.node.supervisor import Supervisor


def test_a_failing_task_is_logged_with_its_traceback_and_restarted_within_2_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    starts: list[float] = []

    async def scenario() -> Supervisor:
        sup = Supervisor()  # the real backoff: the first restart comes in 0.25 s
        done = asyncio.Event()

        async def flaky() -> None:
            starts.append(time.monotonic())
            if len(starts) == 1:
                raise ValueError("bad frame")
            done.set()
            await asyncio.sleep(3600)

        sup.spawn("map", flaky)
        await asyncio.wait_for(done.wait(), 2)
        assert sup.tasks["map"].running and sup.tasks["map"].restarts == 1
        assert sup.health() == ["task map restarting after error ValueError: bad frame"]
        await sup.close()
        return sup

    with caplog.at_level(logging.INFO, logger="weftd.supervisor"):
        sup = asyncio.run(scenario())
    assert starts[1] - starts[0] < 2.0
    print(f"restarted {starts[1] - starts[0]:.3f} s after the failure")
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "task map failed: ValueError: bad frame" in failed[0].message
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is ValueError
    assert sup.tasks == {}


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() -> None:
    async def scenario() -> list[float]:
        sup = Supervisor(first_delay_s=0.01, max_delay_s=0.04, healthy_after_s=0.2)
        starts: list[float] = []
        finished = asyncio.Event()

        async def task() -> None:
            starts.append(time.monotonic())
            if len(starts) == 6:
                await asyncio.sleep(0.25)  # a healthy run, then a failure
            if len(starts) == 8:
                finished.set()
                return
            raise RuntimeError("again")

        sup.spawn("t", task)
        await asyncio.wait_for(finished.wait(), 5)
        return [b - a for a, b in itertools.pairwise(starts)]

    gaps = asyncio.run(scenario())
    assert gaps[0] < gaps[1] < gaps[2]  # 0.01, 0.02, 0.04
    assert gaps[3] == pytest.approx(gaps[4], abs=0.02)  # capped at 0.04
    assert gaps[6] < 0.03  # after the healthy run: back to the first delay


def test_a_task_that_returns_is_done_and_stop_cancels() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        sup = Supervisor()
        cancelled = asyncio.Event()

        async def once() -> None:
            return

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        sup.spawn("once", once)
        sup.spawn("forever", forever)
        await asyncio.sleep(0.05)
        once_running = sup.is_running("once")
        await sup.stop("forever")
        return once_running, sup.is_running("forever"), cancelled.is_set()

    assert asyncio.run(scenario()) == (False, False, True)


def test_an_injected_fault_fails_the_task_where_it_waits_and_it_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[int, int, float]:
        sup = Supervisor()
        starts: list[float] = []
        again = asyncio.Event()

        async def loop() -> None:
            starts.append(time.monotonic())
            if len(starts) == 2:
                again.set()
            await asyncio.sleep(3600)

        sup.spawn("paths", loop)
        await asyncio.sleep(0.05)
        assert sup.inject_fault("paths") and not sup.inject_fault("nonesuch")
        t0 = time.monotonic()
        await asyncio.wait_for(again.wait(), 2)
        took = time.monotonic() - t0
        restarts = sup.tasks["paths"].restarts
        await sup.close()
        return len(starts), restarts, took

    with caplog.at_level(logging.INFO, logger="weftd.supervisor"):
        starts, restarts, took = asyncio.run(scenario())
    assert starts == 2 and restarts == 1 and took < 2.0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "InjectedFault: fault injected into task paths" in errors[0].message
