"""weftd in tailnet mode and its packet filter, and `weft whois`, without a TUN.

The daemon runs on a stand-in Engine (a real DataPlane on a socketpair and a loopback
UDP socket); maps are applied as the map stream would apply them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.node.support import FakeServer, node
from tests.node.support import make_daemon as new_daemon
from tests.unit.test_filter import ALLOW_ALL, ME4, PEER4, rule, tcp4

from weftnet import tailcfg
from weftnet.cli.main import main as weft
from weftnet.node import localapi, status
from weftnet.node.api import NodeApi
from weftnet.node.daemon import NodeDaemon

ME6 = "fd7a:115c:a1e0::1"
ME = node(1, "me", [ME4, ME6])
PEERS = [node(2, "laptop", [PEER4]), node(3, "db", ["100.64.0.3"], user=None, tags=["tag:db"])]


def full_map(packet_filter: list[tailcfg.FilterRule] | None) -> tailcfg.MapResponse:
    return tailcfg.MapResponse(node=ME, peers=PEERS, packet_filter=packet_filter)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:  # () -> NodeDaemon on one state directory
    made: list[NodeDaemon] = []

    def make() -> NodeDaemon:
        d = new_daemon(tmp_path, FakeServer(ME, PEERS))
        d.state.prefs.want_running = True
        made.append(d)
        return d

    yield make
    for d in made:
        d.engine.close()


def apply(d: NodeDaemon, resp: tailcfg.MapResponse, persist: bool = True) -> None:
    asyncio.run(d._apply(resp, persist=persist))


def node_status(d: NodeDaemon) -> dict[str, Any]:
    return status.node_status(d)


def inbound(d: NodeDaemon, packet: bytes) -> bool:
    flt = d.engine.dp.filter
    assert flt is not None
    return flt.check(packet, 0.0)


def test_tailnet_mode_denies_until_a_map_gives_rules(make_daemon: Any) -> None:
    d = make_daemon()
    assert node_status(d)["packet_filter_rules"] == 0
    assert not inbound(d, tcp4(PEER4, ME4, 40000, 22))
    apply(d, full_map(None))  # a map with no filter changes nothing
    assert not inbound(d, tcp4(PEER4, ME4, 40000, 22))
    apply(d, full_map([rule([PEER4 + "/32"], [(ME4 + "/32", 22, 22)], [6])]))
    assert inbound(d, tcp4(PEER4, ME4, 40000, 22))
    assert not inbound(d, tcp4(PEER4, ME4, 40000, 23))
    st = node_status(d)
    assert st["packet_filter_rules"] == 1
    assert st["counters"]["drop_filtered"] == 0  # check() bypasses the data plane
    assert st["counters"]["filter"] == {"denied": 3, "malformed": 0, "tracked_flows": 0}
    json.dumps(st)


def test_deltas_change_the_filter_only_when_they_carry_one(make_daemon: Any) -> None:
    d = make_daemon()
    apply(d, full_map([ALLOW_ALL]))
    apply(d, tailcfg.MapResponse(peers_removed=[3]))
    assert node_status(d)["packet_filter_rules"] == 1
    apply(d, tailcfg.MapResponse(packet_filter=[]))
    assert node_status(d)["packet_filter_rules"] == 0
    assert not inbound(d, tcp4(PEER4, ME4, 40000, 22))


def test_the_filter_survives_a_restart_in_the_cached_netmap(make_daemon: Any) -> None:
    d = make_daemon()
    rules = [rule([PEER4 + "/32"], [(ME4 + "/32", 22, 22)], [6])]
    apply(d, full_map(rules))
    cached = d.state.load_netmap()
    assert cached is not None and len(cached["packet_filter"]) == 1
    again = make_daemon()
    assert not inbound(again, tcp4(PEER4, ME4, 40000, 22))  # before the cache is applied
    apply(again, tailcfg.MapResponse.model_validate(again.state.load_netmap()), persist=False)
    assert inbound(again, tcp4(PEER4, ME4, 40000, 22))
    assert not inbound(again, tcp4(PEER4, ME4, 40000, 23))
    assert again.engine.dp.filter is not None and again.engine.dp.filter.rules == rules


def test_an_old_cache_without_a_filter_denies(make_daemon: Any) -> None:
    d = make_daemon()
    d.state.save_netmap({"node": json.loads(ME.model_dump_json()), "peers": [], "dns_domain": None})
    apply(d, tailcfg.MapResponse.model_validate(d.state.load_netmap()), persist=False)
    assert node_status(d)["packet_filter_rules"] == 0
    assert not inbound(d, tcp4(PEER4, ME4, 40000, 22))


# -- whois ------------------------------------------------------------------------------


def ask(d: NodeDaemon, **req: Any) -> dict[str, Any]:
    return asyncio.run(localapi.make_handler(NodeApi(d))({"cmd": "whois", **req}))


def test_whois_answers_for_peers_and_ourselves(make_daemon: Any) -> None:
    d = make_daemon()
    assert ask(d, ip=PEER4) == {
        "ok": False,
        "error": "no network map yet: is this node up (`weft up`)?",
    }
    apply(d, full_map([ALLOW_ALL]))
    r = ask(d, ip=PEER4)
    assert r["ok"] and r["result"] == {
        "node": {
            "id": 2, "name": "laptop-1", "hostname": "laptop", "addresses": [PEER4],
            "os": "linux", "client_version": "0.1.0", "tags": [], "online": True, "self": False,
        },
        "user": {"id": 7, "name": "alice"},
    }  # fmt: skip
    mine = ask(d, ip="fd7a:115c:a1e0:0::1")["result"]  # any spelling of the address
    assert mine["node"]["self"] and mine["node"]["addresses"] == [ME4, ME6]
    tagged = ask(d, ip="100.64.0.3")["result"]
    assert tagged["user"] is None and tagged["node"]["tags"] == ["tag:db"]
    assert ask(d, ip="100.64.0.99") == {
        "ok": False,
        "error": "no node in the tailnet has the address 100.64.0.99",
    }
    assert ask(d, ip="100.64.0") == {"ok": False, "error": "'100.64.0' is not an IP address"}


@pytest.fixture
def served(make_daemon: Any, tmp_path: Path) -> Iterator[str]:
    """The daemon's local API on a unix socket, in a thread; yields the socket path."""
    d = make_daemon()
    apply(d, full_map([ALLOW_ALL]))
    path = str(tmp_path / "weftd.sock")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        localapi.serve(path, localapi.make_handler(NodeApi(d))), loop
    )
    srv = server.result(5)
    yield path

    async def close() -> None:
        srv.close()
        await srv.wait_closed()

    asyncio.run_coroutine_threadsafe(close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_weft_whois_prints_the_node_and_user(
    served: str, capsys: pytest.CaptureFixture[str]
) -> None:
    weft(["--socket", served, "whois", PEER4])
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "Machine:",
        "  Name:      laptop-1",
        "  Hostname:  laptop",
        "  ID:        2",
        "  OS:        linux",
        "  Version:   0.1.0",
        f"  Addresses: {PEER4}",
        "User:",
        "  Name:      alice",
        "  ID:        7",
    ]
    weft(["--socket", served, "whois", "100.64.0.3"])
    out = capsys.readouterr().out
    assert "  Tags:      tag:db" in out and "User:" not in out
    weft(["--socket", served, "whois", "--json", ME4])
    assert json.loads(capsys.readouterr().out)["node"]["self"] is True


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("100.64.0.99", "weft: no node in the tailnet has the address 100.64.0.99"),
        ("nonsense", "weft: 'nonsense' is not an IP address"),
    ],
)
def test_weft_whois_unknown_or_malformed_is_one_line_and_exit_1(
    served: str, capsys: pytest.CaptureFixture[str], ip: str, message: str
) -> None:
    with pytest.raises(SystemExit) as e:
        weft(["--socket", served, "whois", ip])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [message] and captured.out == ""
