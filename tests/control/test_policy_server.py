"""The access policy on a real `weft-control serve`: the policy commands, what maps
carry (filters, visible peers), pushes within 2 s, tag owners, schedules and postures.

Nodes here are ``FakeNode``s speaking the node protocol; enforcement by real weftd
processes is in tests/lab/test_policy.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.control.test_cli import one_line_error
from weftlab.control import Control, FakeNode, start_control
from weftnet import tailcfg

ALLOW_ALL_SRC = ["0.0.0.0/0", "::/0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    proc = start_control(None, tmp_path_factory.mktemp("policy") / "data", policy_clock=True)
    try:
        yield proc
    finally:
        proc.stop()


def write(tmp_path: Path, text: str, name: str = "policy.hujson") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def set_policy(server: Control, tmp_path: Path, text: str) -> None:
    r = server.admin("policy", "set", write(tmp_path, text))
    assert r.stdout.startswith("policy set:"), r.stdout


def ip4(node: tailcfg.Node) -> str:
    return node.addresses[0]


class Net:
    """Three nodes: alice's laptop, bob's laptop, a server tagged tag:db."""

    def __init__(self, http: httpx.AsyncClient, server: Control, suffix: str) -> None:
        self.server = server
        self.alice = FakeNode(server.url, http, f"alice-{suffix}")
        self.bob = FakeNode(server.url, http, f"bob-{suffix}")
        self.db = FakeNode(server.url, http, f"db-{suffix}")
        self.nodes: dict[str, tailcfg.Node] = {}

    async def join(self) -> None:
        s = self.server
        keys = {
            "alice": s.admin("keys", "create", "--user", "alice@example.com").stdout.strip(),
            "bob": s.admin("keys", "create", "--user", "bob@example.com").stdout.strip(),
            "db": s.admin("keys", "create", "--tags", "tag:db").stdout.strip(),
        }
        for name in ("alice", "bob", "db"):
            fake: FakeNode = getattr(self, name)
            resp = await fake.register(keys[name])
            assert resp.node is not None, resp.error
            self.nodes[name] = resp.node

    async def view(self, name: str) -> tailcfg.MapResponse:
        fake: FakeNode = getattr(self, name)
        [frame] = await fake.map_once(
            hostinfo=tailcfg.Hostinfo(hostname=fake.hostname, os="linux", client_version="0.9.1")
        )
        return frame

    def names(self, peers: list[tailcfg.Node] | None) -> set[str]:
        ids = {n.id: k for k, n in self.nodes.items()}
        return {ids[p.id] for p in peers or [] if p.id in ids}


@pytest.fixture(scope="module")
def users(server: Control) -> None:
    for name in ("alice@example.com", "bob@example.com"):
        server.admin("users", "create", name)


POLICY = """{
  // Only alice may reach the database, only on 5432.
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
    {"src": "bob@example.com", "deny": ["tag:db:5432"]},
  ],
}
"""


def test_policy_commands_refuse_bad_policies_and_keep_the_old_one(
    server: Control, users: None, tmp_path: Path
) -> None:
    first = server.admin("policy", "get").stdout
    assert first.startswith("no policy set") or "tagOwners" in first
    good = write(tmp_path, POLICY)
    assert server.admin("policy", "check", good).stdout.startswith("policy ok (not applied): 1")
    assert server.admin("policy", "get").stdout == first  # check changed nothing

    set_policy(server, tmp_path, POLICY)
    assert server.admin_json("policy", "get")["policy"] == POLICY

    failing = POLICY.replace('"deny": ["tag:db:22"]', '"deny": ["tag:db:5432"]')
    for bad, message in (
        ("{ not json", "line 1, column 3"),
        ('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}', "bad action"),
        ('{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}', "unknown group"),
        (failing, "tests[1] expects alice@example.com to not reach tag:db:5432"),
    ):
        path = write(tmp_path, bad, "bad.hujson")
        for action in ("set", "check"):
            line = one_line_error(server.admin("policy", action, path, check=False))
            assert "policy refused" in line and message in line, line
        assert server.admin_json("policy", "get")["policy"] == POLICY

    missing = one_line_error(server.admin("policy", "set", str(tmp_path / "nope"), check=False), 2)
    assert "cannot read" in missing


def test_maps_carry_filters_and_only_reachable_peers(
    server: Control, users: None, tmp_path: Path
) -> None:
    set_policy(server, tmp_path, POLICY)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            net = Net(http, server, "maps")
            await net.join()
            alice, bob, db = [await net.view(n) for n in ("alice", "bob", "db")]
            a, d = net.nodes["alice"], net.nodes["db"]
            # alice reaches db; db sees alice (it may be reached by her); bob sees nobody.
            assert {"db"} <= net.names(alice.peers) and "bob" not in net.names(alice.peers)
            assert net.names(db.peers) >= {"alice"} and "bob" not in net.names(db.peers)
            assert net.names(bob.peers) == set()
            assert bob.packet_filter == [] and alice.packet_filter == []
            [rule] = db.packet_filter or []
            assert ip4(a) in rule.src_ips
            assert {(p.ip, p.ports.first, p.ports.last) for p in rule.dst_ports} >= {
                (ip4(d), 5432, 5432)
            }
            assert rule.ip_proto == [6, 17, 1, 58]
            # The node reported its OS and version in the map request: the admin sees them.
            [listed] = [n for n in server.admin_json("nodes", "list") if n["id"] == a.id]
            assert (listed["os"], listed["client_version"]) == ("linux", "0.9.1")

    asyncio.run(scenario())


def test_a_policy_change_reaches_the_stream_within_2_s(
    server: Control, users: None, tmp_path: Path
) -> None:
    set_policy(server, tmp_path, POLICY)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            net = Net(http, server, "push")
            await net.join()
            bob_ip = ip4(net.nodes["bob"])
            async with net.db.map_stream() as stream:
                first = await stream.next()
                assert "bob" not in net.names(first.peers)
                opened = POLICY.replace('"src": ["alice@example.com"]', '"src": ["*"]')
                opened = opened.replace('"deny": ["tag:db:5432"]', '"accept": ["tag:db:5432"]')
                start = time.monotonic()
                set_policy(server, tmp_path, opened)
                frame = await stream.until(lambda f: f.packet_filter is not None, 2.0)
                took = time.monotonic() - start
                assert frame.packet_filter is not None
                assert frame.packet_filter[0].src_ips == ALLOW_ALL_SRC
                assert net.nodes["bob"].id in {p.id for p in frame.peers_changed}
                print(f"policy change reached the map stream in {took * 1000:.0f} ms")
                set_policy(server, tmp_path, POLICY)
                frame = await stream.until(lambda f: f.packet_filter is not None, 2.0)
                assert all(bob_ip not in r.src_ips for r in frame.packet_filter or [])
                assert net.nodes["bob"].id in frame.peers_removed

    asyncio.run(scenario())


def test_only_tag_owners_create_keys_for_a_tag(
    server: Control, users: None, tmp_path: Path
) -> None:
    set_policy(server, tmp_path, POLICY)
    line = one_line_error(
        server.admin("keys", "create", "--user", "bob@example.com", "--tags", "tag:db", check=False)
    )
    assert "user bob@example.com does not own tag:db" in line
    line = one_line_error(server.admin("keys", "create", "--tags", "tag:web", check=False))
    assert 'tag:web is not in the policy\'s "tagOwners"' in line
    ok = server.admin("keys", "create", "--user", "alice@example.com", "--tags", "tag:db")
    assert ok.stdout.startswith("weftkey-")


SCHEDULED = """{
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "schedules": {"schedule:work": {"days": ["mon", "tue", "wed", "thu", "fri"],
                                  "hours": "09:00-17:00", "timezone": "Europe/Berlin"}},
  "postures": {"posture:managed": ["custom:managed == true"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"],
     "schedule": ["schedule:work"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:22"],
     "srcPosture": ["posture:managed"]},
  ],
}"""


def berlin(y: int, mo: int, d: int, h: int, mi: int = 0, s: int = 0) -> float:
    """Berlin winter time (UTC+1)."""
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp()


def test_schedules_open_and_close_at_the_edges_and_postures_follow_attributes(
    server: Control, users: None, tmp_path: Path
) -> None:
    set_policy(server, tmp_path, SCHEDULED)

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            net = Net(http, server, "time")
            await net.join()
            alice_ip, bob_ip = ip4(net.nodes["alice"]), ip4(net.nodes["bob"])

            def srcs(frame: tailcfg.MapResponse) -> set[str]:
                return {s for r in frame.packet_filter or [] for s in r.src_ips}

            async with net.db.map_stream() as stream:
                # Monday 08:59:58 in Berlin (the clock steps back from today): closed.
                # Two seconds later the hub's ticker reaches the edge on its own and
                # pushes the opened filter.
                server.set_policy_clock(berlin(2026, 11, 23, 8, 59, 58))
                frame = await stream.until(lambda f: alice_ip not in srcs(f), 2.0)
                start = time.monotonic()
                frame = await stream.until(lambda f: alice_ip in srcs(f), 4.0)
                assert time.monotonic() - start < 3.5
                assert net.nodes["alice"].id in {p.id for p in frame.peers_changed}
                # Friday 17:00:00: closed again.
                server.set_policy_clock(berlin(2026, 11, 27, 17, 0, 0))
                frame = await stream.until(lambda f: alice_ip not in srcs(f), 2.0)
                assert net.nodes["alice"].id in frame.peers_removed

                # Bob's rule needs a managed device: set the attribute, the rule opens.
                assert bob_ip not in srcs(frame)
                bob_id = str(net.nodes["bob"].id)
                out = server.admin("nodes", "attr", bob_id, "custom:managed", "true").stdout
                assert "custom:managed=true" in out
                await stream.until(lambda f: bob_ip in srcs(f), 2.0)
                server.admin("nodes", "attr", bob_id, "custom:managed", "--delete")
                await stream.until(
                    lambda f: bob_ip not in srcs(f) and f.packet_filter is not None, 2.0
                )

    asyncio.run(scenario())


def test_the_product_server_has_no_route_that_moves_its_clock(tmp_path: Path) -> None:
    proc = start_control(None, tmp_path / "data")
    try:
        r = httpx.put(
            f"{proc.url}/api/v1/debug/policy-clock",
            json={"now": 0},
            headers={"Authorization": f"Bearer {proc.api_key}"},
        )
        assert r.status_code in (404, 405)
        assert "no policy set" in proc.admin("policy", "get").stdout
    finally:
        proc.stop()
