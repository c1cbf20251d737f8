"""Two relays of one region over 127.0.0.1: nodes on either reach each other through the
mesh, batches stay batched, only holders of the mesh secret may join, and a relay that
goes away takes its clients' presence with it while they move to the other."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.relay.helpers import Inbox, RawConn, allow_all, keypair, run, until
from weftnet.node.supervisor import Supervisor
from weftnet.relay import protocol as p
from weftnet.relay.client import RelayClient, RelayTarget
from weftnet.relay.mesh import Mesh, Spawn
from weftnet.relay.metrics import RelayCollector
from weftnet.relay.server import NOT_MESH_PEER, RelayServer
from weftnet.relay.standalone import RelayError, RelayOptions, StandaloneRelay

SECRET = bytes(range(32)).hex().encode()  # fixed: test ids must not vary (xdist)


@asynccontextmanager
async def mesh_relay(
    secret: bytes | None = SECRET, spawn: Spawn | None = None
) -> AsyncIterator[tuple[RelayServer, str]]:
    private, _ = keypair()
    mesh = Mesh(secret, private, spawn=spawn) if secret is not None else None
    server = RelayServer(private, allow_all(), mesh=mesh)
    listener = await server.serve_tcp("127.0.0.1", 0)
    try:
        yield server, f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    finally:
        if mesh is not None:
            await mesh.close()
        await server.close()


async def _join(a: tuple[RelayServer, str], b: tuple[RelayServer, str]) -> None:
    """Each relay watches the other, as the relay map would make them."""
    (sa, ua), (sb, ub) = a, b
    assert sa.mesh is not None and sb.mesh is not None
    await sa.mesh.set_peers([RelayTarget("b", ub, sb.public_key)])
    await sb.mesh.set_peers([RelayTarget("a", ua, sa.public_key)])


@asynccontextmanager
async def node(url: str | list[str], **kw: Any) -> AsyncIterator[tuple[RelayClient, Inbox]]:
    urls = [url] if isinstance(url, str) else url
    inbox = Inbox()
    client = RelayClient(urls[0], keypair()[0], inbox, backoff_initial_s=0.05, **kw)
    client.set_targets([RelayTarget(u, u) for u in urls])
    client.start()
    try:
        assert await client.wait_connected(5.0), client.last_error
        yield client, inbox
    finally:
        await client.close()


def _metric(server: RelayServer, name: str) -> float:
    """A value the relay's Prometheus collector reports now."""
    registry = CollectorRegistry()
    registry.register(RelayCollector(server))
    value = registry.get_sample_value(name) or registry.get_sample_value(name + "_total")
    assert value is not None, name
    return value


def test_nodes_on_different_relays_reach_each_other_through_the_mesh() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(mesh_relay())
            b = await stack.enter_async_context(mesh_relay())
            await _join(a, b)
            x, x_in = await stack.enter_async_context(node(a[1]))
            batches: list[tuple[bytes, bytes, int]] = []
            y, y_in = await stack.enter_async_context(
                node(b[1], on_batch=lambda s, d, g: batches.append((s, d, g)))
            )
            assert a[0].mesh is not None and b[0].mesh is not None
            await until(lambda: a[0].mesh.holds(y.node_key) and b[0].mesh.holds(x.node_key))
            assert not a[0].mesh.holds(x.node_key)  # its own client is local, not a peer's
            x.send(y.node_key, b"to y")
            y.send(x.node_key, b"to x")
            await until(lambda: y_in.packets and x_in.packets, what="both packets")
            assert y_in.packets == [(x.node_key, b"to y")]  # the original source, kept
            assert x_in.packets == [(y.node_key, b"to x")]
            data = os.urandom(1200 * 20 + 7)
            assert x.send_batch(y.node_key, data, 1200) == 21
            await until(lambda: bool(batches), what="the batch")
            assert batches == [(x.node_key, data, 1200)]  # one frame all the way
            assert a[0].mesh_forwarded == 22 and b[0].mesh_delivered == 22
            assert _metric(a[0], "weft_relay_mesh_forwarded_packets") == 22
            assert _metric(b[0], "weft_relay_mesh_delivered_packets") == 22
            assert _metric(a[0], "weft_relay_mesh_peers") == 1
            assert a[0].client(x.node_key).drops_no_peer == 0  # type: ignore[union-attr]
            peers = a[0].mesh.peers()
            assert [(s.name, s.connected, s.keys, s.forwarded) for s in peers] == [
                ("b", True, 1, 22)
            ]

    run(scenario())


