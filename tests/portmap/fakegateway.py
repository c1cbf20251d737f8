"""Fake gateways on loopback for the port mapper's tests: a PCP/NAT-PMP server speaking
the wire formats from the RFCs, and a UPnP IGD's SOAP control URL over HTTP."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.portmap import vectors

EXTERNAL_IP = bytes([198, 18, 0, 2])


@dataclass
class PmpRequest:
    protocol: str  # "pcp" | "nat-pmp"
    opcode: int
    lifetime_s: int = 0
    nonce: bytes = b""
    internal_port: int = 0


@dataclass
class FakePcpGateway(asyncio.DatagramProtocol):
    """``speaks``: "pcp" (and NAT-PMP, like miniupnpd), "nat-pmp" (answers PCP with
    NAT-PMP's unsupported version), "refuse" (both, result 2: not authorized), "none"."""

    speaks: str = "pcp"
    max_lifetime_s: int = 7200
    requests: list[PmpRequest] = field(default_factory=list)
    transport: Any = None  # the datagram transport, once made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self._answer(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def _answer(self, data: bytes) -> bytes | None:
        if self.speaks == "none":
            return None
        result = 2 if self.speaks == "refuse" else 0
        if data[0] == 2:
            op, lifetime = data[1], int.from_bytes(data[4:8], "big")
            req = PmpRequest("pcp", op, lifetime)
            if op == 1:
                req.nonce, req.internal_port = data[24:36], int.from_bytes(data[40:42], "big")
            self.requests.append(req)
            if self.speaks == "nat-pmp":
                return struct.pack(">BBHI", 0, 0x80 | op, 1, 5)  # unsupported version
            lifetime = min(lifetime, self.max_lifetime_s)
            head = struct.pack(">BBBBII12x", 2, 0x80 | op, 0, result, lifetime, 5)
            if op != 1:
                return head
            port = int.from_bytes(data[42:44], "big") or 50000
            return (
                head
                + data[24:42]
                + port.to_bytes(2, "big")
                + b"\0" * 10
                + b"\xff\xff"
                + EXTERNAL_IP
            )
        op = data[1]
        if op == 0:
            self.requests.append(PmpRequest("nat-pmp", 0))
            return struct.pack(">BBHI4s", 0, 128, result, 5, EXTERNAL_IP)
        internal, external, lifetime = struct.unpack(">HHI", data[4:12])
        self.requests.append(PmpRequest("nat-pmp", op, lifetime, internal_port=internal))
        lifetime = min(lifetime, self.max_lifetime_s)
        return struct.pack(
            ">BBHIHHI", 0, 128 + op, result, 5, internal, external or 50000, lifetime
        )


async def start_pcp_gateway(speaks: str = "pcp", max_lifetime_s: int = 7200) -> FakePcpGateway:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: FakePcpGateway(speaks, max_lifetime_s), local_addr=("127.0.0.1", 0)
    )
    return proto


@dataclass
class FakeIgd:
    """The SOAP control URL of an IGD: the first AddPortMapping is refused with 718
    (ConflictInMappingEntry) when ``conflict_first``."""

    conflict_first: bool = True
    actions: list[tuple[str, bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ctl/IPConn"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
        )
        body = await reader.readexactly(int(headers["content-length"]))
        action = headers["soapaction"].strip('"').rsplit("#", 1)[1]
        self.actions.append((action, body))
        status, answer = (
            200,
            {
                "GetExternalIPAddress": vectors.EXTERNAL_IP,
                "AddPortMapping": vectors.ADDED,
                "DeletePortMapping": vectors.DELETED,
            }[action],
        )
        if action == "AddPortMapping" and self.conflict_first:
            self.conflict_first = False
            status, answer = 500, vectors.CONFLICT
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(answer)}\r\n"
                     "Connection: close\r\n\r\n".encode() + answer)  # fmt: skip
        await writer.drain()
        writer.close()


async def start_igd(conflict_first: bool = True) -> FakeIgd:
    igd = FakeIgd(conflict_first)
    igd.server = await asyncio.start_server(igd.handle, "127.0.0.1", 0)
    return igd
