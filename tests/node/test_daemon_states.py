"""The daemon's states end to end on a stand-in engine and an in-memory control server:
`weft up` after down, logout and a restart (D4), what a map refusal means (D5), bad
peers (D2) and bad relays (D1) in the map, and the endpoint cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.node.support import SERVER, FakeServer, make_daemon, node
from weftnet import tailcfg
from weftnet.endpoint import Endpoint
from weftnet.node import status
from weftnet.node.api import NodeApi
from weftnet.node.daemon import NodeDaemon

ME = node(1, "me", ["100.64.0.1"])
PEERS = [node(2, "a", ["100.64.0.2"]), node(3, "b", ["100.64.0.3"])]
UP = {"login_server": SERVER, "auth_key": "weftkey-test", "hostname": "me"}


def run(tmp_path: Path, server: FakeServer, body: Callable[[NodeDaemon], Awaitable[Any]],
        **kw: Any) -> Any:  # fmt: skip
    async def scenario() -> Any:
        d = make_daemon(tmp_path, server, **kw)
        await d.start()
        try:
            return await body(d)
        finally:
            await d.close()

    return asyncio.run(scenario())


async def poll(what: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_up_after_down_waits_for_the_next_map(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)

    async def body(d: NodeDaemon) -> None:
        assert (await d.up(UP))["result"] == {"state": "Running"}
        assert (await d.down())["result"] == {"state": "Stopped"}
        assert d.peers.by_id == {} and d.engine.addresses == []
        server.first_frame_delay_s = 0.3  # the map comes a while after `weft up`
        t0 = time.monotonic()
        answer = await d.up({})
        assert answer["result"] == {"state": "Running"}, answer
        assert time.monotonic() - t0 >= 0.25 and set(d.peers.by_id) == {2, 3}
        assert [str(a) for a in d.engine.addresses] == ["100.64.0.1/32"]
        assert "100.64.0.0/10" in [str(r) for r in d.engine.routes]  # routes are back

    run(tmp_path, server, body)


def test_up_with_a_key_after_logout(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)
        old_key = d.state.node_public
        assert (await d.logout())["result"] == {"state": "NeedsLogin"}
        assert d.state.node_public != old_key and d.state.load_netmap() is None
        server.first_frame_delay_s = 0.3
        assert (await d.up(UP))["result"] == {"state": "Running"}
        assert set(d.peers.by_id) == {2, 3} and d.supervisor.is_running("paths")

    run(tmp_path, server, body)


def test_up_after_a_restart(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)

    async def first(d: NodeDaemon) -> None:
        await d.up(UP)

    async def running_again(d: NodeDaemon) -> None:
        assert d.backend.state.value == "Running"  # from the cached map, at once
        assert set(d.peers.by_id) == {2, 3}
        assert (await d.up({}))["result"] == {"state": "Running"}
        await d.down()

    async def stopped_then_up(d: NodeDaemon) -> None:
        assert d.backend.state.value == "Stopped" and d.peers.by_id == {}
        server.first_frame_delay_s = 0.3
        assert (await d.up({}))["result"] == {"state": "Running"}

    run(tmp_path, server, first)
    run(tmp_path, server, running_again)
    run(tmp_path, server, stopped_then_up)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("logged_out", "this machine is not registered: run weft up to log in"),
        ("expired", "node key expired: run weft up to log in again"),
        (None, "node deleted"),  # an old server: its words say logged out
    ],
)
def test_a_refusal_saying_logged_out_or_expired_is_a_logout(
    tmp_path: Path, kind: str | None, text: str
) -> None:
    server = FakeServer(ME, PEERS)

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)
        server.push(tailcfg.MapResponse(error=text, error_kind=kind))
        await poll(lambda: d.backend.state.value == "NeedsLogin")
        assert d.peers.by_id == {} and d.state.load_netmap() is None
        assert not d.state.prefs.registered and d.backend.error == text

    run(tmp_path, server, body)


@pytest.mark.parametrize(
    ("kind", "text", "problem"),
    [
        ("clock_skew", "request timestamp is +300 s off the server clock: check the time",
         "clock skew reported by the control server: request timestamp"),
        (None, "request timestamp is -200 s off the server clock: check the time",
         "clock skew reported by the control server"),
        ("bad_request", "too many endpoints: at most 32",
         "the control server refused the map request (bad_request): too many endpoints"),
        ("server_error", "database is locked", "(server_error): database is locked"),
        (None, "something new", "(unknown): something new"),
    ],
)  # fmt: skip
def test_any_other_refusal_keeps_the_node_running_and_retries(
    tmp_path: Path, kind: str | None, text: str, problem: str
) -> None:
    server = FakeServer(ME, PEERS)

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)
        server.refusal = tailcfg.MapResponse(error=text, error_kind=kind)
        server.push(server.refusal)
        await poll(lambda: len(server.streams) >= 3)  # retried with backoff
        st = status.node_status(d)
        assert st["backend_state"] == "Running" and set(d.peers.by_id) == {2, 3}
        assert d.state.prefs.registered and d.state.load_netmap() is not None
        assert any(problem in h for h in st["health"]), st["health"]
        server.refusal = None  # the server takes us back: the problem goes away
        await poll(lambda: not any(problem in h for h in status.health(d)))
        assert d.stream is not None and d.stream.online

    run(tmp_path, server, body)


def test_a_low_order_peer_is_skipped_and_the_rest_of_the_map_applies(tmp_path: Path) -> None:
    evil = node(4, "evil", ["100.64.0.4"], node_key="nodekey:" + "00" * 32)
    server = FakeServer(ME, [*PEERS, evil])

    async def body(d: NodeDaemon) -> None:
        assert (await d.up(UP))["result"] == {"state": "Running"}
        assert set(d.peers.by_id) == {2, 3}
        assert status.health(d) == ["peer evil skipped: low-order node key"]
        newcomer = node(5, "c", ["100.64.0.5"])
        server.push(tailcfg.MapResponse(peers_changed=[newcomer]))  # still following
        await poll(lambda: 5 in d.peers.by_id)

    run(tmp_path, server, body)


def test_allowed_ips_outside_the_tailnet_never_reach_the_device(tmp_path: Path) -> None:
    greedy = node(4, "greedy", ["100.64.0.4"])
    greedy = greedy.model_copy(update={"allowed_ips": ["100.64.0.4/32", "192.168.1.0/24"]})
    server = FakeServer(ME, [*PEERS, greedy])

    async def body(d: NodeDaemon) -> None:
        assert (await d.up(UP))["result"] == {"state": "Running"}
        assert set(d.peers.by_id) == {2, 3, 4}
        entries = d.engine.device.allowed_ips.entries(d.peers.by_id[4])
        assert [str(n) for n in entries] == ["100.64.0.4/32"]
        assert status.health(d) == [
            "peer greedy: ignored allowed IPs outside the tailnet: 192.168.1.0/24"
        ]

    run(tmp_path, server, body)


def test_a_relay_the_node_cannot_use_is_reported_not_fatal(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)
    bad = tailcfg.RelayRegion(
        name="default", url="ftp://relay.test", public_key="relaykey:" + "11" * 32
    )

    async def body(d: NodeDaemon) -> None:
        server.full = lambda: tailcfg.MapResponse(  # type: ignore[method-assign]
            node=ME, peers=PEERS, packet_filter=[], relay_map=[bad]
        )
        assert (await d.up(UP))["result"] == {"state": "Running"}
        problems = status.health(d)
        assert problems == [
            "relay region default: relay URL 'ftp://relay.test': expected http:// or https://;"
            " not used"
        ], problems
        assert d.supervisor.health() == []

    run(tmp_path, server, body)


def test_reported_endpoints_are_capped_usable_ones_first(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)
    local = [Endpoint("127.0.0.1", 41641), Endpoint("169.254.0.9", 41641)]
    local += [Endpoint(f"198.18.{i // 200}.{i % 200 + 1}", 41641) for i in range(40)]

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)
        reported = server.streams[-1]
        assert len(reported) == tailcfg.MAX_ENDPOINTS
        assert "127.0.0.1:41641" not in reported and "169.254.0.9:41641" not in reported
        assert reported[0] == "198.18.0.1:41641"

    run(tmp_path, server, body, local_endpoints=lambda port, ifname: local)


def test_status_lists_health_empty_when_healthy(tmp_path: Path) -> None:
    server = FakeServer(ME, PEERS)

    async def body(d: NodeDaemon) -> None:
        await d.up(UP)
        st = (await NodeApi(d).api_status({}))["result"]
        assert st["health"] == [] and st["backend_state"] == "Running"
        server.unreachable = True
        server.push(tailcfg.MapResponse(error="going away", error_kind="server_error"))
        await poll(lambda: any("not connected to the control server" in h
                               for h in status.health(d)))  # fmt: skip

    run(tmp_path, server, body)


def test_endpoints_as_plain_tuples_are_reported_too() -> None:
    from weftnet.node.mapstream import endpoints_to_report

    assert endpoints_to_report([("fd00::1", 41641), ("127.0.0.1", 1), ("198.18.0.2", 41641)]) == [
        "[fd00::1]:41641", "198.18.0.2:41641", "127.0.0.1:1"]  # fmt: skip


def test_a_device_waiting_for_approval_runs_once_approved(tmp_path: Path) -> None:
    waiting = ME.model_copy(update={"machine_authorized": False})
    server = FakeServer(waiting, [])

    async def body(d: NodeDaemon) -> None:
        answer = await d.up(UP)
        assert answer["result"] == {"state": "NeedsMachineAuth", "admin_url": f"{SERVER}/admin"}
        st = status.node_status(d)
        assert st["backend_state"] == "NeedsMachineAuth" and st["admin_url"] == f"{SERVER}/admin"
        assert d.state.prefs.registered and d.peers.by_id == {}
        server.push(tailcfg.MapResponse(node=ME, peers_changed=PEERS))  # the admin approved
        await poll(lambda: d.backend.state.value == "Running")
        assert set(d.peers.by_id) == {2, 3} and status.node_status(d)["admin_url"] is None

    run(tmp_path, server, body)
