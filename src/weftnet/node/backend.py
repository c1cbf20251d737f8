"""The node's state (as Tailscale's ipn.State) and every transition between states.

    NeedsLogin  no accepted node key: `weft up --login-server URL [--auth-key K]`
    NeedsMachineAuth  logged in, but the device waits for an admin's approval (device
                approval): the map stream runs, with no peers until the approval
    Stopped     `weft down`: logged in, but no peers and no addresses
    Starting    logged in and wanting to run, waiting for a network map
    Running     a map is applied: addresses set, peers configured

Transitions (the only places the state changes):

    NeedsLogin --login_approved--> Starting --map_applied--> Running
    Starting/Running --map_applied(not authorized)--> NeedsMachineAuth
    NeedsMachineAuth --map_applied(authorized)--> Running
    any        --stopped---------> Stopped  (weft down)
    Stopped    --starting--------> Starting (weft up)
    Running    --map_applied(self expired)--> NeedsLogin
    any        --logged_out------> NeedsLogin (weft logout; the server says logged out or
                                               expired)
    NeedsLogin --login_offered---> NeedsLogin with an auth URL to visit

A caller that starts a transition and wants its outcome (``weft up``) takes
``generation`` and waits with ``wait_change(since)`` for the NEXT change, so a state
reached long ago (an earlier map, before `weft down`) never answers a new request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

log = logging.getLogger("weftd")


class State(enum.Enum):
    NeedsLogin = "NeedsLogin"
    NeedsMachineAuth = "NeedsMachineAuth"
    Stopped = "Stopped"
    Starting = "Starting"
    Running = "Running"


class Backend:
    def __init__(self) -> None:
        self.state = State.NeedsLogin
        self.error: str | None = None  # why we are not Running, in words
        self.auth_url: str | None = None  # an interactive login waiting for approval
        self.generation = 0  # bumped on every state change
        self._changed = asyncio.Event()

    # -- transitions ------------------------------------------------------------------

    def restored(self, registered: bool, want_running: bool, have_map: bool) -> None:
        """At start, from the saved prefs (and whether a cached map was applied)."""
        if not registered:
            self._set(State.NeedsLogin)
        elif not want_running:
            self._set(State.Stopped)
        else:
            self._set(State.Running if have_map else State.Starting)

    def login_offered(self, auth_url: str) -> None:
        self.auth_url = auth_url
        self._set(State.NeedsLogin)

    def login_approved(self) -> None:
        self.auth_url = None
        self.error = None
        self._set(State.Starting)

    def starting(self) -> None:
        """`weft up` while logged in: the map stream (re)starts."""
        self._set(State.Starting)

    def map_applied(self, self_expired: bool, authorized: bool = True) -> None:
        if self_expired:
            self.logged_out("this node's key has expired: run `weft up` to log in again")
        elif self.state in (State.Starting, State.Running, State.NeedsMachineAuth):
            self.error = None
            self._set(State.Running if authorized else State.NeedsMachineAuth)

    def stopped(self) -> None:
        self._set(State.Stopped)

    def logged_out(self, why: str | None = None) -> None:
        self.error = why
        self.auth_url = None
        self._set(State.NeedsLogin)

    def login_failed(self, why: str) -> None:
        self.error = why
        self._set(State.NeedsLogin)

    # -- waiting ----------------------------------------------------------------------

    async def wait_change(self, since: int, timeout_s: float) -> State:
        """The state after the first change past generation ``since`` (the current state
        if none came within ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.generation <= since:
                    await self._changed.wait()
        return self.state

    def _set(self, new: State) -> None:
        old = self.state
        self.state = new
        self.generation += 1
        if old is not new:
            log.info("state %s -> %s", old.value, new.value)
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
