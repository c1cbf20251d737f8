"""Benchmark: the userspace netstack's throughput ceiling in CPython, one core.

Theory of operation
-------------------
Two rows, one TCP connection each, ``--megabytes`` (20) in one direction:

* pure: two ``weftnet.netstack.Stack`` objects handing packets to each other in a plain
  loop (no asyncio): the cost of the protocol code alone, both ends on one core;
* UserspaceNet: two ``UserspaceNet`` instances back to back on one asyncio loop, with
  StreamWriter/StreamReader at both ends: what an app behind weftd could get at most
  (the WireGuard data plane's own cost comes on top).

Each row reports MB/s and Mbit/s of payload. No root needed. Markdown table to stdout.

    python -m bench.netstack [--megabytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import time
from collections.abc import Callable, Sequence

from weftnet.netstack import events as ev
from weftnet.netstack.stack import Stack
from weftnet.node.userspace.net import UserspaceNet

A, B = "100.64.0.1", "100.64.0.2"


def pure(size: int) -> float:
    """Seconds to move ``size`` bytes between two Stacks."""
    a, b = Stack(random_bytes=os.urandom), Stack(random_bytes=os.urandom)
    a.set_addresses([A])
    b.set_addresses([B])
    b.listen(None)
    now = 0.0
    data = os.urandom(size)
    started = time.perf_counter()
    conn = a.connect(B, 5001, now)
    a.send(conn, data)
    a.close(conn, now)
    got = 0
    while got < size:
        for p in a.packets_to_send(now):
            b.receive(p, now)
        for p in b.packets_to_send(now):
            a.receive(p, now)
        while (e := b.next_event()) is not None:
            if isinstance(e, ev.DataReceived):
                got += len(e.data)
        while a.next_event() is not None:
            pass
        now += 0.0001
        a.on_timer(now)
        b.on_timer(now)
    return time.perf_counter() - started


async def adapter(size: int) -> float:
    """Seconds to move ``size`` bytes between two back-to-back UserspaceNets."""
    loop = asyncio.get_running_loop()
    nets: dict[str, UserspaceNet] = {}

    def to(name: str) -> Callable[[list[bytes]], None]:
        def send(packets: list[bytes]) -> None:
            loop.call_soon(nets[name].deliver, packets)  # next iteration: no re-entry

        return send

    nets["a"] = UserspaceNet(to("b"))
    nets["b"] = UserspaceNet(to("a"))
    nets["a"].set_addresses([ipaddress.IPv4Interface(A)])
    nets["b"].set_addresses([ipaddress.IPv4Interface(B)])
    done: asyncio.Future[int] = loop.create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object) -> None:
        n = 0
        while chunk := await reader.read(1 << 20):
            n += len(chunk)
        done.set_result(n)
        writer.close()

    nets["b"].on_tcp_connection(sink)
    for n in nets.values():
        n.start()
    data = os.urandom(size)
    started = time.perf_counter()
    _, writer = await nets["a"].open_connection(B, 5001)
    writer.write(data)
    writer.write_eof()
    assert await done == size
    elapsed = time.perf_counter() - started
    for n in nets.values():
        n.close()
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=20)
    args = parser.parse_args(argv)
    size = args.megabytes * 1_000_000
    print("| netstack, one connection, one core | MB/s | Mbit/s |")
    print("|---|---:|---:|")
    for name, seconds in (("pure Stack pair", pure(size)), ("UserspaceNet pair",
                          asyncio.run(adapter(size)))):  # fmt: skip
        print(f"| {name} | {size / seconds / 1e6:.1f} | {8 * size / seconds / 1e6:.0f} |")


if __name__ == "__main__":
    main()