def test_a_relay_without_the_secret_cannot_join_and_a_node_cannot_inject() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(mesh_relay())
            wrong = await stack.enter_async_context(mesh_relay(os.urandom(32).hex().encode()))
            x, _ = await stack.enter_async_context(node(a[1]))
            assert wrong[0].mesh is not None
            await wrong[0].mesh.set_peers([RelayTarget("a", a[1])])
            await asyncio.sleep(0.3)
            assert not wrong[0].mesh.holds(x.node_key)
            assert not wrong[0].mesh.peers()[0].connected

            # A node with a made-up proof: refused before it learns anything.
            port = int(a[1].rsplit(":", 1)[1])
            raw = await RawConn.open(port)
            first = await raw.next_frame()
            assert isinstance(first, p.ServerKey)
            private, _ = keypair()
            hello = p.ClientHello(2, False, first.challenge, p.FEATURES, os.urandom(32))
            raw.writer.write(p.ClientInfo.create(private, first.key, hello, os.urandom(24)).pack())
            assert await raw.frames_until_eof() == [p.Error(NOT_MESH_PEER)]

            # An admitted node that sends a mesh frame is cut off as malformed.
            raw = await RawConn.open(port)
            private, public = keypair()
            assert isinstance(await raw.handshake(private), p.ServerInfo)
            raw.writer.write(p.ForwardPacket(public, x.node_key, b"forged").pack())
            frames = await raw.frames_until_eof()
            assert isinstance(frames[-1], p.Error) and "ForwardPacket" in frames[-1].reason

    run(scenario())


def test_a_relay_with_the_secret_but_no_mesh_refuses_peers() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            plain = await stack.enter_async_context(mesh_relay(None))
            a = await stack.enter_async_context(mesh_relay())
            assert a[0].mesh is not None
            await a[0].mesh.set_peers([RelayTarget("plain", plain[1])])
            await asyncio.sleep(0.3)
            assert not a[0].mesh.peers()[0].connected

    run(scenario())


class _Liar(Mesh):
    """A relay that lets any peer in and answers with a proof it could not have made."""

    def answer(self, hello: p.ClientHello, client_key: bytes) -> bytes | None:
        return os.urandom(p.MESH_PROOF_LEN)


def test_a_peer_must_prove_the_secret_back() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            private, _ = keypair()
            liar = RelayServer(private, allow_all(), mesh=_Liar(SECRET, private))
            stack.push_async_callback(liar.close)
            port = (await liar.serve_tcp("127.0.0.1", 0)).sockets[0].getsockname()[1]
            a = await stack.enter_async_context(mesh_relay())
            assert a[0].mesh is not None
            await a[0].mesh.set_peers([RelayTarget("liar", f"http://127.0.0.1:{port}")])
            mesh = a[0].mesh
            await until(lambda: mesh.peers()[0].last_error is not None, what="the refusal")
            assert "did not prove it holds the mesh secret" in str(mesh.peers()[0].last_error)
            assert not mesh.peers()[0].connected

    run(scenario())


def test_a_relay_going_away_moves_its_clients_and_its_presence_goes_with_it() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(mesh_relay())
            b_cm = mesh_relay()
            b = await b_cm.__aenter__()
            try:
                await _join(a, b)
                x, _ = await stack.enter_async_context(node(a[1]))
                y, y_in = await stack.enter_async_context(node([b[1], a[1]]))
                assert a[0].mesh is not None
                await until(lambda: a[0].mesh.holds(y.node_key))
                assert y.target.url == b[1]
            finally:
                await b_cm.__aexit__(None, None, None)
            took = await until(lambda: y.connected and y.target.url == a[1], what="y on a")
            assert took < 5.0
            assert not a[0].mesh.holds(y.node_key)  # b's word went with b
            assert a[0].client(y.node_key) is not None
            x.send(y.node_key, b"after")
            await until(lambda: y_in.payloads() == [b"after"], what="x to y on one relay")

    run(scenario())


