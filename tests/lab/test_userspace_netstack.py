"""The userspace netstack against Linux's own TCP, through a TUN device in a namespace.

A lab host (a fresh namespace) gets a TUN device ``wsn0`` with 100.64.77.1/24; the test
process holds the TUN's file descriptor and pumps its packets into a ``UserspaceNet``
at 100.64.77.2 (and the stack's packets back), on one asyncio loop. A Python socket
inside the namespace then talks to the stack both ways; with nftables dropping 2% of
the TUN's packets (``numgen random mod 50 == 0``) the transfers still arrive intact.
The namespace (and with it the TUN) goes when the lab closes, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import os
import random
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from weftlab.netlab import Host, Lab
from weftnet.node.userspace.net import UserspaceNet

pytestmark = pytest.mark.lab

LINUX, STACK = "100.64.77.1", "100.64.77.2"
LINUX6, STACK6 = "fd7a:115c:a1e0:77::1", "fd7a:115c:a1e0:77::2"
TUN_NAME = "wsn0"
MTU = 1420
SIZE = 4 * 1024 * 1024  # bytes each way
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000

# Runs inside the namespace: one TCP connection, `up` bytes out, `down` bytes in.
LINUX_SIDE = textwrap.dedent(
    """
    import hashlib, random, socket, sys
    role, address, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if role == "server":
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        ls = socket.create_server((address, port), family=family)
        print("listening", flush=True)
        s, _ = ls.accept()
    else:
        s = socket.create_connection((address, port), timeout=60)
    s.settimeout(120)
    s.sendall(random.Random(1).randbytes(size))
    s.shutdown(socket.SHUT_WR)
    got = hashlib.sha256()
    while chunk := s.recv(1 << 16):
        got.update(chunk)
    print(got.hexdigest(), flush=True)
    """
)


def expected(seed: int) -> str:
    return hashlib.sha256(random.Random(seed).randbytes(SIZE)).hexdigest()


def open_tun_in(host: Host) -> int:
    """A plain TUN (no virtio header, no offloads: the kernel hands over whole, checksummed
    packets of at most the MTU) created here and moved into ``host``'s namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        name = f"wsn{os.getpid() % 100000}"
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        subprocess.run(["ip", "link", "set", "dev", name, "netns", host.netns], check=True)
        host.run(["ip", "link", "set", "dev", name, "name", TUN_NAME])
        host.run(["ip", "link", "set", "dev", TUN_NAME, "mtu", str(MTU), "up"])
        host.run(["ip", "addr", "add", f"{LINUX}/24", "dev", TUN_NAME])
        host.run(["ip", "addr", "add", f"{LINUX6}/64", "dev", TUN_NAME, "nodad"])
    except BaseException:
        os.close(fd)
        raise
    return fd


class Pump:
    """Moves packets between the TUN fd and a UserspaceNet on the running loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.net = UserspaceNet(self._write, mtu=MTU)
        self.net.set_addresses(
            [ipaddress.IPv4Interface(f"{STACK}/24"), ipaddress.IPv6Interface(f"{STACK6}/64")]
        )

    def _write(self, packets: list[bytes]) -> None:
        for p in packets:  # a full TUN queue is a loss TCP recovers from
            with contextlib.suppress(BlockingIOError):
                os.write(self.fd, p)

    def _readable(self) -> None:
        batch = []
        for _ in range(256):
            try:
                batch.append(os.read(self.fd, 65536))
            except BlockingIOError:
                break
        if batch:
            self.net.deliver(batch)

    def __enter__(self) -> UserspaceNet:
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self.net.start()
        return self.net

    def __exit__(self, *_: object) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        self.net.close()


async def _wait(proc: subprocess.Popen[str], timeout: float) -> str:
    out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    assert proc.returncode == 0, err
    return out


async def linux_connects_to_the_stack(host: Host, fd: int, v6: bool) -> float:
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *_: object
    ) -> None:
        digest = hashlib.sha256()
        while chunk := await reader.read(1 << 16):
            digest.update(chunk)
        writer.write(random.Random(2).randbytes(SIZE))
        await writer.drain()
        writer.close()
        got.set_result(digest.hexdigest())

    with Pump(fd) as net:
        ping = ["ping", "-c", "5", "-i", "0.2", "-W", "2", STACK6 if v6 else STACK]
        await asyncio.to_thread(host.run, ping)  # exit 0: some echo answered
        net.on_tcp_connection(handler)
        started = time.perf_counter()
        proc = host.popen(
            [sys.executable, "-c", LINUX_SIDE, "client", STACK6 if v6 else STACK, "8080", str(SIZE)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out = await _wait(proc, 300)
        elapsed = time.perf_counter() - started
        assert await asyncio.wait_for(got, 10) == expected(1)
        assert out.split()[-1] == expected(2)
        await asyncio.sleep(0.2)  # the FIN handshake's last ACK
    return elapsed


async def the_stack_connects_to_linux(host: Host, fd: int, v6: bool) -> float:
    linux = LINUX6 if v6 else LINUX
    with Pump(fd) as net:
        proc = host.popen(
            [sys.executable, "-u", "-c", LINUX_SIDE, "server", linux, "9090", str(SIZE)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        host.wait_listening(9090, proto="tcp")
        started = time.perf_counter()
        reader, writer = await net.open_connection(linux, 9090)

        async def send() -> None:  # while reading: Linux writes everything before it reads
            writer.write(random.Random(2).randbytes(SIZE))
            await writer.drain()
            writer.write_eof()

        sending = asyncio.create_task(send())
        digest = hashlib.sha256()
        while chunk := await reader.read(1 << 16):
            digest.update(chunk)
        await sending
        elapsed = time.perf_counter() - started
        writer.close()
        out = await _wait(proc, 300)
        assert digest.hexdigest() == expected(1)
        assert out.split()[-1] == expected(2)
        with pytest.raises(ConnectionRefusedError):
            await net.open_connection(linux, 9091)
    return elapsed


def lossy(host: Host) -> None:
    """Drop 2% of the TUN's packets, both ways."""
    host.run(["nft", "-f", "-"], input=textwrap.dedent(f"""
        table inet weftloss {{
            chain input {{ type filter hook input priority 0;
                iifname "{TUN_NAME}" numgen random mod 50 == 0 counter drop; }}
            chain output {{ type filter hook output priority 0;
                oifname "{TUN_NAME}" numgen random mod 50 == 0 counter drop; }}
        }}
    """))  # fmt: skip


@pytest.mark.parametrize(
    ("v6", "loss"),
    [(False, False), (False, True), (True, False)],
    ids=["ipv4", "ipv4-2pct-loss", "ipv6"],
)
def test_linux_tcp_and_the_userspace_stack_exchange_megabytes(
    lab: Lab, v6: bool, loss: bool
) -> None:
    host = lab.host("h", lab.segment("s"))
    fd = open_tun_in(host)
    try:
        if loss:
            lossy(host)
        in_s = asyncio.run(linux_connects_to_the_stack(host, fd, v6))
        out_s = asyncio.run(the_stack_connects_to_linux(host, fd, v6))
        if loss:
            drops = host.run(["nft", "list", "table", "inet", "weftloss"]).stdout
            assert "packets 0 " not in drops  # the rule really dropped packets
    finally:
        os.close(fd)
    mb = 2 * SIZE / 1e6
    print(f"\nLinux -> stack: {mb / in_s:.1f} MB/s, stack -> Linux: {mb / out_s:.1f} MB/s"
          f" ({'IPv6' if v6 else 'IPv4'}, {'2% loss' if loss else 'no loss'}, both directions per connection)")  # fmt: skip
