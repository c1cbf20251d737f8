"""The relay and STUN server inside ``weft-control serve``, over 127.0.0.1.

Nodes register with ``FakeNode``; their node keys connect to the embedded relay with the
real ``RelayClient``, at the URL and pinned key the relay map gives them. Waits poll
with deadlines.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import FakeNode, serve_in_thread
from weftnet import controlbox, keyfile, stun, tailcfg
from weftnet.control.server.app import ServeOptions
from weftnet.relay.client import RelayClient

from .conftest import TEST_KEEPALIVE_S, Control

pytestmark = pytest.mark.anyio

REVOCATION_DEADLINE_S = 2.0  # issue 4: a revoked node is cut off within 2 s
FAST_RETRY = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}  # reconnect attempts, quickly


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stun_port() -> int:
    return free_udp_port()


@pytest.fixture
def relay_control(tmp_path: Path, stun_port: int) -> Iterator[Control]:
    """A server with its relay and STUN server (SQLite: the relay does not touch SQL)."""
    data_dir = tmp_path / "data"
    options = ServeOptions(
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        keepalive_s=TEST_KEEPALIVE_S,
        access_log=False,
        region="home",
        stun_port=stun_port,
    )
    with serve_in_thread(options) as server:
        yield Control(server.url, server.api_key, data_dir, "")


async def api(http: httpx.AsyncClient, control: Control, method: str, path: str, **kw: Any) -> Any:
    r = await http.request(
        method,
        f"{control.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {control.api_key}"},
        **kw,
    )
    assert r.status_code < 300, r.text
    return r.json()


async def joined(http: httpx.AsyncClient, control: Control, hostname: str) -> FakeNode:
    users = await api(http, control, "GET", "/users")
    if "alice" not in [u["name"] for u in users]:
        await api(http, control, "POST", "/users", json={"name": "alice"})
    key = (await api(http, control, "POST", "/keys", json={"user": "alice"}))["key"]
    node = FakeNode(control.url, http, hostname)
    answer = await node.register(key)
    assert answer.machine_authorized, answer.error
    return node


def pinned(region: tailcfg.RelayRegion) -> bytes:
    return controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, region.public_key)


def client(
    node: FakeNode, region: tailcfg.RelayRegion, inbox: list[tuple[bytes, bytes]] | None = None
) -> RelayClient:
    def on_packet(src: bytes, packet: bytes) -> None:
        if inbox is not None:
            inbox.append((src, packet))

    return RelayClient(
        region.url, bytes(node.node), on_packet, server_key=pinned(region), **FAST_RETRY
    )


async def until(condition: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` holds; AssertionError after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def first_map(node: FakeNode) -> tailcfg.MapResponse:
    [frame] = await node.map_once()
    assert frame.error is None, frame.error
    return frame


async def test_relay_map_names_the_embedded_relay_and_its_pinned_key(
    http: httpx.AsyncClient, relay_control: Control, stun_port: int
) -> None:
    node = await joined(http, relay_control, "a")
    async with node.map_stream() as stream:
        full = await stream.next()
    assert full.relay_map is not None
    [region] = full.relay_map
    assert region.name == "home"
    assert region.url == relay_control.url  # as this node reached the server
    assert region.stun_port == stun_port
    assert region.public_key.startswith(tailcfg.RELAY_KEY_PREFIX)
    key_file = relay_control.data_dir / "relay.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = controlbox.key_from_text(keyfile.PRIVATE_KEY_PREFIX, key_file.read_text().strip())
    assert keyfile.public_of(private) == pinned(region)
    # The key the map pins is the key the relay presents: a pinned client connects.
    async with client(node, region) as c:
        assert await c.wait_connected(5), c.last_error
        assert c.server_key == pinned(region)
    listed = await api(http, relay_control, "GET", "/relays")
    assert listed == [
        {
            "region": "home",
            "url": relay_control.url,
            "public_key": region.public_key,
            "stun_port": stun_port,
            "mesh": None,
            "embedded": True,
            "registered_at": None,
            "last_seen": None,
            "expires_at": None,
        }
    ]


async def test_registered_nodes_exchange_packets_and_unknown_keys_are_refused(
    http: httpx.AsyncClient, relay_control: Control
) -> None:
    a, b = await joined(http, relay_control, "a"), await joined(http, relay_control, "b")
    [region] = (await first_map(a)).relay_map or []
    a_in: list[tuple[bytes, bytes]] = []
    b_in: list[tuple[bytes, bytes]] = []
    a_key, b_key = bytes(a.node.public_key), bytes(b.node.public_key)
    async with client(a, region, a_in) as ca, client(b, region, b_in) as cb:
        assert await ca.wait_connected(5), ca.last_error
        assert await cb.wait_connected(5), cb.last_error
        for i in range(20):
            ca.send(b_key, b"to b %d" % i)
            cb.send(a_key, b"to a %d" % i)
        await until(lambda: len(a_in) == len(b_in) == 20, 5, "20 packets each way")
        assert a_in[0] == (b_key, b"to a 0") and b_in[-1] == (a_key, b"to b 19")
        health = (await http.get(f"{relay_control.url}/health")).json()
        assert health["relay_clients"] == 2

        stranger = FakeNode(relay_control.url, http, "stranger")  # never registered
        async with client(stranger, region) as cs:
            await until(lambda: cs.last_error is not None, 5, "the stranger's refusal")
            assert not cs.connected
            assert "unknown node key" in (cs.last_error or "")


@pytest.mark.parametrize("how", ["delete", "expire", "new node key"])
async def test_a_revoked_node_is_cut_off_within_2s_and_stays_out(
    http: httpx.AsyncClient, relay_control: Control, how: str
) -> None:
    a, b = await joined(http, relay_control, "a"), await joined(http, relay_control, "b")
    [region] = (await first_map(a)).relay_map or []
    async with client(a, region) as ca, client(b, region) as cb:
        assert await ca.wait_connected(5) and await cb.wait_connected(5), ca.last_error
        nodes = await api(http, relay_control, "GET", "/nodes")
        [node_a] = [n for n in nodes if n["given_name"] == "a"]
        started = time.monotonic()
        if how == "delete":
            await api(http, relay_control, "DELETE", f"/nodes/{node_a['id']}")
        elif how == "expire":
            await api(http, relay_control, "POST", f"/nodes/{node_a['id']}/expire")
        else:  # the machine logs in again with a new node key; the old one is revoked
            old_private = a.node
            old = a.rotate_node_key()
            answer = await a.register(None, old_node_key=old)
            assert answer.machine_authorized, answer.error
            a.node = old_private  # the client still holds the old key
        took = await until(lambda: not ca.connected, REVOCATION_DEADLINE_S, "a cut off")
        why = ca.last_error or ""  # read before the next attempt (>= 25 ms later) replaces it
        print(f"relay revocation ({how}): {took * 1000:.1f} ms after the API call")
        assert "node key revoked" in why
        # It keeps trying, and is refused every time; b is untouched.
        await until(lambda: "unknown node key" in (ca.last_error or ""), 2, "a's reconnect refused")
        assert ca.connections == 1 and not ca.connected
        assert cb.connected and cb.connections == 1
        assert time.monotonic() - started < 10


async def test_home_relay_reaches_the_peers(
    http: httpx.AsyncClient, relay_control: Control
) -> None:
    a, b = await joined(http, relay_control, "a"), await joined(http, relay_control, "b")
    async with a.map_stream() as stream:
        [peer] = (await stream.next()).peers or []
        assert peer.home_relay is None
        await b.map_once(omit_peers=True, home_relay="home")
        changed = await stream.until(lambda f: bool(f.peers_changed), 2)
        assert [(p.id, p.home_relay) for p in changed.peers_changed] == [(peer.id, "home")]
        [own] = await b.map_once(omit_peers=True, home_relay="home")
        assert own.node is not None and own.node.home_relay == "home"
        nodes = await api(http, relay_control, "GET", "/nodes")
        assert {n["given_name"]: n["home_relay"] for n in nodes} == {"a": None, "b": "home"}
        # A map request without it means "no home relay now".
        await b.map_once(omit_peers=True)
        changed = await stream.until(lambda f: bool(f.peers_changed), 2)
        assert changed.peers_changed[0].home_relay is None
    [refused] = await b.map_once(home_relay="no spaces allowed")
    assert refused.error is not None and "home_relay" in refused.error


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait(data)


async def test_stun_answers_binding_requests_with_the_source_address_and_ignores_garbage(
    relay_control: Control, stun_port: int
) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        Datagrams, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", stun_port)
    )
    try:
        me = transport.get_extra_info("sockname")
        request = stun.binding_request(b"f" * 12, "weftnet")
        bad_fingerprint = request[:-1] + bytes([request[-1] ^ 0xFF])
        garbage = [
            b"",
            b"\x00",
            b"hello, is this STUN?",
            stun.binding_response(b"r" * 12, ("1.2.3.4", 5)),  # a response, not a request
            stun.binding_request(b"t" * 12, "weftnet")[:-4],  # truncated
            stun.binding_request(b"s" * 12),  # 28 bytes: shorter than its 40-byte answer
            bad_fingerprint,
            bytes(20) + b"\x00" * 1400,
        ]
        for datagram in garbage:
            transport.sendto(datagram)
        transport.sendto(stun.binding_request(b"x" * 12, "weftnet"))
        answer = await asyncio.wait_for(proto.received.get(), 2)
        assert stun.parse_response(answer) == (b"x" * 12, ("127.0.0.1", me[1]))
        assert proto.received.empty()  # nothing came back for the garbage
        transport.sendto(stun.binding_request(b"y" * 12, "weftnet"))
        answer = await asyncio.wait_for(proto.received.get(), 2)
        assert stun.parse_response(answer)[0] == b"y" * 12  # still serving
    finally:
        transport.close()


async def test_shutdown_tells_relay_clients_and_finishes(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    options = ServeOptions(
        data_dir=tmp_path / "data", host="127.0.0.1", port=0, access_log=False, stun_port=0
    )
    c: RelayClient | None = None
    try:
        with serve_in_thread(options) as server:
            control = Control(server.url, server.api_key, options.data_dir, "")
            node = await joined(http, control, "a")
            [region] = (await first_map(node)).relay_map or []
            assert region.stun_port is None  # no STUN server: none in the map
            c = RelayClient(region.url, bytes(node.node), lambda *_: None, backoff_initial_s=5.0)
            c.start()
            assert await c.wait_connected(5), c.last_error
            started = time.monotonic()
        # The server has stopped (this loop was blocked meanwhile): the client reads why.
        assert time.monotonic() - started < 5
        await until(lambda: not c.connected, 5, "the relay client dropped")
        assert "relay shutting down" in (c.last_error or "")
    finally:
        if c is not None:
            await c.close()


async def test_no_relay_means_an_empty_relay_map(http: httpx.AsyncClient, tmp_path: Path) -> None:
    options = ServeOptions(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        access_log=False,
        stun_port=0,
        relay=False,
    )
    with serve_in_thread(options) as server:
        control = Control(server.url, server.api_key, options.data_dir, "")
        node = await joined(http, control, "a")
        assert (await first_map(node)).relay_map == []
        assert not (options.data_dir / "relay.key").exists()
        r = await http.get(f"{control.url}/relay", headers={"Upgrade": "weft-relay"})
        assert r.status_code == 404
