"""Two server replicas on one PostgreSQL (issue 18): shared changes, online state and
uniqueness under concurrency, through the real node protocol and admin API."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from weftlab.control import FakeNode, serve_in_thread
from weftlab.netlab import poll_until
from weftnet import tailcfg
from weftnet.control.server.app import (
    SERVER_KEY_FILE,
    ControlServer,
    ServeError,
    load_or_create_server_key,
)
from weftnet.control.server.hub import Hub, StreamClosed
from weftnet.control.server.replicas import Replicas
from weftnet.control.store.replicas import ReplicaStore
from weftnet.control.store.sql import SqlStore
from weftnet.node.controlclient import ControlClient, parse_login_servers
from weftnet.node.state import NodeState

from .conftest import Control, options_for_test
from .test_api import api, new_key
from .test_hub import FakeService
from .test_hub import node as hub_node

pytestmark = pytest.mark.anyio

CROSS_REPLICA_S = 1.0  # issue 18: a change made on one replica reaches the other's nodes


@pytest.fixture
def two_replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[Control, Control]]:
    """Two servers in this process on one database, sharing the server key (as
    replicas must: nodes pin one key)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir(mode=0o700)
    load_or_create_server_key(tmp_path / "a")
    shutil.copy2(tmp_path / "a" / SERVER_KEY_FILE, tmp_path / "b" / SERVER_KEY_FILE)
    with ExitStack() as stack:
        controls = []
        for name in ("a", "b"):
            server = stack.enter_context(
                serve_in_thread(options_for_test(tmp_path / name, database_url=pg_url))
            )
            controls.append(Control(server.url, server.api_key, tmp_path / name, pg_url))
        yield controls[0], controls[1]


def node_id(answer: tailcfg.RegisterResponse) -> int:
    assert answer.node is not None, answer.error
    return answer.node.id


def peer(frame: tailcfg.MapResponse, node_id: int) -> tailcfg.Node | None:
    nodes = (frame.peers or []) + frame.peers_changed
    return next((n for n in reversed(nodes) if n.id == node_id), None)


async def one_node_on_each(
    http: httpx.AsyncClient, a: Control, b: Control
) -> tuple[FakeNode, int, FakeNode, int]:
    """(node, id) registered through replica A, then through B."""
    key = await new_key(http, a, reusable=True)
    on_a, on_b = FakeNode(a.url, http, "on-a"), FakeNode(b.url, http, "on-b")
    return on_a, node_id(await on_a.register(key)), on_b, node_id(await on_b.register(key))


def online(node_id: int, expected: bool = True) -> Callable[[tailcfg.MapResponse], bool]:
    """A frame predicate: the frame says peer ``node_id`` is (or is not) online."""
    return lambda f: (p := peer(f, node_id)) is not None and p.online == expected


