"""A cap on the connections one source address holds open (security audit M5).

Theory of operation: uvicorn's ``limit_concurrency`` caps connections in all, so one
client could take all of them (and its file descriptors). ``per_address_protocol``
wraps the server's asyncio protocol class: ``connection_made`` counts the connection
against its peer's IP address in an ``AddressCounts`` shared by every connection of the
server, and closes it at once (before a byte is read) when that address already holds
``limit``; ``connection_lost`` gives the slot back. The cost is one dict look-up per
connection.

A connection handed to another protocol keeps its slot until it closes: the embedded
relay (``relay.mount``) and a WebSocket upgrade call ``transport.set_protocol``, after
which the HTTP protocol hears nothing more of the connection. The hand-off is seen in
``handle_websocket_upgrade`` and the new protocol is wrapped in ``_ReleaseWhenLost``,
which passes every event on and releases the slot when the transport reports the
connection lost. Each connection releases through one ``_Slot``, which releases once,
whichever path sees the end first.

Clients behind one NAT address share the limit; loopback is counted like any other
address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("weftnet.control")

DEFAULT_PER_ADDRESS = 256  # open connections (map streams, relay links, requests) per IP


class AddressCounts:
    """Open connections per source address, and the cap on them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the per-address connection limit must be at least 1")
        self.limit = limit
        self._open: dict[str, int] = {}
        self._warned: set[str] = set()  # addresses at the cap, logged once until below it

    def acquire(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) at the cap."""
        count = self._open.get(address, 0)
        if count >= self.limit:
            if address not in self._warned:
                self._warned.add(address)
                log.warning(
                    "%s holds %d connections (the per-address limit): closing new ones",
                    address,
                    count,
                )
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
        if count < self.limit:
            self._warned.discard(address)

    def open_count(self, address: str | None = None) -> int:
        """Connections open from ``address`` (from every address if None)."""
        if address is None:
            return sum(self._open.values())
        return self._open.get(address, 0)


class _Slot:
    """One counted connection; ``release`` gives its slot back once, however often called."""

    __slots__ = ("_counts", "address")

    def __init__(self, counts: AddressCounts, address: str) -> None:
        self._counts: AddressCounts | None = counts
        self.address = address

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is not None:
            counts.release(self.address)


class _ReleaseWhenLost(asyncio.Protocol):
    """Stands between a transport and the protocol it was handed to; releases the
    connection's slot when the transport reports it lost."""

    def __init__(self, inner: asyncio.BaseProtocol, slot: _Slot) -> None:
        self.inner: Any = inner
        self._slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self._slot.release()


def peer_address(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None  # a unix socket, or a transport that does not say: not counted


def per_address_protocol(base: type[H11Protocol], counts: AddressCounts) -> type[H11Protocol]:
    """``base`` (an uvicorn h11 protocol class, or a subclass), but a connection from an
    address that already holds ``counts.limit`` connections is closed at once."""

    class PerAddressProtocol(base):  # type: ignore[valid-type,misc]
        _slot: _Slot | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            address = peer_address(transport)
            if address is None:
                return
            if counts.acquire(address):
                self._slot = _Slot(counts, address)
            else:
                transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                if self._slot is not None:
                    self._slot.release()

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            super().handle_websocket_upgrade(event)
            handed_to = self.transport.get_protocol()
            if self._slot is not None and handed_to is not self:
                # From now on only the new protocol hears of this connection.
                self.transport.set_protocol(_ReleaseWhenLost(handed_to, self._slot))

    return PerAddressProtocol
