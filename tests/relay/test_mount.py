"""The relay inside uvicorn, on the same port as an ASGI app (the coordination server)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
import uvicorn
import uvloop
from fastapi import FastAPI

from tests.relay.helpers import Inbox, allow_all, keypair, until
from weftnet.relay.client import RelayClient
from weftnet.relay.mount import uvicorn_protocol
from weftnet.relay.server import RelayServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/relay")
    async def not_the_relay() -> dict[str, str]:
        return {"route": "app"}

    return app


async def _scenario() -> None:
    relay = RelayServer(keypair()[0], allow_all())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _app(), http=uvicorn_protocol(relay), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started, what="uvicorn started")
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/health")).json() == {"ok": True}
            assert (await http.post("/relay")).json() == {"route": "app"}
            assert (await http.get("/relay")).status_code in (404, 405)  # no upgrade: the app's

        a_in, b_in = Inbox(), Inbox()
        a_priv, a_key = keypair()
        b_priv, b_key = keypair()
        async with (
            RelayClient(base, a_priv, a_in, server_key=relay.public_key) as a,
            RelayClient(base, b_priv, b_in, server_key=relay.public_key) as b,
        ):
            assert await a.wait_connected(5) and await b.wait_connected(5), a.last_error
            for i in range(50):
                a.send(b_key, b"a%d" % i)
                b.send(a_key, b"b%d" % i)
            await until(lambda: len(a_in.packets) == len(b_in.packets) == 50)
            assert await a.ping() > 0
            assert {s.node_key for s in relay.clients()} == {a_key, b_key}
            async with httpx.AsyncClient(base_url=base) as http:  # HTTP still served meanwhile
                assert (await http.get("/health")).status_code == 200
            assert relay.disconnect(a_key)
            await until(lambda: not a.connected or a.connections > 1)
    finally:
        server.should_exit = True
        await relay.close()
        await asyncio.wait_for(serving, 10)


RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_relay_and_http_app_share_one_uvicorn_port(loop: str) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(30):
            await _scenario()

    RUNNERS[loop](bounded())
