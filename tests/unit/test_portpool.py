"""The extra UDP sockets of birthday probing: a socket that became a path moves batches
(GSO out, GRO in) like the data plane's own socket, the others one datagram at a time."""

from __future__ import annotations

import asyncio

from weftnet.endpoint import Endpoint
from weftnet.magicsock.portpool import PortPool

LOOPBACK = "127.0.0.1"


async def _until(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _pools() -> tuple[PortPool, PortPool, list[tuple[int, bytes, int]], int, int]:
    got: list[tuple[int, bytes, int]] = []
    sender = PortPool(lambda port, data, seg, src: None)
    receiver = PortPool(lambda port, data, seg, src: got.append((port, data, seg)))
    a, b = sender.open(), receiver.open()
    assert a is not None and b is not None
    return sender, receiver, got, a, b


def test_a_promoted_socket_takes_a_batch_in_one_gso_send_and_one_gro_read() -> None:
    async def scenario() -> None:
        sender, receiver, got, a, b = _pools()
        try:
            receiver.promote(b)
            data = bytes(range(256)) * 5 * 20 + b"tail"  # 20 datagrams of 1280, one of 4
            assert sender.sendto_batch(a, data, 1280, Endpoint(LOOPBACK, b))
            await _until(lambda: sum(len(d) for _, d, _ in got) == len(data))
            assert b"".join(d for _, d, _ in got) == data
            assert len(got) < 21  # coalesced: fewer reads than datagrams
            assert all(port == b for port, _, _ in got)
            assert all(seg == 1280 for _, d, seg in got if len(d) > 1280)
        finally:
            sender.close_all()
            receiver.close_all()

    asyncio.run(scenario())


def test_a_socket_not_promoted_reads_one_datagram_at_a_time() -> None:
    async def scenario() -> None:
        sender, receiver, got, a, b = _pools()
        try:
            data = b"x" * 1000 * 3
            assert sender.sendto_batch(a, data, 1000, Endpoint(LOOPBACK, b))
            await _until(lambda: len(got) == 3)
            assert [(len(d), seg) for _, d, seg in got] == [(1000, 1000)] * 3
        finally:
            sender.close_all()
            receiver.close_all()

    asyncio.run(scenario())


def test_a_closed_port_sends_nothing() -> None:
    async def scenario() -> None:
        sender, receiver, _got, a, b = _pools()
        sender.close(a)
        assert not sender.sendto_batch(a, b"x" * 100, 50, Endpoint(LOOPBACK, b))
        assert not sender.sendto(a, b"x", Endpoint(LOOPBACK, b))
        receiver.close_all()

    asyncio.run(scenario())
