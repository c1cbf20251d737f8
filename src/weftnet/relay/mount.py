"""Serving the relay on the coordination server's own port, inside uvicorn.

Theory of operation: ASGI gives an application no socket, and uvicorn upgrades a
connection only to WebSocket (its h11 protocol calls ``_should_upgrade()`` and, if true,
``handle_websocket_upgrade()``, which hands the transport to another asyncio protocol;
any other Upgrade is served as plain HTTP). uvicorn made ``_should_upgrade`` the place
for finer upgrade decisions (encode/uvicorn PR #1661), so this module subclasses the h11
protocol: a ``GET`` of the relay path with ``Upgrade: weft-relay`` is taken out of uvicorn
(it no longer counts the connection), answered ``101``, and given to
``RelayServer.handle`` through a StreamReader/StreamWriter pair on the same transport.
Every other request, WebSocket included, goes on to the ASGI app as before.

Use: ``uvicorn.Config(app, http=uvicorn_protocol(relay))``, and ``await relay.close()``
in the app's lifespan shutdown (uvicorn no longer tracks relay connections).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from weftnet.relay.server import RelayServer
from weftnet.relay.upgrade import RELAY_PATH, SWITCHING_PROTOCOLS, UPGRADE_TOKEN


def uvicorn_protocol(relay: RelayServer, path: str = RELAY_PATH) -> type[H11Protocol]:
    """An uvicorn ``http=`` protocol class that also enters ``relay`` on ``path``."""

    tasks: set[asyncio.Task[None]] = set()

    class RelayH11Protocol(H11Protocol):
        def _is_relay_upgrade(self) -> bool:
            return (
                self.scope.get("method") == "GET"
                and self.scope.get("path") == path
                and self._get_upgrade() == UPGRADE_TOKEN.encode()
            )

        def _should_upgrade(self) -> bool:
            return self._is_relay_upgrade() or super()._should_upgrade()

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            if not self._is_relay_upgrade():
                super().handle_websocket_upgrade(event)
                return
            self.connections.discard(self)  # from now on the relay owns the connection
            transport: Any = self.transport
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
            leftover, _ = self.conn.trailing_data  # bytes the client sent after the head
            if leftover:
                protocol.data_received(bytes(leftover))
            transport.write(SWITCHING_PROTOCOLS)
            if self.flow.read_paused:  # uvicorn's flow control paused a big request body
                self.flow.resume_reading()
            task = self.loop.create_task(relay.handle(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return RelayH11Protocol
