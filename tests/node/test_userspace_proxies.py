"""The userspace mode's proxies and incoming forwarding (weftnet.node.proxy) against a
fake stack: SOCKS5 (driven by socksio's client), the HTTP proxy (CONNECT and absolute
URIs), authentication, refusals outside the tailnet, loopback-only listening, and
peers' TCP and UDP handed to 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import ipaddress

import pytest
from socksio.socks5 import (
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Connection,
    SOCKS5ReplyCode,
    SOCKS5UsernamePasswordRequest,
)

from tests.node.fakenet import FakeNet
from weftnet.dns.records import Host, NameTable
from weftnet.node.proxy.auth import AuthError, Credentials, load_auth_file
from weftnet.node.proxy.httpproxy import HttpProxy
from weftnet.node.proxy.incoming import TcpForwarder, UdpNat
from weftnet.node.proxy.listen import ListenError, check_listen
from weftnet.node.proxy.resolve import Dialer, tailnet_addresses
from weftnet.node.proxy.socks5 import Socks5Server

PEER = "100.64.0.7"
TABLE = NameTable(
    hosts={"peer.tail.example.": Host(v4=[ipaddress.IPv4Address(PEER)])},
    zones=("tail.example.",),
)


async def _echo_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b"hello from the peer; request was:\n" + head
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


def run(fn):  # type: ignore[no-untyped-def]
    """An async test, run on its own event loop (with a fake stack as ``net``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):  # type: ignore[no-untyped-def]
        async def main():  # type: ignore[no-untyped-def]
            server = await asyncio.start_server(_echo_http, "127.0.0.1", 0)
            n = FakeNet()
            n.targets[(PEER, 80)] = server.sockets[0].getsockname()[1]
            try:
                return await fn(n, *args, **kw)
            finally:
                server.close()

        return asyncio.run(main())

    wrapper.__signature__ = inspect.Signature([])  # type: ignore[attr-defined]
    return wrapper


def dialer(net: FakeNet) -> Dialer:
    return Dialer(net, lambda name: tailnet_addresses(TABLE, name))


async def serve(handler) -> tuple[asyncio.AbstractServer, int]:  # type: ignore[no-untyped-def]
    s = await asyncio.start_server(handler, "127.0.0.1", 0)
    return s, s.sockets[0].getsockname()[1]


async def socks_connect(port: int, host: str, dport: int, creds: tuple[str, str] | None = None):  # type: ignore[no-untyped-def]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    conn = SOCKS5Connection()
    method = SOCKS5AuthMethod.USERNAME_PASSWORD if creds else SOCKS5AuthMethod.NO_AUTH_REQUIRED
    conn.send(SOCKS5AuthMethodsRequest([method]))
    w.write(conn.data_to_send())
    auth = conn.receive_data(await r.readexactly(2))
    if auth.method == SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS:
        return "no method", r, w
    if creds:
        conn.send(SOCKS5UsernamePasswordRequest(creds[0].encode(), creds[1].encode()))
        w.write(conn.data_to_send())
        reply = conn.receive_data(await r.readexactly(2))
        if not reply.success:
            return None, r, w
    conn.send(SOCKS5CommandRequest.from_address(SOCKS5Command.CONNECT, (host, dport)))
    w.write(conn.data_to_send())
    reply = conn.receive_data(await r.readexactly(10))
    return reply.reply_code, r, w


def test_tailnet_names_resolve_from_the_table_only() -> None:
    assert tailnet_addresses(TABLE, "peer.tail.example") == [PEER]
    assert tailnet_addresses(TABLE, "PEER.tail.example.") == [PEER]
    assert tailnet_addresses(TABLE, "peer") == [PEER]  # the tailnet's domain searched
    assert tailnet_addresses(TABLE, "example.com") == []


@run
async def test_socks5_connect_by_name_and_address(net: FakeNet) -> None:
    server, port = await serve(Socks5Server(dialer(net)).handle)
    for host in ("peer.tail.example", PEER):
        code, r, w = await socks_connect(port, host, 80)
        assert code == SOCKS5ReplyCode.SUCCEEDED
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello from the peer" in await r.read()
        w.close()
    assert net.opened == [(PEER, 80), (PEER, 80)]
    server.close()