def test_leaving_the_target_list_cuts_the_connection_at_once() -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(mesh_relay())
            b = await stack.enter_async_context(mesh_relay())
            y, _ = await stack.enter_async_context(node([a[1], b[1]]))
            assert y.target.url == a[1]
            y.set_targets([RelayTarget(b[1], b[1]), RelayTarget(a[1], a[1])])
            assert y.target.url == a[1] and y.connected  # still listed: stays
            y.set_targets([RelayTarget(b[1], b[1])])
            await until(lambda: y.connected and b[0].client(y.node_key) is not None)
            await until(lambda: a[0].client(y.node_key) is None)
            async with mesh_relay() as c:
                # Cut from b, it goes to the first listed (c), not past it (to a).
                y.set_targets([RelayTarget(c[1], c[1]), RelayTarget(a[1], a[1])])
                await until(lambda: y.connected and c[0].client(y.node_key) is not None)
                assert y.connections == 3

    run(scenario())


def test_a_mesh_connection_that_fails_is_restarted_by_its_supervisor() -> None:
    async def scenario() -> None:
        supervisor = Supervisor(first_delay_s=0.05)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(supervisor.close)
            a = await stack.enter_async_context(mesh_relay(spawn=supervisor.spawn))
            b = await stack.enter_async_context(mesh_relay())
            await _join(a, b)
            y, _ = await stack.enter_async_context(node(b[1]))
            assert a[0].mesh is not None
            await until(lambda: a[0].mesh.holds(y.node_key))
            assert supervisor.inject_fault("mesh b")
            await until(lambda: supervisor.tasks["mesh b"].restarts == 1, what="the restart")
            await until(lambda: a[0].mesh.peers()[0].connected and a[0].mesh.holds(y.node_key))

    run(scenario())


def _options(tmp_path: Path, **kw: Any) -> RelayOptions:
    return RelayOptions("http://127.0.0.1:1", "k", "eu-1", data_dir=tmp_path, **kw)


@pytest.mark.parametrize(
    ("mode", "content", "kw", "message"),
    [
        (0o600, SECRET, {"mesh": "eu"}, "--mesh needs --mesh-secret-file"),
        (0o600, SECRET, {"mesh_peers": ["http://h:1"]}, "go with --mesh REGION"),
        (0o600, SECRET, {"mesh": "eu-1", "secret": True}, "make them differ"),
        (0o644, SECRET, {"mesh": "eu", "secret": True}, "chmod 600"),
        (0o600, b"short", {"mesh": "eu", "secret": True}, "openssl rand"),
        (0o600, SECRET, {"mesh": "e u", "secret": True}, "invalid region name"),
        (0o600, SECRET, {"mesh": "eu", "secret": True, "mesh_peers": ["ftp://x"]}, "--mesh-peer"),
    ],
)
def test_a_mesh_relay_refuses_a_bad_setup_in_one_line_without_the_secret(
    tmp_path: Path, mode: int, content: bytes, kw: dict[str, Any], message: str
) -> None:
    path = tmp_path / "mesh.secret"
    path.write_bytes(content)
    path.chmod(mode)
    if kw.pop("secret", False):
        kw["mesh_secret_file"] = path
    with pytest.raises(RelayError, match=message) as e:
        StandaloneRelay(_options(tmp_path, **kw))
    assert "\n" not in str(e.value) and content.decode() not in str(e.value)


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RelayError, match="cannot read the mesh secret"):
        StandaloneRelay(_options(tmp_path, mesh="eu", mesh_secret_file=tmp_path / "nope"))
