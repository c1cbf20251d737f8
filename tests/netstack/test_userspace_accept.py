"""The accept hook and ICMP port unreachable through two back-to-back UserspaceNets, and
weftd's incoming forwarder on top: a refused port is refused, not accepted then reset."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.netstack.test_userspace_net import A, B, back_to_back, in_loop
from weftnet.node.proxy.incoming import TcpForwarder, UdpNat

Address = tuple[str, int]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


@in_loop
async def test_the_accept_hook_refuses_before_the_handshake() -> None:
    a, b = back_to_back()
    asked: list[tuple[Address, Address]] = []
    handled: list[Address] = []

    async def accept(local: Address, remote: Address) -> bool:
        asked.append((local, remote))
        await asyncio.sleep(0.05)  # the peer waits meanwhile
        return local[1] == 80

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, local: Address,
                      remote: Address) -> None:  # fmt: skip
        handled.append(local)
        await _echo(r, w)

    b.on_tcp_connection(handler, accept=accept)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection(B, 81)
    assert loop.time() - started < 0.5  # the RST, not a retransmission timeout
    assert handled == []  # never accepted: the handler never ran
    r, w = await a.open_connection(B, 80)
    w.write(b"hi")
    assert await r.read() == b"hi"
    assert handled == [(B, 80)]
    assert [x[0] for x in asked] == [(B, 81), (B, 80)] and asked[0][1][0] == A
    a.close()
    b.close()


@in_loop
async def test_a_failing_or_hanging_hook_refuses() -> None:
    a, b = back_to_back()

    async def broken(local: Address, remote: Address) -> bool:
        raise RuntimeError("boom")

    b.on_tcp_connection(_echo, accept=broken)
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection(B, 80)
    a.close()
    b.close()


@in_loop
async def test_udp_refused_after_the_fact_reaches_the_sender_as_unreachable() -> None:
    a, b = back_to_back()
    unreachable: asyncio.Queue[tuple[Address, Address]] = asyncio.Queue()
    a.on_udp_unreachable(lambda src, dst: unreachable.put_nowait((src, dst)))
    b.on_udp_datagram(lambda payload, src, dst: b.refuse_udp(src, dst, payload))
    a.send_udp(b"anyone?", (A, 5000), (B, 9999))
    assert await asyncio.wait_for(unreachable.get(), 5) == ((A, 5000), (B, 9999))
    a.close()
    b.close()


def _closed_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now (barring a race with another process)


@in_loop
async def test_the_forwarder_refuses_a_closed_loopback_port_and_pipes_an_open_one() -> None:
    a, b = back_to_back()
    fwd = TcpForwarder()
    b.on_tcp_connection(fwd.handle, accept=fwd.accept)
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection(B, _closed_port(socket.SOCK_STREAM))
    assert fwd.refused == 1 and fwd.forwarded == 0
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await a.open_connection(B, port)
    w.write(b"through")
    assert await r.read() == b"through"
    assert fwd.forwarded == 1
    server.close()
    a.close()
    b.close()


@in_loop
async def test_the_udp_nat_answers_a_closed_loopback_port_with_unreachable() -> None:
    a, b = back_to_back()
    nat = UdpNat(b.send_udp, unreachable=b.refuse_udp)
    b.on_udp_datagram(nat.datagram)
    unreachable: asyncio.Queue[tuple[Address, Address]] = asyncio.Queue()
    a.on_udp_unreachable(lambda src, dst: unreachable.put_nowait((src, dst)))
    port = _closed_port(socket.SOCK_DGRAM)
    a.send_udp(b"hello?", (A, 5001), (B, port))
    assert await asyncio.wait_for(unreachable.get(), 5) == ((A, 5001), (B, port))
    assert nat.refused == 1
    nat.close()
    a.close()
    b.close()