@run
async def test_socks5_refuses_outside_the_tailnet_and_reports_rst(net: FakeNet) -> None:
    proxy = Socks5Server(dialer(net))
    server, port = await serve(proxy.handle)
    code, _, w = await socks_connect(port, "example.com", 80)
    assert code == SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET
    w.close()
    code, _, w = await socks_connect(port, "8.8.8.8", 80)
    assert code == SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET
    w.close()
    code, _, w = await socks_connect(port, PEER, 81)  # nothing listens: RST
    assert code == SOCKS5ReplyCode.CONNECTION_REFUSED
    w.close()
    assert net.opened == [(PEER, 81)] and proxy.refused == 2
    server.close()


@run
async def test_socks5_username_password(net: FakeNet) -> None:
    server, port = await serve(Socks5Server(dialer(net), Credentials({"alice": "s3cret"})).handle)
    code, _, w = await socks_connect(port, PEER, 80, ("alice", "wrong"))
    assert code is None
    w.close()
    code, _, w = await socks_connect(port, PEER, 80)  # no auth offered: no method
    assert code == "no method"
    w.close()
    code, _, w = await socks_connect(port, PEER, 80, ("alice", "s3cret"))
    assert code == SOCKS5ReplyCode.SUCCEEDED
    w.close()
    server.close()


async def http_request(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    out = await r.read()
    w.close()
    return out


@run
async def test_http_proxy_absolute_uri_and_connect(net: FakeNet) -> None:
    server, port = await serve(HttpProxy(dialer(net)).handle)
    out = await http_request(
        port,
        b"GET http://peer.tail.example/x?y=1 HTTP/1.1\r\nHost: peer.tail.example\r\n"
        b"Proxy-Connection: keep-alive\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200 OK") and b"GET /x?y=1 HTTP/1.1" in out
    assert b"Proxy-Connection" not in out and b"Connection: close" in out
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"CONNECT peer.tail.example:80 HTTP/1.1\r\nHost: peer.tail.example:80\r\n\r\n")
    assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    w.write(b"GET / HTTP/1.1\r\n\r\n")
    assert b"hello from the peer" in await r.read()
    w.close()
    out = await http_request(port, b"GET http://example.com/ HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403") and b"not a name in this tailnet" in out
    out = await http_request(port, b"CONNECT 100.64.0.7:81 HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502")
    server.close()


