"""The map hub on its own, with a fake service and a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from typing import Any

import pytest

from weftlab.fakes import FakeClock
from weftnet.control.domain.records import Node
from weftnet.control.server.hub import Hub, StreamClosed
from weftnet.control.service import Settings, Snapshot

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0


def node(node_id: int, **fields: Any) -> Node:
    base = Node(
        id=node_id,
        machine_key=f"mkey:{node_id}",
        node_key=f"nodekey:{node_id}",
        user_id=None,
        tags=(),
        hostname="h",
        given_name=f"h{node_id}",
        ipv4=f"100.64.0.{node_id}",
        ipv6=f"fd7a:115c:a1e0::{node_id}",
        ephemeral=False,
        created_at=NOW,
        key_expiry=None,
        authorized_at=NOW,
    )
    return dataclasses.replace(base, **fields)


class FakeService:
    def __init__(self) -> None:
        self.settings = Settings()
        self.nodes: dict[int, Node] = {}
        self.deleted: list[int] = []
        self.gate: threading.Event | None = None  # when set, snapshot() waits for it
        self.read = threading.Event()  # set once a snapshot has read the nodes
        self.purges: list[float] = []  # the times purge_expired_logins was called with

    def snapshot(self) -> Snapshot:
        nodes = dict(self.nodes)  # read first, like a transaction's snapshot
        self.read.set()
        if self.gate is not None:
            self.gate.wait(5)
        return Snapshot(nodes=nodes, users={})

    def node_disconnected(self, node_id: int, now: float) -> None:
        pass

    def delete_ephemeral(self, node_id: int) -> bool:
        self.deleted.append(node_id)
        self.nodes.pop(node_id, None)
        return True

    def purge_expired_logins(self, now: float) -> int:
        self.purges.append(now)
        return 0


async def _until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_expired_pending_logins_are_purged_at_start_and_then_periodically() -> None:
    clock = FakeClock(NOW)
    service = FakeService()
    hub = Hub(service, tick_s=0.01, purge_every_s=300, clock=clock)  # type: ignore[arg-type]
    await hub.start()
    try:
        await _until(lambda: service.purges == [NOW], "the first purge")
        clock.advance(299)
        await asyncio.sleep(0.1)
        assert service.purges == [NOW]  # ten ticks later, not yet due
        clock.advance(1)
        await _until(lambda: service.purges == [NOW, NOW + 300], "the second purge")
        clock.advance(-3600)  # the wall clock stepped back: purge again, do not wait an hour
        await _until(lambda: len(service.purges) == 3, "a purge after the clock stepped back")
    finally:
        await hub.stop()


async def test_a_new_stream_never_gets_a_map_read_before_it_started() -> None:
    service = FakeService()
    service.nodes[1] = node(1)
    service.gate = threading.Event()
    hub = Hub(service, tick_s=0.01)  # type: ignore[arg-type]
    await hub.start()  # the first rebuild reads a snapshot without node 2, then waits
    try:
        assert await asyncio.to_thread(service.read.wait, 5)
        service.nodes[2] = node(2)  # registered meanwhile
        sub = hub.connect(2)
        service.gate.set()  # the stale rebuild finishes; a fresh one follows
        netmap = await sub.next(5)
        assert netmap is not None and netmap.view_for(2) is not None
        assert 2 in netmap.online
    finally:
        await hub.stop()
    with pytest.raises(StreamClosed):
        await sub.next(1)


async def test_ephemeral_nodes_are_deleted_after_the_grace_period() -> None:
    clock = FakeClock(NOW)
    service = FakeService()
    service.nodes[1] = node(1, ephemeral=True)
    service.nodes[2] = node(2)
    hub = Hub(service, ephemeral_grace_s=10, tick_s=0.01, clock=clock)  # type: ignore[arg-type]
    await hub.start()
    try:
        sub = hub.connect(1)
        assert await sub.next(5) is not None
        hub.disconnect(sub)
        clock.advance(9.9)
        await asyncio.sleep(0.1)
        assert service.deleted == []  # ten ticks later, still there
        again = hub.connect(1)  # back within the grace period: kept
        clock.advance(20)
        await asyncio.sleep(0.1)
        assert service.deleted == []
        hub.disconnect(again)
        clock.advance(10.1)
        deadline = asyncio.get_running_loop().time() + 5
        while service.deleted != [1]:
            assert asyncio.get_running_loop().time() < deadline, service.deleted
            await asyncio.sleep(0.01)
    finally:
        await hub.stop()


async def test_a_key_reaching_its_expiry_time_triggers_a_rebuild() -> None:
    clock = FakeClock(NOW)
    service = FakeService()
    service.nodes[1] = node(1)
    service.nodes[2] = node(2, key_expiry=NOW + 60)
    hub = Hub(service, tick_s=0.01, clock=clock)  # type: ignore[arg-type]
    await hub.start()
    try:
        sub = hub.connect(1)
        first = await sub.next(5)
        assert first is not None and first.view_for(1) is not None
        assert 2 in first.view_for(1).peers  # type: ignore[union-attr]
        clock.advance(61)
        later = await sub.next(5)
        assert later is not None and 2 not in later.view_for(1).peers  # type: ignore[union-attr]
    finally:
        await hub.stop()


async def test_policy_schedules_follow_the_injected_clock_and_a_step_back_rebuilds() -> None:
    clock, policy_clock = FakeClock(NOW), FakeClock(NOW + 1000)
    service = FakeService()
    service.nodes[1] = node(1)
    hub = Hub(service, tick_s=0.01, clock=clock, policy_clock=policy_clock)  # type: ignore[arg-type]
    await hub.start()
    try:
        sub = hub.connect(1)
        first = await sub.next(5)
        assert first is not None and first.now == NOW and first.policy_now == NOW + 1000
        # Nothing changed and no edge is due: no rebuild.
        assert await sub.next(0.2) is None
        # The wall clock steps back a day (NTP, or a lab test): the schedules are judged
        # again at the new time, with no other change to trigger it.
        policy_clock.now = NOW - 86400
        # The stream is not woken (what node 1 sees did not change): the hub rebuilt.
        later = await hub.netmap_since(hub.generation)
        deadline_at = asyncio.get_running_loop().time() + 5
        while later is not None and later.policy_now != NOW - 86400:
            assert asyncio.get_running_loop().time() < deadline_at, "no rebuild after the step"
            await asyncio.sleep(0.01)
            later = hub.current
        assert later is not None and later.policy_now == NOW - 86400 and later.now == NOW
    finally:
        await hub.stop()


def test_the_lab_file_clock_moves_only_when_the_test_says(tmp_path: Any) -> None:
    import time

    from weftlab.control_clock import FileClock, set_clock

    path = tmp_path / "policy-clock"
    clock = FileClock(path)
    assert abs(clock() - time.time()) < 5  # no file: the real clock
    set_clock(path, NOW)
    assert abs(clock() - NOW) < 5
    set_clock(path, NOW + 86400)
    assert abs(clock() - (NOW + 86400)) < 5


async def test_a_database_away_when_a_stream_ends_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """last_seen cannot be written (the database is gone): a warning, no traceback."""
    service = FakeService()
    service.nodes[1] = node(1)
    written = threading.Event()

    def node_disconnected(node_id: int, now: float) -> None:
        written.set()
        raise OSError("connection to server failed: password=hunter2 refused")

    service.node_disconnected = node_disconnected  # type: ignore[method-assign]
    hub = Hub(service, tick_s=0.01)  # type: ignore[arg-type]
    await hub.start()
    try:
        with caplog.at_level(logging.WARNING, logger="weftnet.control.server.hub"):
            sub = hub.connect(1)
            assert await sub.next(5) is not None
            hub.disconnect(sub)
            await _until(lambda: any("went offline" in r.getMessage() for r in caplog.records),
                         "the warning")  # fmt: skip
        assert written.is_set()
        [record] = [r for r in caplog.records if "went offline" in r.getMessage()]
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert "hunter2" not in record.getMessage()
    finally:
        await hub.stop()


async def test_stop_ends_a_companion_that_took_its_first_cancellation_for_something_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that lost its cancellation (Python 3.11's wait_for did, as a replica's
    heartbeat woke: weft-control's shutdown hung) is cancelled again until it ends."""
    swallowed = asyncio.Event()

    async def companion() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # as if the cancel had been lost: go on waiting
        await asyncio.sleep(3600)

    stubborn_tasks: list[asyncio.Task[Any] | None] = []
    release = asyncio.Event()

    async def stubborn() -> None:  # ignores cancellation until released
        stubborn_tasks.append(asyncio.current_task())
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    hub = Hub(FakeService(), tick_s=0.01)  # type: ignore[arg-type]
    hub.run_alongside(companion)
    await hub.start()
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    await hub.stop()
    assert swallowed.is_set()
    assert asyncio.get_running_loop().time() - started < 2  # the second cancel ended it

    hub = Hub(FakeService(), tick_s=0.01)  # type: ignore[arg-type]
    hub.run_alongside(stubborn)
    monkey = pytest.MonkeyPatch()
    monkey.setattr("weftnet.control.server.hub.STOP_S", 0.3)
    try:
        await hub.start()
        await asyncio.sleep(0.05)  # the companion runs (a task cancelled before it starts ends)
        with caplog.at_level(logging.WARNING, logger="weftnet.control.server.hub"):
            await hub.stop()  # gives up after STOP_S instead of hanging
    finally:
        monkey.undo()
        release.set()
    assert "did not stop within 0.3 s" in caplog.text
    [task] = stubborn_tasks
    assert task is not None
    await asyncio.wait_for(task, 1)
