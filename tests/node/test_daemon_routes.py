"""The route flags end to end on a stand-in engine, control server and kernel
(support.FakeRoutes): `weft up` and `weft set` check and keep them, a new map request
carries what is advertised, accepted routes and the exit node reach the device and the
routing plan, a vanished exit node blocks, and down removes everything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.node.support import SERVER, FakeServer, node
from tests.node.test_daemon_states import UP, poll, run
from weftnet import tailcfg
from weftnet.node import status
from weftnet.node.daemon import NodeDaemon

ME = node(1, "me", ["100.64.0.1"])
EXIT = ["0.0.0.0/0", "::/0"]


def router(nid: int, name: str, routes: list[str], exit_node: bool = False) -> tailcfg.Node:
    n = node(nid, name, [f"100.64.0.{nid}"])
    extra = routes + (EXIT if exit_node else [])
    return n.model_copy(update={"allowed_ips": n.allowed_ips + extra, "primary_routes": routes})


R = router(2, "r", ["198.18.20.0/24", "192.168.1.0/24"])
EX = router(3, "ex", [], exit_node=True)


def allowed(d: NodeDaemon, nid: int) -> list[str]:
    return [str(n) for n in d.engine.device.allowed_ips.entries(d.peers.by_id[nid])]


def test_advertised_routes_go_into_every_map_request_and_a_change_makes_a_new_one(
    tmp_path: Path,
) -> None:
    server = FakeServer(ME, [R, EX])

    async def body(d: NodeDaemon) -> Any:
        up = {**UP, "advertise_routes": "10.7.0.0/16"}
        assert (await d.up(up))["result"]["state"] == "Running"
        assert server.routable_ips == [["10.7.0.0/16"]]
        answer = await d.set({"advertise_exit_node": True})
        assert answer["ok"], answer
        await poll(lambda: len(server.routable_ips) == 2)
        assert server.routable_ips[-1] == ["10.7.0.0/16", *EXIT]
        assert d.routes.desired.serve_routes == ("10.7.0.0/16",) and d.routes.desired.serve_exit
        await d.set({"accept_routes": True})  # not advertised: no new map request
        assert len(server.routable_ips) == 2
        bad = await d.set({"advertise_routes": "198.18.20.1/24"})
        assert bad == {
            "ok": False,
            "error": "198.18.20.1/24 has non-address bits set; expected 198.18.20.0/24",
        }
        assert d.state.prefs.advertise_routes == ["10.7.0.0/16"]  # unchanged

    run(tmp_path, server, body)


def test_forwarding_off_is_a_warning_and_in_health(tmp_path: Path) -> None:
    server = FakeServer(ME, [])

    async def body(d: NodeDaemon) -> Any:
        d.routes.ip_forward = (False, True)
        answer = await d.up({**UP, "advertise_routes": "10.7.0.0/16"})
        assert "net.ipv4.ip_forward = 0" in answer["result"]["warning"]
        assert any("IP forwarding is off" in h for h in status.health(d))
        answer = await d.set({"advertise_routes": ""})
        assert answer["result"]["warning"] is None
        assert not any("forwarding" in h for h in status.health(d))

    run(tmp_path, server, body)


def test_accept_routes_and_exit_node_reach_device_and_kernel(tmp_path: Path) -> None:
    server = FakeServer(ME, [R, EX])

    async def body(d: NodeDaemon) -> Any:
        assert (await d.up(UP))["result"]["state"] == "Running"
        assert allowed(d, 2) == ["100.64.0.2/32"] and d.routes.desired.subnet_routes == ()
        assert (await d.set({"accept_routes": True}))["ok"]
        # 192.168.1.0/24 is this host's LAN (FakeRoutes.lan): not installed, in Health.
        assert allowed(d, 2) == ["100.64.0.2/32", "198.18.20.0/24"]
        assert d.routes.desired.subnet_routes == ("198.18.20.0/24",)
        assert any("192.168.1.0/24 (overlaps" in h for h in status.health(d))

        refused = await d.set({"exit_node": "r"})
        assert refused == {"ok": False, "error": "r is not an exit node (see weft exit-node list)"}
        lan_only = await d.set({"exit_node_allow_lan_access": True})
        assert "can only be used with --exit-node" in lan_only["error"]
        assert (await d.set({"exit_node": "ex"}))["ok"]
        assert d.state.prefs.exit_node == "100.64.0.3"
        assert sorted(allowed(d, 3)) == sorted(["100.64.0.3/32", *EXIT])
        assert d.routes.desired.exit_node and d.routes.desired.exit_routes == tuple(EXIT)
        listed = status.exit_nodes(d)
        assert [(e["hostname"], e["selected"]) for e in listed] == [("ex", True)]

        server.push(tailcfg.MapResponse(peers_removed=[3]))  # the exit node goes away
        await poll(lambda: d.routes.desired.exit_routes == ())
        assert d.routes.desired.exit_node  # still chosen: blocked, not leaked
        assert any("internet traffic is blocked" in h for h in status.health(d))

        assert (await d.set({"exit_node": ""}))["ok"]
        assert not d.routes.desired.exit_node
        await d.down()
        assert d.routes.desired is None

    run(tmp_path, server, body)


def test_a_restart_cleans_up_first_and_reapplies_from_the_cached_map(tmp_path: Path) -> None:
    server = FakeServer(ME, [R, EX])
    up = {**UP, "accept_routes": True}
    run(tmp_path, server, lambda d: d.up(up))

    async def body(d: NodeDaemon) -> Any:
        assert d.routes.cleanups == 1
        assert d.routes.desired.subnet_routes == ("198.18.20.0/24",)
        assert d.state.prefs.login_server == SERVER

    run(tmp_path, server, body)