async def test_changes_and_online_state_cross_replicas(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    on_a, id_a, on_b, id_b = await one_node_on_each(http, a, b)
    async with on_b.map_stream() as stream_b:
        await stream_b.until(online(id_a, False))
        async with on_a.map_stream() as stream_a:
            # Online state is shared: each sees the other online.
            await stream_b.until(online(id_a))
            await stream_a.until(online(id_b))
            # An admin change on replica A reaches a stream on replica B within 1 s.
            started = time.monotonic()
            await api(http, a, "POST", f"/nodes/{id_a}/rename", json={"name": "renamed"})
            frame = await stream_b.until(
                lambda f: (p := peer(f, id_a)) is not None and p.given_name == "renamed",
                timeout_s=CROSS_REPLICA_S,
            )
            print(f"rename on A seen on B after {time.monotonic() - started:.3f} s")
            assert frame is not None
        # A's stream ended: B's node sees it offline.
        await stream_b.until(online(id_a, False))
        # Deleting a node through B ends its stream on... B's stream sees A's node go.
        await api(http, b, "DELETE", f"/nodes/{id_a}")
        await stream_b.until(lambda f: id_a in f.peers_removed, timeout_s=CROSS_REPLICA_S)


async def test_one_single_use_key_registers_exactly_one_node_across_replicas(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    key = await new_key(http, a)  # single use
    nodes = [FakeNode((a, b)[i % 2].url, http, f"n{i}") for i in range(50)]
    answers = await asyncio.gather(*(n.register(key) for n in nodes))
    admitted = [r for r in answers if r.machine_authorized and not r.error]
    assert len(admitted) == 1, [r.error for r in answers]
    assert all("auth key" in (r.error or "") for r in answers if r not in admitted)
    assert len(await api(http, b, "GET", "/nodes")) == 1


async def test_200_registrations_split_across_replicas_get_distinct_addresses_and_names(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    key = await new_key(http, b, reusable=True)
    nodes = [FakeNode((a, b)[i % 2].url, http, "same-name") for i in range(200)]
    answers = await asyncio.gather(*(n.register(key) for n in nodes))
    assert all(r.machine_authorized and not r.error for r in answers), {r.error for r in answers}
    rows = await api(http, a, "GET", "/nodes")
    assert len(rows) == 200
    for column in ("ipv4", "ipv6", "given_name"):
        assert len({row[column] for row in rows}) == 200, column


async def test_concurrent_renames_to_one_name_across_replicas_leave_one_holder(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    key = await new_key(http, a, reusable=True)
    ids = [node_id(await FakeNode(a.url, http, f"n{i}").register(key)) for i in range(20)]

    async def rename(i: int, node: int) -> int:
        control = (a, b)[i % 2]
        r = await http.post(
            f"{control.url}/api/v1/nodes/{node}/rename",
            json={"name": "wanted"},
            headers={"Authorization": f"Bearer {control.api_key}"},
        )
        return r.status_code

    statuses = await asyncio.gather(*(rename(i, node) for i, node in enumerate(ids)))
    assert sorted(statuses) == [200] + [409] * 19, statuses
    rows = await api(http, b, "GET", "/nodes")
    assert [row["given_name"] for row in rows].count("wanted") == 1


async def test_a_request_replayed_to_the_other_replica_is_refused(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    key = await new_key(http, a, reusable=True)
    node = FakeNode(a.url, http, "replayed")
    await node.fetch_server_key()
    body = node.seal(node.register_request(auth_key=key))
    assert (await node.post("register", body)).status_code == 200
    path = node.machine_url("register").removeprefix(a.url)
    r = await http.post(b.url + path, content=body)  # recorded, replayed to B
    replayed = tailcfg.RegisterResponse.model_validate_json(node.open(r.content))
    assert r.status_code == 200 and replayed.error == "replayed request"
    fresh = node.seal(node.register_request(auth_key=key))
    r = await http.post(b.url + path, content=fresh)
    assert not tailcfg.RegisterResponse.model_validate_json(node.open(r.content)).error


async def test_a_replica_whose_heartbeat_stopped_no_longer_counts_its_nodes_online(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    _, ghost_id, watcher, _ = await one_node_on_each(http, a, b)
    # A third replica that then died (kill -9): its rows stay, its heartbeat stops.
    store = SqlStore(a.database_url)
    try:
        dead = ReplicaStore(store, "mkey:" + "00" * 32, "deadbeefdeadbeef")
        dead.sync(frozenset({ghost_id}), frozenset(), 5.0, replace=True)
        async with watcher.map_stream() as stream:
            await stream.until(online(ghost_id))
            # With no heartbeat, the live replicas drop it after the lease (5 s).
            await stream.until(online(ghost_id, False), timeout_s=10)
        live = ReplicaStore(store, "mkey:" + "00" * 32).replicas()
        assert len(live) == 2 and "deadbeefdeadbeef" not in {r["id"] for r in live}
    finally:
        store.dispose()


async def test_a_node_with_several_control_urls_skips_one_it_cannot_reach(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control], tmp_path: Path
) -> None:
    a, b = two_replicas
    key = await new_key(http, a)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
        state = NodeState.load(tmp_path / "node")
        client = ControlClient(state, f"{dead},{b.url}/")
        try:
            assert client.urls == [dead, b.url] and client.url == dead
            answer = await client.register(auth_key=key, hostname="multi")
            assert answer.machine_authorized and client.url == b.url
            pin = state.pin()
            assert pin is not None and pin.login_server == f"{dead},{b.url}"
            # The map stream's failover: round robin over the list.
            assert client.fail_over() and client.url == dead
            assert client.fail_over() and client.url == b.url
            frames = client.map_stream([], "multi")
            assert (await anext(frames)).node is not None
            await frames.aclose()
        finally:
            await client.close()
    finally:
        closed.close()
    assert not ControlClient(state, a.url).fail_over()  # one URL: nowhere to go


@pytest.mark.parametrize("text", ["", "ftp://x", "http://a,", "http://a,http://a/"])
def test_login_server_lists_are_checked(text: str) -> None:
    with pytest.raises(ValueError, match="--login-server"):
        parse_login_servers(text)


async def test_a_listener_that_lost_its_connection_catches_up_after_reconnecting(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    _, id_a, on_b, _ = await one_node_on_each(http, a, b)
    async with on_b.map_stream() as stream_b:
        await stream_b.until(lambda f: peer(f, id_a) is not None)
        # Every LISTEN connection is cut (a database restart, a proxy's idle timeout):
        # notices sent until the listeners are back are lost.
        store = SqlStore(a.database_url)
        try:
            with store.engine.begin() as conn:
                cut = conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                ).all()
        finally:
            store.dispose()
        assert len(cut) == 2  # one listener per replica
        await api(http, a, "POST", f"/nodes/{id_a}/rename", json={"name": "while-cut"})
        # B's listener reconnects (backoff from 0.25 s) and rebuilds everything.
        await stream_b.until(
            lambda f: (p := peer(f, id_a)) is not None and p.given_name == "while-cut",
            timeout_s=5,
        )


def test_a_replica_with_another_server_key_refuses_to_start(
    two_replicas: tuple[Control, Control], tmp_path: Path
) -> None:
    a, _ = two_replicas
    server = ControlServer(options_for_test(tmp_path / "c", database_url=a.database_url))
    with pytest.raises(ServeError, match="replicas must share one server key"):
        server.open()
    server.close()


async def test_a_replica_that_loses_the_database_ends_its_streams() -> None:
    # A real PostgreSQL URL on a port nobody listens on: every sync fails.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    store = SqlStore(f"postgresql+psycopg://postgres@127.0.0.1:{closed.getsockname()[1]}/x")
    service = FakeService()
    service.nodes[1] = hub_node(1)
    hub = Hub(service)  # type: ignore[arg-type]
    Replicas(ReplicaStore(store, "mkey:" + "00" * 32), hub, heartbeat_s=0.05, lease_s=0.3).attach()
    await hub.start()
    try:
        sub = hub.connect(1)
        with pytest.raises(StreamClosed):
            while True:  # keepalive timeouts, maybe a map, until the stream is ended
                await sub.next(timeout_s=0.5)
        hub.disconnect(sub)  # as the stream's handler does when it ends
        assert not hub.closed  # not a shutdown: the hub still serves
    finally:
        await hub.stop()
        store.dispose()
        closed.close()


def test_a_replica_stopping_cleanly_leaves_the_group_at_once(
    two_replicas: tuple[Control, Control], tmp_path: Path
) -> None:
    a, _ = two_replicas
    (tmp_path / "c").mkdir(mode=0o700)
    shutil.copy2(a.data_dir / SERVER_KEY_FILE, tmp_path / "c" / SERVER_KEY_FILE)
    store = SqlStore(a.database_url)
    try:
        rows = ReplicaStore(store, "mkey:" + "00" * 32).replicas
        with serve_in_thread(options_for_test(tmp_path / "c", database_url=a.database_url)):
            poll_until(lambda: len(rows()) == 3, timeout_s=5, what="the third replica's row")
        assert len(rows()) == 2  # gone when it stopped, not a lease later
    finally:
        store.dispose()


async def test_a_relay_registered_with_one_replica_is_in_every_replicas_relay_map(
    http: httpx.AsyncClient, two_replicas: tuple[Control, Control]
) -> None:
    a, b = two_replicas
    _, _, on_b, _ = await one_node_on_each(http, a, b)
    relay = {"region": "shared", "url": "http://relay.example:8443", "public_key": RELAY_KEY}

    def lists_shared(listed: bool) -> Callable[[tailcfg.MapResponse], bool]:
        return lambda f: (
            f.relay_map is not None and ("shared" in {r.name for r in f.relay_map}) == listed
        )

    async with on_b.map_stream() as stream_b:
        await stream_b.until(lists_shared(False))
        await api(http, a, "POST", "/relays", json=relay)  # the relay registers with A
        await stream_b.until(lists_shared(True), timeout_s=CROSS_REPLICA_S)
        assert "shared" in {r["region"] for r in await api(http, b, "GET", "/relays")}
        await api(http, b, "DELETE", "/relays/shared")  # an admin removes it through B
        await stream_b.until(lists_shared(False), timeout_s=CROSS_REPLICA_S)
    deadline_at = time.monotonic() + CROSS_REPLICA_S  # and A's own list drops it
    while "shared" in {r["region"] for r in await api(http, a, "GET", "/relays")}:
        assert time.monotonic() < deadline_at, "A still lists the relay removed through B"
        await asyncio.sleep(0.05)


RELAY_KEY = "relaykey:" + "ab" * 32
