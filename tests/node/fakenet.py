"""A stand-in for weftnet.node.userspace.net.UserspaceNet with the same interface: its
connections to tailnet addresses go to local asyncio servers (``serve``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class FakeNet:
    def __init__(self, send_packets: Callable[[list[bytes]], None] = lambda p: None,
                 **kw: Any) -> None:  # fmt: skip
        self.send_packets = send_packets
        self.addresses: list[Any] = []
        self.delivered: list[bytes] = []
        self.sent_udp: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.targets: dict[tuple[str, int], int] = {}  # tailnet ip:port -> local port
        self.tcp_handler: Any = None
        self.udp_handler: Any = None
        self.accept_hook: Any = None
        self.refused_udp: list[tuple[tuple[str, int], tuple[str, int]]] = []
        self.opened: list[tuple[str, int]] = []
        self.started = self.closed = False

    def set_addresses(self, addresses: list[Any]) -> None:
        self.addresses = list(addresses)

    def deliver(self, packets: list[bytes]) -> None:
        self.delivered += packets

    async def open_connection(
        self, host: str, port: int, *, timeout: float = 10.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened.append((host, port))
        local = self.targets.get((host, port))
        if local is None:
            raise ConnectionRefusedError(f"RST from {host}:{port}")
        return await asyncio.open_connection("127.0.0.1", local)

    def on_tcp_connection(self, handler: Any, *, accept: Any = None) -> None:
        self.tcp_handler = handler
        self.accept_hook = accept

    def on_udp_datagram(self, handler: Any) -> None:
        self.udp_handler = handler

    def refuse_udp(self, src: tuple[str, int], dst: tuple[str, int], payload: bytes = b"") -> None:
        self.refused_udp.append((src, dst))

    def send_udp(self, payload: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        self.sent_udp.append((payload, src, dst))

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True
