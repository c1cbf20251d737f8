"""Routes through the server (docs/routes.md): the admin API, the map stream carrying an
approval and its withdrawal as deltas, old viewers, and dead-router detection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from weftlab.control import FakeNode, MapStream
from weftnet import tailcfg
from weftnet.control.server import app

from .conftest import Control
from .test_api import api, new_key

pytestmark = pytest.mark.anyio

LAN = "198.18.20.0/24"
APPROVAL_DEADLINE_S = 2.0  # issue 14: a route is usable within 2 s of approval


def _router_of(frame: tailcfg.MapResponse, router_id: int) -> tailcfg.Node | None:
    return next(
        (n for n in [*(frame.peers or []), *frame.peers_changed] if n.id == router_id), None
    )


async def test_approval_reaches_viewers_as_a_delta_and_old_viewers_never_see_routes(
    http: httpx.AsyncClient, control: Control
) -> None:
    key = await new_key(http, control, reusable=True)
    nodes, ids = {}, {}
    for name in ("router", "viewer", "old"):
        nodes[name] = FakeNode(control.url, http, name)
        answer = await nodes[name].register(key)
        assert answer.machine_authorized and answer.node is not None
        ids[name] = answer.node.id
    router_id = ids["router"]
    hostinfo = tailcfg.Hostinfo(hostname="router", routable_ips=[LAN, "198.18.20.1/24"])
    async with (
        nodes["router"].map_stream(hostinfo=hostinfo),
        nodes["viewer"].map_stream() as viewer,
        nodes["old"].map_stream(version=tailcfg.ROUTES_VERSION - 1) as old,
    ):
        first = await viewer.until(
            lambda f: (r := _router_of(f, router_id)) is not None and r.online
        )
        status = await api(http, control, "GET", f"/nodes/{router_id}/routes")
        assert (status["announced"], status["approved"], status["serving"]) == ([LAN], [], [])
        assert _router_of(first, router_id).allowed_ips == _router_of(first, router_id).addresses  # type: ignore[union-attr]

        def routed(f: tailcfg.MapResponse) -> bool:
            r = _router_of(f, router_id)
            return r is not None and LAN in r.allowed_ips and r.primary_routes == [LAN]

        start = time.monotonic()
        out = await api(http, control, "POST", f"/nodes/{router_id}/routes", json={"routes": [LAN]})
        assert out["approved"] == [LAN] and out["serving"] == [LAN]
        frame = await viewer.until(routed, APPROVAL_DEADLINE_S)
        assert frame.peers is None  # a delta, not a new full map
        assert time.monotonic() - start < APPROVAL_DEADLINE_S

        def withdrawn(f: tailcfg.MapResponse) -> bool:
            r = _router_of(f, router_id)
            return r is not None and r.allowed_ips == r.addresses

        start = time.monotonic()
        await api(http, control, "POST", f"/nodes/{router_id}/routes", json={"routes": []})
        await viewer.until(withdrawn, APPROVAL_DEADLINE_S)
        assert time.monotonic() - start < APPROVAL_DEADLINE_S
        await asyncio.sleep(0.2)
        _never_routed(old, router_id)
    listed = await api(http, control, "GET", "/routes")
    assert [r["id"] for r in listed] == [router_id]


async def test_failover_moves_the_primary_and_the_old_one_does_not_take_it_back(
    http: httpx.AsyncClient, control: Control
) -> None:
    key = await new_key(http, control, reusable=True)
    nodes, ids = {}, {}
    for name in ("r1", "r2", "viewer"):
        nodes[name] = FakeNode(control.url, http, name)
        answer = await nodes[name].register(key)
        assert answer.node is not None
        ids[name] = answer.node.id
    hostinfo = tailcfg.Hostinfo(routable_ips=[LAN])

    def primary_is(name: str) -> Callable[[tailcfg.MapResponse], bool]:
        def check(f: tailcfg.MapResponse) -> bool:
            r = _router_of(f, ids[name])
            return r is not None and r.primary_routes == [LAN]

        return check

    async with nodes["viewer"].map_stream() as viewer, nodes["r2"].map_stream(hostinfo=hostinfo):
        async with nodes["r1"].map_stream(hostinfo=hostinfo):
            # Both routers' map requests are in (routes announced) before any approval:
            # else the election could rightly pick r2 first, and then keep it.
            deadline = time.monotonic() + 5
            for name in ("r1", "r2"):
                while (
                    LAN
                    not in (await api(http, control, "GET", f"/nodes/{ids[name]}/routes"))[
                        "announced"
                    ]
                ):
                    assert time.monotonic() < deadline, f"{name}'s routes never announced"
                    await asyncio.sleep(0.02)
            for name in ("r1", "r2"):
                await api(
                    http, control, "POST", f"/nodes/{ids[name]}/routes", json={"routes": [LAN]}
                )
            await viewer.until(primary_is("r1"), APPROVAL_DEADLINE_S)
        # r1's stream ended (as when its process is killed): r2 takes over.
        await viewer.until(primary_is("r2"), APPROVAL_DEADLINE_S)
        async with nodes["r1"].map_stream(hostinfo=hostinfo) as back:
            await back.next()
            await asyncio.sleep(0.5)
            r1 = await api(http, control, "GET", f"/nodes/{ids['r1']}/routes")
            r2 = await api(http, control, "GET", f"/nodes/{ids['r2']}/routes")
            assert (r1["serving"], r2["serving"]) == ([], [LAN])  # no flapping


def _never_routed(stream: MapStream, router_id: int) -> None:
    seen = [n for f in stream.received for n in [*(f.peers or []), *f.peers_changed]]
    assert any(n.id == router_id for n in seen)
    assert all(n.allowed_ips == n.addresses and not n.primary_routes for n in seen)


async def test_route_api_refuses_bad_prefixes_and_unknown_nodes(
    http: httpx.AsyncClient, control: Control
) -> None:
    key = await new_key(http, control)
    node = FakeNode(control.url, http, "r")
    node_id = (await node.register(key)).node.id  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {control.api_key}"}
    r = await http.post(
        f"{control.url}/api/v1/nodes/{node_id}/routes",
        json={"routes": ["10.0.0.1/8"]},
        headers=headers,
    )
    assert r.status_code == 400 and "non-address bits set; expected 10.0.0.0/8" in r.json()["error"]
    r = await http.get(f"{control.url}/api/v1/nodes/9999/routes", headers=headers)
    assert r.status_code == 404
    out = await api(http, control, "POST", f"/nodes/{node_id}/routes", json={"routes": ["::/0"]})
    assert out["approved"] == ["0.0.0.0/0", "::/0"] and out["serving"] == []  # not announced


def test_streams_of_routers_keep_alive_more_often() -> None:
    from weftnet.control.domain import netmap
    from weftnet.control.domain.records import Node
    from weftnet.control.server.hub import Hub
    from weftnet.control.service import ControlService

    from .memstore import MemoryStore

    hub = Hub(ControlService(MemoryStore()), keepalive_s=15.0, router_keepalive_s=3.0)
    base = dict(
        user_id=None, tags=(), ephemeral=False, created_at=0.0, key_expiry=None, authorized_at=0.0
    )
    nodes = {
        i: Node(
            id=i,
            machine_key=f"mkey:{i}",
            node_key=f"nodekey:{i}",
            hostname=f"h{i}",
            given_name=f"h{i}",
            ipv4=f"100.64.0.{i}",
            ipv6=f"fd7a:115c:a1e0::{i}",
            announced_routes=(LAN,) if i == 1 else (),
            approved_routes=(LAN,) if i == 1 else (),
            **base,  # type: ignore[arg-type]
        )
        for i in (1, 2)
    }
    assert hub.keepalive_for(1) == 15.0  # no map yet
    hub.current = netmap.NetMap(nodes, {}, {1, 2}, 0.0, "weft.internal")
    assert (hub.keepalive_for(1), hub.keepalive_for(2)) == (3.0, 15.0)


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_accepted_connections_inherit_the_tcp_user_timeout() -> None:
    listener = app.bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            got = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert got == int(app.TCP_USER_TIMEOUT_S * 1000)
    finally:
        listener.close()
