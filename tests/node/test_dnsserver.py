"""The resolver's I/O shell (node/dnsserver.py) on 127.0.0.1: answers through a daemon
on a stand-in engine, forwarding to upstreams on loopback (racing, TCP for truncated
answers, SERVFAIL after the deadline, the in-flight limit), S1 and TCP limits."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.node.support import SERVER, FakeServer, make_daemon, node
from weftnet import tailcfg
from weftnet.node import dnsserver, status
from weftnet.node.daemon import NodeDaemon
from weftnet.node.dnsserver import DnsServer, LocalAddresses

ME = node(1, "me", ["100.64.0.1", "fd7a:115c:a1e0::1"])
PEERS = [node(2, "laptop", ["100.64.0.2"])]  # given_name "laptop-1"
UP = {"login_server": SERVER, "auth_key": "weftkey-test", "hostname": "me"}


async def ask_udp(port: int, name: str, rdtype: str = "A", timeout_s: float = 3.0,
                  **kw: Any) -> dns.message.Message:  # fmt: skip
    q = dns.message.make_query(name, rdtype, **kw)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, q.to_wire())
        wire = await asyncio.wait_for(loop.sock_recv(s, 65535), timeout_s)
    return dns.message.from_wire(wire)


async def ask_tcp(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    q = dns.message.make_query(name, rdtype).to_wire()
    writer.write(len(q).to_bytes(2, "big") + q)
    size = int.from_bytes(await reader.readexactly(2), "big")
    wire = await reader.readexactly(size)
    writer.close()
    return dns.message.from_wire(wire)


class Upstream(asyncio.DatagramProtocol):
    """A nameserver on loopback: answers every A with 198.18.9.9 after ``delay_s``;
    names starting with "big" get 3 kB of TXT (TC over UDP, whole over TCP)."""

    def __init__(self, delay_s: float = 0.0, rcode: int = 0) -> None:
        self.delay_s, self.rcode, self.seen = delay_s, rcode, 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def answer(self, wire: bytes, tcp: bool) -> bytes:
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.Rcode(self.rcode))
        name = q.question[0].name
        if name.to_text().startswith("big"):
            if not tcp:
                r.flags |= dns.flags.TC
                return r.to_wire()
            texts = [f'"{i:02} {"x" * 240}"' for i in range(12)]
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", *texts))
        else:
            r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "198.18.9.9"))
        return r.to_wire()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen += 1
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay_s, self.transport.sendto, self.answer(data, False), addr)

    async def tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        out = self.answer(await reader.readexactly(size), True)
        writer.write(len(out).to_bytes(2, "big") + out)
        await writer.drain()
        writer.close()


async def start_upstream(up: Upstream) -> tuple[int, Callable[[], None]]:
    """``up`` on one free port for UDP and TCP both. The UDP port the kernel picks may be
    taken for TCP by another test running at the same time: then another port."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        transport, _ = await loop.create_datagram_endpoint(lambda: up, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(up.tcp, "127.0.0.1", port)
            break
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            transport.close()
    else:
        raise AssertionError("no port free for both UDP and TCP in 20 tries")

    def close() -> None:
        transport.close()
        server.close()

    return port, close


