"""Helpers for relay tests: run a coroutine with a deadline, poll for a condition."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from nacl.public import PrivateKey

from weftnet.relay.protocol import ClientHello, ClientInfo, Frame, FrameDecoder, ServerKey
from weftnet.relay.upgrade import build_request, check_response

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run ``coro`` in a fresh event loop; fail the test if it takes over ``timeout`` s."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def until(
    condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> float:
    """Poll ``condition`` until true; seconds it took. AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.01)
    return loop.time() - start


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (private, public) pair."""
    private = PrivateKey(os.urandom(32))
    return bytes(private), bytes(private.public_key)


def allow_all() -> Callable[[bytes], Awaitable[bool]]:
    async def admit(key: bytes) -> bool:
        return True

    return admit


class Inbox:
    """An ``on_packet`` callback that records (src, packet) pairs."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, bytes]] = []

    def __call__(self, src: bytes, packet: bytes) -> None:
        self.packets.append((src, packet))

    def payloads(self) -> list[bytes]:
        return [packet for _, packet in self.packets]


class RawConn:
    """A hand-driven relay connection, for behaving badly on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[Frame] = []
        self.server_key = b""
        self.challenge = b""
        self.sent_info = b""  # the CLIENT_INFO frame handshake() sent, as on the wire

    @classmethod
    async def open(cls, port: int, rcvbuf: int | None = None) -> RawConn:
        """Connect to 127.0.0.1:port and do the HTTP upgrade; the next frame is SERVER_KEY."""
        sock = None
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(build_request(f"127.0.0.1:{port}"))
        check_response(await reader.readuntil(b"\r\n\r\n"))
        return cls(reader, writer)

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("relay closed the connection")
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    async def handshake(self, node_private: bytes, claim: bytes | None = None) -> Frame:
        """Read SERVER_KEY, send CLIENT_INFO (claiming ``claim`` if given); the answer."""
        first = await self.next_frame()
        assert isinstance(first, ServerKey)
        self.server_key, self.challenge = first.key, first.challenge
        info = ClientInfo.create(
            node_private, first.key, ClientHello(2, False, first.challenge), os.urandom(24)
        )
        if claim is not None:
            info = ClientInfo(claim, info.nonce, info.sealed)
        self.sent_info = info.pack()
        self.writer.write(self.sent_info)
        return await self.next_frame()

    async def replay(self, captured: bytes) -> Frame:
        """Read SERVER_KEY, send ``captured`` bytes as they are; the answer."""
        first = await self.next_frame()
        assert isinstance(first, ServerKey)
        self.server_key, self.challenge = first.key, first.challenge
        self.writer.write(captured)
        return await self.next_frame()

    async def frames_until_eof(self, timeout: float = 5.0) -> list[Frame]:
        """Every frame until the relay closes the connection."""
        out: list[Frame] = []
        try:
            while True:
                out.append(await self.next_frame(timeout))
        except (EOFError, ConnectionError):
            return out

    def close(self) -> None:
        self.writer.transport.abort()
