"""Anonymous interactive logins: a cap per source address, and waiting followups.

Any client can start an interactive login (security audit M2): each one is a row in
``pending_registrations``. The service keeps one open login per machine key (a new one
replaces the old); this module caps the open logins per source address
(``per_source``, 20) and in all (``total``, 10,000), in memory, for the pending-login
lifetime. A login beyond the cap is refused before the database is touched.

A followup waits for its code (``LoginWaiters.approved`` is called when an admin
approves it), re-checking the database only every ``RECHECK_S`` in case another
server instance (one database) approved it, and never in more than ``RECHECKS``
worker threads at once (the admin API and the hub keep theirs).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio

DEFAULT_PER_SOURCE = 20
DEFAULT_TOTAL = 10_000
RECHECK_S = 5.0
RECHECKS = 4


class TooManyLogins(Exception):
    pass


class LoginLimiter:
    def __init__(
        self,
        ttl_s: float,
        per_source: int = DEFAULT_PER_SOURCE,
        total: int = DEFAULT_TOTAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.per_source = per_source
        self.total = total
        self.clock = clock
        # source -> machine key -> expiry (monotonic)
        self._open: dict[str, OrderedDict[str, float]] = {}
        self._count = 0

    def _prune(self, source: str, now: float) -> OrderedDict[str, float]:
        logins = self._open.get(source)
        if logins is None:
            return OrderedDict()
        for machine, expires in list(logins.items()):
            if expires <= now:
                del logins[machine]
                self._count -= 1
        if not logins:
            del self._open[source]
        return logins

    def reserve(self, source: str, machine_key: str) -> bool:
        """Count a login of ``machine_key`` from ``source`` (True if it was not counted
        yet: ``release`` it if no login was started); TooManyLogins beyond the caps."""
        self.check(source, machine_key)
        new = machine_key not in self._open.get(source, ())
        self.started(source, machine_key)
        return new

    def release(self, source: str, machine_key: str) -> None:
        logins = self._open.get(source)
        if logins is not None and logins.pop(machine_key, None) is not None:
            self._count -= 1
            if not logins:
                del self._open[source]

    def check(self, source: str, machine_key: str) -> None:
        """Raise TooManyLogins if ``source`` may not start a login for ``machine_key``."""
        now = self.clock()
        logins = self._prune(source, now)
        if machine_key in logins:
            return  # replaces its own open login
        if len(logins) >= self.per_source:
            raise TooManyLogins(
                f"too many logins waiting for approval from this address ({self.per_source}):"
                " approve them, or wait until they expire"
            )
        if self._count >= self.total:
            for other in list(self._open):
                self._prune(other, now)
            if self._count >= self.total:
                raise TooManyLogins("too many logins waiting for approval: try again later")

    def started(self, source: str, machine_key: str) -> None:
        logins = self._open.setdefault(source, OrderedDict())
        if machine_key not in logins:
            self._count += 1
        logins[machine_key] = self.clock() + self.ttl_s

    def open_count(self) -> int:
        return self._count


class LoginWaiters:
    """Followups waiting for their code to be approved."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}
        self.limiter = anyio.CapacityLimiter(RECHECKS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def close(self) -> None:
        """Wake every followup (shutdown; on the waiters' loop)."""
        self.closed = True
        for event in self._events.values():
            event.set()

    async def wait(self, code: str, timeout_s: float) -> None:
        """Until ``code`` is approved or ``timeout_s`` passes."""
        self._loop = asyncio.get_running_loop()
        if self.closed:
            return
        event = self._events.setdefault(code, asyncio.Event())
        self._waiting[code] = self._waiting.get(code, 0) + 1
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting[code] -= 1
            if not self._waiting[code]:
                del self._waiting[code]
                self._events.pop(code, None)

    def approved(self, code: str) -> None:
        """Wake the followups of ``code`` (or its login URL; any thread)."""
        code = code.strip().rstrip("/").rsplit("/", 1)[-1]
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(code)
        else:
            loop.call_soon_threadsafe(self._wake, code)

    def _wake(self, code: str) -> None:
        event = self._events.get(code)
        if event is not None:
            event.set()