@run
async def test_http_proxy_basic_auth(net: FakeNet) -> None:
    server, port = await serve(HttpProxy(dialer(net), Credentials({"bob": "pw"})).handle)
    req = b"GET http://%s/ HTTP/1.1\r\n" % PEER.encode()
    out = await http_request(port, req + b"\r\n")
    assert out.startswith(b"HTTP/1.1 407") and b"Proxy-Authenticate: Basic" in out
    bad = base64.b64encode(b"bob:nope")
    out = await http_request(port, req + b"Proxy-Authorization: Basic " + bad + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 407")
    good = base64.b64encode(b"bob:pw")
    out = await http_request(port, req + b"Proxy-Authorization: Basic " + good + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"Proxy-Authorization" not in out
    server.close()


def test_listen_is_loopback_unless_allowed() -> None:
    assert check_listen("127.0.0.1:1055", allow_remote=False) == ("127.0.0.1", 1055)
    assert check_listen("[::1]:1055", allow_remote=False) == ("::1", 1055)
    assert check_listen("localhost:1", allow_remote=False) == ("localhost", 1)
    with pytest.raises(ListenError, match="--proxy-allow-remote"):
        check_listen("0.0.0.0:1055", allow_remote=False)
    with pytest.raises(ListenError, match="--proxy-allow-remote"):
        check_listen(":1055", allow_remote=False)
    assert check_listen("192.0.2.1:1055", allow_remote=True) == ("192.0.2.1", 1055)
    with pytest.raises(ListenError):
        check_listen("127.0.0.1:99999", allow_remote=False)


def test_auth_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "auth"
    f.write_text("# proxies\nalice:pa:ss\n")
    assert load_auth_file(str(f)) == {"alice": "pa:ss"}
    creds = Credentials(load_auth_file(str(f)))
    assert creds.check(b"alice", b"pa:ss") and not creds.check(b"alice", b"pa")
    assert not creds.check(b"bob", b"pa:ss")
    f.write_text("nocolon\n")
    with pytest.raises(AuthError):
        load_auth_file(str(f))


class _Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


class _Writer:
    def __init__(self) -> None:
        self.transport = _Transport()
        self.closed = False

    def close(self) -> None:
        self.closed = True


@run
async def test_incoming_tcp_reset_when_nothing_listens_else_spliced(net: FakeNet) -> None:
    fwd = TcpForwarder()
    probe, port = await serve(lambda r, w: w.close())
    probe.close()
    await probe.wait_closed()  # a port where nothing listens now
    w = _Writer()
    await fwd.handle(asyncio.StreamReader(), w, ("100.64.0.2", port), (PEER, 40000))  # type: ignore[arg-type]
    assert w.transport.aborted and fwd.refused == 1

    async def upper(r: asyncio.StreamReader, wr: asyncio.StreamWriter) -> None:
        wr.write((await r.read(100)).upper())
        await wr.drain()
        wr.close()

    server, port = await serve(upper)
    # The "peer side": a real stream pair stands in for the stack's connection.
    inner, inner_port = await serve(
        lambda r, wr: fwd.handle(r, wr, ("100.64.0.2", port), (PEER, 40001))
    )
    r, wr = await asyncio.open_connection("127.0.0.1", inner_port)
    wr.write(b"hello")
    assert await r.read() == b"HELLO"
    assert fwd.forwarded == 1
    server.close()
    inner.close()


@run
async def test_incoming_udp_nat_relays_and_replies_then_expires(net: FakeNet) -> None:
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, t):  # type: ignore[no-untyped-def]
            self.t = t

        def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
            self.t.sendto(b"echo:" + data, addr)

    t, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = t.get_extra_info("sockname")[1]
    sent: list = []
    nat = UdpNat(lambda data, src, dst: sent.append((data, src, dst)), idle_s=0.2)
    me, peer = ("100.64.0.2", port), (PEER, 5000)
    nat.datagram(b"one", peer, me)
    nat.datagram(b"two", peer, me)
    for _ in range(100):
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert sent == [(b"echo:one", me, peer), (b"echo:two", me, peer)]
    assert len(nat.flows) == 1
    await asyncio.sleep(0.25)
    nat.expire()
    assert nat.flows == {}
    nat.close()
    t.close()


@run
async def test_socks5_udp_associate_leaves_from_our_address_and_relays_replies(
    net: FakeNet,
) -> None:
    from weftnet.node.proxy.socks5 import UdpAssociations

    assoc = UdpAssociations(net, lambda: ["100.64.0.2", "fd7a:115c:a1e0::2"])
    server, port = await serve(Socks5Server(dialer(net), udp=assoc).handle)
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"\x05\x01\x00")
    assert await r.readexactly(2) == b"\x05\x00"
    w.write(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))  # UDP ASSOCIATE, address unknown
    reply = await r.readexactly(10)
    assert reply[:4] == b"\x05\x00\x00\x01"
    relay_port = int.from_bytes(reply[8:10], "big")
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
            got.put_nowait(data)

    t, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", relay_port))
    name = b"peer.tail.example"
    t.sendto(b"\x00\x00\x00\x03" + bytes([len(name)]) + name + (7000).to_bytes(2, "big") + b"hi")
    for _ in range(100):
        if net.sent_udp:
            break
        await asyncio.sleep(0.01)
    payload, src, dst = net.sent_udp[0]
    assert payload == b"hi" and dst == (PEER, 7000) and src[0] == "100.64.0.2"
    assert assoc.datagram(b"echo:hi", (PEER, 7000), src)  # the peer's answer
    data = await asyncio.wait_for(got.get(), 2)
    assert (
        data
        == b"\x00\x00\x00\x01"
        + ipaddress.ip_address(PEER).packed
        + (7000).to_bytes(2, "big")
        + b"echo:hi"
    )
    assert not assoc.datagram(b"x", (PEER, 7000), ("100.64.0.2", 9))  # not an association
    w.close()
    for _ in range(100):
        if not assoc.by_port:
            break
        await asyncio.sleep(0.01)
    assert assoc.by_port == {}
    t.close()
    server.close()
