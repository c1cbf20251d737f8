"""Every long-running task of weftd, supervised: a failure is logged, then restarted.

A task is a coroutine factory under a name ("map", "login", "netmon", "paths"). When
its coroutine raises, the traceback is logged (``log.exception``), the failure is kept
for `weft status` (Health), and a fresh coroutine starts after an exponential backoff:
``FIRST_DELAY_S``, doubling up to ``MAX_DELAY_S``; a run that stayed up
``HEALTHY_AFTER_S`` resets the backoff. A coroutine that returns has finished its job
(the login was approved, the node logged out): it is not restarted. Cancelling (stop,
close) ends it for good.

``inject_fault(name)`` raises ``InjectedFault`` inside the named task, at whatever await
it is blocked on, so tests can show a task coming back. It is reachable only from the
lab launcher (weftlab.faulty_weftd), never from the local API or the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("weftd.supervisor")

FIRST_DELAY_S = 0.25  # the first restart comes this soon: a one-off glitch costs little
MAX_DELAY_S = 15.0  # a task failing at once on every start retries this often at worst
HEALTHY_AFTER_S = 30.0  # a run this long counts as healthy: the next failure starts over

Factory = Callable[[], Awaitable[None]]


class InjectedFault(Exception):
    """Raised inside a task by ``Supervisor.inject_fault`` (tests only)."""


@dataclass
class TaskState:
    name: str
    running: bool = False
    restarts: int = 0
    last_error: str | None = None  # the last failure, as "ValueError: text"
    failed_at: float | None = None  # monotonic time of the last failure
    fault_pending: bool = False


class Supervisor:
    def __init__(
        self,
        first_delay_s: float = FIRST_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.healthy_after_s = healthy_after_s
        self.tasks: dict[str, TaskState] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._inner: dict[str, asyncio.Task[None]] = {}

    def spawn(self, name: str, factory: Factory) -> None:
        """Run ``factory()`` under ``name``, restarting it on failure. A task already
        running under that name is cancelled first."""
        old = self._running.pop(name, None)
        if old is not None:
            old.cancel()
        self.tasks[name] = TaskState(name)
        self._running[name] = asyncio.create_task(self._supervise(name, factory), name=name)

    def is_running(self, name: str) -> bool:
        task = self._running.get(name)
        return task is not None and not task.done()

    async def stop(self, name: str) -> None:
        """Cancel the task and wait for it to end."""
        task = self._running.pop(name, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.tasks.pop(name, None)

    async def close(self) -> None:
        for name in list(self._running):
            await self.stop(name)

    def inject_fault(self, name: str) -> bool:
        """Make the named task fail with InjectedFault where it now waits (tests only)."""
        inner = self._inner.get(name)
        st = self.tasks.get(name)
        if inner is None or inner.done() or st is None:
            return False
        st.fault_pending = True
        where = io.StringIO()
        inner.print_stack(file=where)
        log.warning("injecting a fault into task %s, now at:\n%s", name, where.getvalue())
        inner.cancel()
        return True

    def health(self, now: float | None = None) -> list[str]:
        """A line per task that failed within the last HEALTHY_AFTER_S."""
        now = time.monotonic() if now is None else now
        return [
            f"task {st.name} restarting after error {st.last_error}"
            for st in self.tasks.values()
            if st.failed_at is not None and now - st.failed_at < self.healthy_after_s
        ]

    async def _supervise(self, name: str, factory: Factory) -> None:
        st = self.tasks[name]
        delay = self.first_delay_s
        while True:
            started = time.monotonic()
            st.running = True
            inner = asyncio.ensure_future(factory())
            self._inner[name] = inner
            try:
                await asyncio.shield(inner)
                st.running = False
                log.debug("task %s finished", name)
                return
            except asyncio.CancelledError:
                if not inner.done():  # we are cancelled (stop, spawn again, shutdown)
                    inner.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await inner
                    st.running = False
                    raise
                if not st.fault_pending:
                    st.running = False
                    raise  # the coroutine cancelled itself: treat as ending
                st.fault_pending = False
                try:
                    raise InjectedFault(f"fault injected into task {name}") from None
                except InjectedFault as e:
                    self._failed(st, e)
            except Exception as e:
                st.fault_pending = False
                self._failed(st, e)
            finally:
                self._inner.pop(name, None)
            if time.monotonic() - started >= self.healthy_after_s:
                delay = self.first_delay_s
            log.info("task %s restarts in %.2f s", name, delay)
            await asyncio.sleep(delay)
            st.restarts += 1
            log.info("task %s restarted (restart %d)", name, st.restarts)
            delay = min(delay * 2, self.max_delay_s)

    @staticmethod
    def _failed(st: TaskState, e: BaseException) -> None:
        st.running = False
        st.failed_at = time.monotonic()
        st.last_error = f"{type(e).__name__}: {e}"
        log.exception("task %s failed: %s", st.name, st.last_error)
