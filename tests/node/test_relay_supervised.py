"""A relay client's connection loop runs under weftd's supervisor: an error nobody
foresaw is logged with its traceback and the loop comes back (D1 for relay clients)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from weftnet.node.supervisor import Supervisor
from weftnet.relay.client import RelayClient


class BrokenOnce(RelayClient):
    """A client whose first connection attempt fails with an error the loop does not
    expect; later attempts go on as usual (to a port where nobody listens)."""

    attempts = 0

    async def _session(self) -> None:
        type(self).attempts += 1
        if type(self).attempts == 1:
            raise RuntimeError("a bug in the relay client")
        await super()._session()


def test_an_unexpected_error_restarts_the_relay_loop_under_the_supervisor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[list[str], int]:
        sup = Supervisor(first_delay_s=0.05)
        client = BrokenOnce(
            "http://127.0.0.1:9", bytes(range(1, 33)), lambda src, data: None,
            backoff_initial_s=0.05, backoff_max_s=0.1,
        )  # fmt: skip
        client.start(sup.spawn, "relay default")
        deadline = time.monotonic() + 2
        while BrokenOnce.attempts < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        health = sup.health()
        await client.close()
        await asyncio.sleep(0.05)
        running = sup.is_running("relay default")
        await sup.close()
        return health, int(running)

    with caplog.at_level(logging.INFO):
        health, running = asyncio.run(scenario())
    assert BrokenOnce.attempts >= 2  # restarted, within 2 s
    assert health == [
        "task relay default restarting after error RuntimeError: a bug in the relay client"
    ]
    assert any(
        r.exc_info and "a bug in the relay client" in str(r.exc_info[1]) for r in caplog.records
    )
    assert running == 0  # close() ends the supervised loop for good