def run(tmp_path: Path, body: Callable[[NodeDaemon, int], Awaitable[Any]], **kw: Any) -> Any:
    server = FakeServer(ME, PEERS)
    config = tailcfg.DNSConfig(magic_dns=True, domain="weft.internal")
    server.full = lambda: tailcfg.MapResponse(  # type: ignore[method-assign]
        node=ME, peers=PEERS, packet_filter=[], dns_config=config
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 100.100.100.100\nnameserver 127.0.0.9\n")

    async def scenario() -> Any:
        d = make_daemon(tmp_path, server, **kw)
        d.dns = DnsServer(d.engine, d.supervisor, listen=[("127.0.0.1", 0)],
                          resolv_conf=str(resolv), local=LocalAddresses(lambda: set()))  # fmt: skip
        await d.start()
        try:
            assert (await d.up(UP))["result"] == {"state": "Running"}
            for _ in range(100):
                if d.dns.bound:
                    break
                await asyncio.sleep(0.02)
            return await body(d, d.dns.bound[0][1])
        finally:
            await d.close()

    return asyncio.run(scenario())


def test_names_from_the_map_over_udp_and_tcp(tmp_path: Path) -> None:
    async def body(d: NodeDaemon, port: int) -> None:
        assert d.dns.base_resolvers == ["127.0.0.9"]  # not quad-100 itself
        r = await ask_udp(port, "laptop-1.weft.internal")
        assert r.rcode() == 0 and r.answer[0][0].to_text() == "100.64.0.2"
        r = await ask_tcp(port, "me.weft.internal", "AAAA")
        assert r.answer[0][0].to_text() == "fd7a:115c:a1e0::1"
        r = await ask_udp(port, "nosuch.weft.internal")
        assert r.rcode() == dns.rcode.NXDOMAIN
        st = status.node_status(d)["dns"]
        assert (st["queries"], st["local_answers"]) == (3, 3)
        await d.down()  # the table goes, and so does the listener
        assert d.dns.bound == [] and not d.supervisor.is_running("dns")

    run(tmp_path, body)


def test_forwarding_races_upstreams_and_retries_truncated_answers_over_tcp(
    tmp_path: Path,
) -> None:
    async def body(d: NodeDaemon, port: int) -> None:
        slow, fast = Upstream(delay_s=0.5), Upstream()
        slow_port, close_slow = await start_upstream(slow)
        fast_port, close_fast = await start_upstream(fast)
        try:
            d.dns.set_base_resolvers([f"127.0.0.1:{slow_port}", f"127.0.0.1:{fast_port}"])
            r = await ask_udp(port, "www.example.test", timeout_s=0.3)
            assert r.answer[0][0].to_text() == "198.18.9.9" and slow.seen == fast.seen == 1
            d.dns.set_base_resolvers([f"127.0.0.1:{fast_port}"])
            r = await ask_udp(port, "big.example.test", "TXT")  # a UDP client gets TC
            assert r.flags & dns.flags.TC and not r.answer
            r = await ask_tcp(port, "big.example.test", "TXT")  # a TCP client all of it
            assert len(r.answer[0]) == 12
            st = d.dns.status()
            assert st["forwarded"] == 3 and st["truncated"] == 1 and st["servfail"] == 0
        finally:
            close_slow()
            close_fast()

    run(tmp_path, body)


def test_servfail_after_the_deadline_and_beyond_the_in_flight_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsserver, "QUERY_TIMEOUT_S", 0.3)
    monkeypatch.setattr(dnsserver, "UDP_RACE_S", 0.1)

    async def body(d: NodeDaemon, port: int) -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        try:
            d.dns.set_base_resolvers([f"127.0.0.1:{silent.getsockname()[1]}"])
            r = await ask_udp(port, "www.example.test")
            assert r.rcode() == dns.rcode.SERVFAIL
            st = d.dns.status()
            assert st["upstream_timeouts"] == 1 and st["servfail"] == 1 and st["active"] == 0
            monkeypatch.setattr(dnsserver, "MAX_ACTIVE", 0)
            r = await ask_udp(port, "www.example.test", timeout_s=0.2)  # at once
            assert r.rcode() == dns.rcode.SERVFAIL and d.dns.status()["servfail"] == 2
        finally:
            silent.close()

    run(tmp_path, body)


def test_queries_from_other_hosts_are_dropped_and_counted(tmp_path: Path) -> None:
    class NobodyIsLocal(LocalAddresses):
        def knows(self, ip: str) -> bool:
            return False

    async def body(d: NodeDaemon, port: int) -> None:
        d.dns.local = NobodyIsLocal(lambda: set())
        with pytest.raises(TimeoutError):
            await ask_udp(port, "laptop-1.weft.internal", timeout_s=0.3)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await ask_tcp(port, "laptop-1.weft.internal")
        st = d.dns.status()
        assert st["refused_nonlocal"] == 2 and st["queries"] == 0

    run(tmp_path, body)


def test_a_taken_port_is_a_health_line(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    async def scenario() -> list[str]:
        d = make_daemon(tmp_path, FakeServer(ME, PEERS))
        d.dns = DnsServer(d.engine, d.supervisor, listen=[("127.0.0.1", port)])
        await d.start()
        try:
            await d.up(UP)
            for _ in range(100):
                if d.supervisor.tasks.get("dns") and d.supervisor.tasks["dns"].last_error:
                    break
                await asyncio.sleep(0.02)
            return status.health(d)
        finally:
            await d.close()

    try:
        health = asyncio.run(scenario())
    finally:
        taken.close()
    assert any(f"MagicDNS: cannot listen on 127.0.0.1:{port}: the port is taken" in h
               for h in health), health  # fmt: skip
