"""The node state machine: transitions, and waiting for the NEXT change (defect D4)."""

from __future__ import annotations

import asyncio

from weftnet.node.backend import Backend, State


def test_restored_states() -> None:
    b = Backend()
    b.restored(registered=False, want_running=True, have_map=True)
    assert b.state is State.NeedsLogin
    b.restored(registered=True, want_running=False, have_map=True)
    assert b.state is State.Stopped
    b.restored(registered=True, want_running=True, have_map=False)
    assert b.state is State.Starting
    b.restored(registered=True, want_running=True, have_map=True)
    assert b.state is State.Running


def test_login_then_map_then_down_then_up() -> None:
    b = Backend()
    b.login_offered("http://control/a/1")
    assert b.state is State.NeedsLogin and b.auth_url == "http://control/a/1"
    b.login_approved()
    assert b.state is State.Starting and b.auth_url is None
    b.map_applied(self_expired=False)
    assert b.state is State.Running
    b.stopped()
    b.map_applied(self_expired=False)  # a late frame does not undo `weft down`
    assert b.state is State.Stopped
    b.starting()
    b.map_applied(self_expired=False)
    assert b.state is State.Running


def test_an_expired_self_is_a_logout_with_a_reason() -> None:
    b = Backend()
    b.login_approved()
    b.map_applied(self_expired=True)
    assert b.state is State.NeedsLogin and "expired" in (b.error or "")


def test_wait_change_waits_for_the_next_change_not_an_old_one() -> None:
    async def scenario() -> tuple[State, State]:
        b = Backend()
        b.login_approved()
        b.map_applied(self_expired=False)  # Running long ago
        b.stopped()
        b.starting()
        since = b.generation
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, b.map_applied, False)
        first = await b.wait_change(since, timeout_s=5)
        # Nothing changes any more: the wait ends at the timeout with the state as it is.
        again = await b.wait_change(b.generation, timeout_s=0.05)
        return first, again

    first, again = asyncio.run(scenario())
    assert first is State.Running and again is State.Running


def test_a_map_saying_not_authorized_waits_for_the_machine_auth() -> None:
    b = Backend()
    b.login_approved()
    b.map_applied(self_expired=False, authorized=False)
    assert b.state is State.NeedsMachineAuth
    b.map_applied(self_expired=False, authorized=True)
    assert b.state is State.Running
