"""Two UserspaceNet instances wired back to back on one asyncio loop: streams, refused
connections, UDP both ways and ping; prints the stack's throughput ceiling."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from weftnet.netstack.packet import (
    ICMP4_ECHO_REPLY,
    ICMP4_ECHO_REQUEST,
    ICMP6_ECHO_REPLY,
    ICMP6_ECHO_REQUEST,
    PROTO_ICMP,
    PROTO_ICMPV6,
    IcmpEcho,
    IPv4Packet,
    IPv6Packet,
    UdpPacket,
    ip_packet,
)
from weftnet.node.userspace.net import UserspaceNet

A, B = "100.64.0.1", "100.64.0.2"
A6, B6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"


def in_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Runs the async test on a fresh event loop (the suite has no pytest-asyncio)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 60))

    return run


def back_to_back(*, v6: bool = False, loss: float = 0.0) -> tuple[UserspaceNet, UserspaceNet]:
    """a's packets reach b on the next loop iteration, and back (no re-entry); ``loss``:
    that share of packets, picked by a seeded generator, never arrives."""
    loop = asyncio.get_running_loop()
    nets: dict[str, UserspaceNet] = {}
    rng = random.Random(7)

    def to(name: str) -> Callable[[list[bytes]], None]:
        def send(packets: list[bytes]) -> None:
            if loss:
                packets = [p for p in packets if rng.random() >= loss]
            loop.call_soon(nets[name].deliver, packets)

        return send

    nets["a"] = UserspaceNet(to("b"))
    nets["b"] = UserspaceNet(to("a"))
    nets["a"].set_addresses([ipaddress.ip_interface(A6 if v6 else A)])
    nets["b"].set_addresses([ipaddress.ip_interface(B6 if v6 else B)])
    for n in nets.values():
        n.start()
    return nets["a"], nets["b"]


@in_loop
async def test_five_megabytes_each_way_arrive_intact_and_the_throughput_is_printed() -> None:
    a, b = back_to_back()
    size = 5 * 1024 * 1024
    up, down = os.urandom(size), os.urandom(size)
    seen: dict[str, object] = {}

    async def server(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: tuple[str, int],
        remote: tuple[str, int],
    ) -> None:
        seen["local"], seen["remote"] = local, remote
        seen["peername"] = writer.get_extra_info("peername")
        got = await reader.readexactly(size)
        seen["up"] = hashlib.sha256(got).hexdigest()
        writer.write(down)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    b.on_tcp_connection(server)
    started = time.perf_counter()
    reader, writer = await a.open_connection(B, 8080)
    writer.write(up)
    await writer.drain()
    got = await reader.read()  # up to the server's FIN
    elapsed = time.perf_counter() - started
    writer.close()
    await writer.wait_closed()
    assert seen["up"] == hashlib.sha256(up).hexdigest()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(down).hexdigest()
    assert seen["local"] == (B, 8080)
    assert seen["remote"] == seen["peername"] == writer.get_extra_info("sockname")
    assert writer.get_extra_info("peername") == (B, 8080)
    mb = 2 * size / 1e6
    print(f"\nuserspace netstack back to back: {mb / elapsed:.1f} MB/s "
          f"({8 * mb / elapsed:.0f} Mbit/s, both directions, one core)")  # fmt: skip
    a.close()
    b.close()


@in_loop
async def test_half_a_megabyte_crosses_a_lossy_link_on_the_real_timers() -> None:
    a, b = back_to_back(loss=0.03)
    data = os.urandom(1 << 19)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object) -> None:
        writer.write(hashlib.sha256(await reader.read()).digest())
        writer.close()

    b.on_tcp_connection(sink)
    reader, writer = await a.open_connection(B, 9)
    writer.write(data)
    writer.write_eof()
    assert await reader.read() == hashlib.sha256(data).digest()
    a.close()
    b.close()


@in_loop
async def test_a_connection_to_a_port_without_handler_is_refused() -> None:
    a, b = back_to_back()
    with pytest.raises(ConnectionRefusedError):
        await a.open_connection(B, 22)
    a.close()
    b.close()


@in_loop
async def test_a_connection_nobody_answers_times_out() -> None:
    a, _ = back_to_back()
    with pytest.raises(TimeoutError):
        await a.open_connection("100.64.0.9", 22, timeout=0.3)
    a.close()


@in_loop
async def test_an_abort_resets_the_peer() -> None:
    a, b = back_to_back()
    outcome: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def server(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object
    ) -> None:
        try:
            outcome.set_result(await reader.read())
        except ConnectionResetError as e:
            outcome.set_result(e)

    b.on_tcp_connection(server)
    _, writer = await a.open_connection(B, 1)
    writer.write(b"x")
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.transport.abort()
    assert isinstance(await asyncio.wait_for(outcome, 5), ConnectionResetError)
    a.close()
    b.close()


@in_loop
async def test_udp_both_ways_and_port_unreachable() -> None:
    a, b = back_to_back()
    got: asyncio.Queue[tuple[bytes, tuple[str, int], tuple[str, int]]] = asyncio.Queue()
    b.on_udp_datagram(lambda payload, src, dst: got.put_nowait((payload, src, dst)))
    a.on_udp_datagram(lambda payload, src, dst: got.put_nowait((payload, src, dst)))
    a.send_udp(b"ping", (A, 5000), (B, 53))
    assert await asyncio.wait_for(got.get(), 5) == (b"ping", (A, 5000), (B, 53))
    b.send_udp(b"pong", (B, 53), (A, 5000))
    assert await asyncio.wait_for(got.get(), 5) == (b"pong", (B, 53), (A, 5000))
    a.close()
    b.close()


def test_udp_without_a_handler_is_answered_with_port_unreachable() -> None:
    sent: list[bytes] = []
    net = UserspaceNet(sent.extend)
    net.set_addresses([ipaddress.IPv4Interface(f"{B}/32")])
    src, dst = ipaddress.ip_address(A).packed, ipaddress.ip_address(B).packed
    datagram = ip_packet(src, dst, 17, UdpPacket(5000, 53, b"q").pack(src, dst))
    net.deliver([datagram])
    (answer,) = sent
    icmp = IPv4Packet.unpack(answer)
    assert (icmp.src, icmp.dst, icmp.proto) == (dst, src, PROTO_ICMP)
    assert icmp.payload[:2] == b"\x03\x03"  # destination unreachable, port unreachable
    assert icmp.payload[8:] == datagram


@pytest.mark.parametrize("v6", [False, True], ids=["icmp", "icmpv6"])
def test_ping_to_our_address_is_answered(v6: bool) -> None:
    sent: list[bytes] = []
    net = UserspaceNet(sent.extend)
    a, b = (A6, B6) if v6 else (A, B)
    net.set_addresses([ipaddress.ip_interface(b)])
    src, dst = ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed
    kinds = (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) if v6 else (ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY)
    request = IcmpEcho(kinds[0], 7, 1, b"abc").pack(src, dst)
    net.deliver([ip_packet(src, dst, PROTO_ICMPV6 if v6 else PROTO_ICMP, request)])
    (answer,) = sent
    reply = IPv6Packet.unpack(answer) if v6 else IPv4Packet.unpack(answer)
    assert (reply.src, reply.dst) == (dst, src)
    assert IcmpEcho.unpack(reply.payload, dst, src) == IcmpEcho(kinds[1], 7, 1, b"abc")


@in_loop
async def test_a_stream_over_ipv6() -> None:
    a, b = back_to_back(v6=True)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object) -> None:
        writer.write(await reader.read())
        writer.close()

    b.on_tcp_connection(echo)
    reader, writer = await a.open_connection(B6, 7)
    data = os.urandom(300_000)
    writer.write(data)
    writer.write_eof()
    assert await reader.read() == data
    assert writer.get_extra_info("peername") == (B6, 7)
    a.close()
    b.close()
