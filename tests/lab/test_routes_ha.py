"""Subnet routers in high availability, cleanup after crashes, routes that cover the
underlay (issue 14; research dns-routes.md §3.4.4, §3.4.5, R6 and R10 of §4.5).

The office LAN of tests/lab/test_routes.py: r1 and r2 (weftd) are both on it and
both advertise it; s1 is a plain host there; a is a client on the internet.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, start_node

from .test_routes import reaches, table_52

pytestmark = pytest.mark.lab

PING_INTERVAL_S = 0.1


@dataclass
class Office:
    control: Control
    lan: str
    s1: Host
    routers: dict[str, Node]
    a: Node
    key: str


def office(lab: Lab, tmp_path: Path, routers: list[str], keepalive: bool = False) -> Office:
    """The office LAN behind its NAT router, ``routers`` on it advertising it (in this
    order, so the first has the lowest id), all approved; a on inet accepts routes."""
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    office_nat = lab.nat_router("office", upstream=inet)
    s1 = lab.host("s1", office_nat.lan)
    lan = str(office_nat.lan.network)
    control = start_control(ctl, tmp_path / "control")
    control.admin("users", "create", "alice")
    key = control.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    login = ["up", "--login-server", control.url, "--auth-key", key]
    nodes = {}
    for name in routers:
        host = lab.host(name, office_nat.lan)
        host._sysctl({"net.ipv4.ip_forward": 1})
        nodes[name] = start_node(tmp_path, host, name)
        nodes[name].weft(*login, "--hostname", name, "--advertise-routes", lan)
    a = start_node(tmp_path, lab.host("a", inet), "a")
    a.weft(*login, "--hostname", "a", "--accept-routes")
    ids = {n["given_name"]: n["id"] for n in control.admin_json("nodes", "list")}
    for name in routers:
        poll_until(lambda n=name: lan in json.dumps(routes_of(control, n)["announced"]),
                   timeout_s=5, what=f"{name}'s route announced")  # fmt: skip
        control.admin("nodes", "approve-routes", str(ids[name]), "--routes", lan)
    poll_until(lambda: reaches(a, s1.ip), timeout_s=10, interval_s=0.1, what="a -> s1")
    return Office(control, lan, s1, nodes, a, key)


def routes_of(control: Control, name: str) -> dict[str, Any]:
    rows = control.admin_json("nodes", "routes")
    return next(r for r in rows if r["given_name"] == name)


def primary(o: Office) -> str | None:
    rows = o.control.admin_json("nodes", "routes")
    serving = [r["given_name"] for r in rows if o.lan in r["serving"]]
    assert len(serving) <= 1, rows
    return serving[0] if serving else None


class Pinger:
    """``ping -D -i 0.1`` from a node, bounded by ``-w``; the gaps between replies."""

    def __init__(self, node: Node, ip: str, max_s: int) -> None:
        self.out = node.state_dir.parent / f"ping-{node.host.name}-{time.monotonic_ns()}.txt"
        self.file = open(self.out, "w")  # noqa: SIM115
        cmd = ["ping", "-D", "-n", "-i", str(PING_INTERVAL_S), "-W", "1", "-w", str(max_s), ip]
        self.proc = node.host.popen(cmd, stdout=self.file, stderr=self.file)

    def replies(self) -> list[float]:
        text = self.out.read_text()
        return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", text, re.M)]

    def stop(self) -> list[float]:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=10)
        self.file.close()
        return self.replies()


def largest_gap(node: Node, ip: str, action: Any, max_s: int = 40) -> float:
    """Ping ``ip`` every 0.1 s, do ``action`` after 2 s of replies, and wait for 2 s of
    replies after it. The largest gap between two replies, in seconds."""
    p = Pinger(node, ip, max_s)
    try:
        poll_until(lambda: len(p.replies()) >= 10, timeout_s=5, what="pings before")
        t_action = time.time()
        action()

        def resumed() -> bool:
            return len([t for t in p.replies() if t > t_action + 2]) >= 5

        poll_until(resumed, timeout_s=max_s - 8, interval_s=0.2, what="pings resume")
    finally:
        replies = p.stop()
    gaps = [b - a for a, b in itertools.pairwise(replies)]
    return max(gaps)


def routed_via(node: Node, lan: str) -> list[str]:
    """The peers whose primary_routes hold ``lan`` in ``node``'s status."""
    peers = node.status()["peers"]
    return [p["hostname"] for p in peers if lan in p.get("primary_routes", [])]


def stays_primary(o: Office, name: str, seconds: float) -> None:
    """``name`` is the primary at every poll for ``seconds``."""
    end = time.monotonic() + seconds
    polls = 0
    while time.monotonic() < end and polls < 200:
        assert primary(o) == name
        polls += 1
        time.sleep(0.5)
    assert polls >= 10


def freeze_network(host: Host) -> None:
    """Drop every packet on the host's non-loopback interfaces: a silent failure,
    its TCP connections stay open on the server's side until they time out."""
    ruleset = """table inet labfreeze {
  chain in { type filter hook prerouting priority -500; policy accept; iifname != "lo" drop; }
  chain out { type filter hook output priority -500; policy accept; oifname != "lo" drop; }
}
"""
    host.run(["nft", "-f", "-"], input=ruleset)


def thaw_network(host: Host) -> None:
    host.run(["nft", "delete", "table", "inet", "labfreeze"])


def test_ha_failover_on_kill_and_on_silent_failure_without_flapping(
    lab: Lab, tmp_path: Path
) -> None:
    o = office(lab, tmp_path, ["r1", "r2"])
    r1, r2, a, s1 = o.routers["r1"], o.routers["r2"], o.a, o.s1
    assert primary(o) == "r1"  # the lowest id
    assert routed_via(a, o.lan) == ["r1"]

    # (a) kill -9 of the primary's weftd: the stream closes, r2 takes over
    kill_gap = largest_gap(a, s1.ip, r1.kill9)
    assert primary(o) == "r2" and routed_via(a, o.lan) == ["r2"]
    print(f"kill -9 of the primary: largest ping gap {kill_gap:.2f} s")
    assert kill_gap <= 3.0

    # (b) r1 comes back: r2 stays primary for 30 s
    r1.start()
    poll_until(lambda: routes_of(o.control, "r1")["approved"] and r1.status()["self"]["online"],
               timeout_s=15, what="r1 back online")  # fmt: skip
    stays_primary(o, "r2", 30)

    # (c) r2 dies silently: the server's TCP_USER_TIMEOUT and 3 s keepalives find out
    t0 = time.monotonic()
    silent_gap = largest_gap(a, s1.ip, lambda: freeze_network(r2.host), max_s=40)
    moved_s = time.monotonic() - t0
    assert primary(o) == "r1" and routed_via(a, o.lan) == ["r1"]
    print(f"silent failure of the primary: largest ping gap {silent_gap:.2f} s")
    assert silent_gap <= 15.0, moved_s

    # r2 comes back: r1 stays primary for 30 s
    thaw_network(r2.host)
    poll_until(lambda: r2.status()["self"]["online"], timeout_s=40, interval_s=0.5,
               what="r2 back online")  # fmt: skip
    stays_primary(o, "r1", 30)
    assert reaches(a, s1.ip)
    for n in (r1, r2, a):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def weftd_state(host: Host) -> dict[str, Any]:
    """What weftd owns in ``host``'s kernel: its ip rules per family (by priority),
    table 52 and ``table inet weftd``."""
    rules = {}
    for fam in ("-4", "-6"):
        out = host.run(["ip", fam, "rule", "show"], check=False).stdout
        rules[fam] = sorted(ln for ln in out.splitlines() if re.match(r"^52[1-7]0:", ln))
    routes = {}
    for fam in ("-4", "-6"):
        out = host.run(["ip", fam, "route", "show", "table", "52"], check=False).stdout
        routes[fam] = sorted(out.splitlines())
    tables = host.run(["nft", "list", "tables"], check=False).stdout.splitlines()
    nft = host.run(["nft", "list", "table", "inet", "weftd"], check=False).stdout
    return {"rules": rules, "routes": routes, "nft_tables": tables.count("table inet weftd"),
            "nft": nft}  # fmt: skip


def assert_one_copy(state: dict[str, Any]) -> None:
    for fam, lines in state["rules"].items():
        prios = [ln.split(":")[0] for ln in lines]
        assert len(prios) == len(set(prios)), (fam, lines)
    for fam, lines in state["routes"].items():
        assert len(lines) == len(set(lines)), (fam, lines)
    assert state["nft_tables"] <= 1, state


def test_three_crashes_leave_one_copy_and_weft_down_leaves_none(lab: Lab, tmp_path: Path) -> None:
    o = office(lab, tmp_path, ["r1"])
    r1, a = o.routers["r1"], o.a
    want = {n.host.name: weftd_state(n.host) for n in (r1, a)}
    assert want["a"]["rules"]["-4"] and o.lan in "".join(want["a"]["routes"]["-4"]), want["a"]
    assert want["r1"]["nft_tables"] == 1 and "masquerade" in want["r1"]["nft"], want["r1"]
    for n in (r1, a):
        assert_one_copy(want[n.host.name])
    for cycle in range(3):
        for n in (a, r1):
            n.kill9()
            n.start()
            poll_until(lambda n=n: n.status()["self"]["online"], timeout_s=15,
                       what=f"{n.host.name} online again")  # fmt: skip
        poll_until(lambda: reaches(a, o.s1.ip), timeout_s=15, interval_s=0.2,
                   what=f"a -> s1 after restart {cycle + 1}")  # fmt: skip
        for n in (r1, a):
            # The router's restart briefly takes its route off a's map (offline, then
            # primary again): wait for the state to settle rather than take one snapshot.
            def settled(n: Node = n) -> bool:
                return weftd_state(n.host) == want[n.host.name]

            poll_until(settled, timeout_s=10, interval_s=0.2,
                       what=f"{n.host.name}'s rules, table 52 and nft table after restart")  # fmt: skip
            got = weftd_state(n.host)
            assert_one_copy(got)
            assert got == want[n.host.name], (cycle, n.host.name, got, want[n.host.name])
    for n in (r1, a):
        n.weft("down")
        got = weftd_state(n.host)
        assert got["rules"] == {"-4": [], "-6": []}, got
        assert got["routes"] == {"-4": [], "-6": []}, got
        assert got["nft_tables"] == 0, got
    assert not reaches(a, o.s1.ip)
    for n in (r1, a):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def own_traffic_unbroken(a: Node, r1: Node, seconds: float) -> None:
    """For ``seconds``, a's map stream stays online, it keeps its home relay and reaches
    r1 over the tailnet (WireGuard to r1's underlay address, which the route covers)."""
    r1_ip = r1.ip4()
    end = time.monotonic() + seconds
    polls = 0
    while time.monotonic() < end and polls < 50:
        st = a.status()
        assert st["self"]["online"], st
        assert st["home_relay"] == "default", st
        peer = next(p for p in st["peers"] if p["hostname"] == "r1")
        assert peer["online"] and peer["path"] in ("direct", "relay"), peer
        assert reaches(a, r1_ip)
        polls += 1
        time.sleep(0.5)
    assert polls >= 5


def test_routes_covering_the_underlay_leave_weftds_own_traffic_alone(
    lab: Lab, tmp_path: Path
) -> None:
    """r1 serves a subnet route covering the control server (and its relay) and both
    NATs' WAN addresses, then is the exit node: a's map stream, relay and WireGuard
    keep working because weftd's sockets bypass table 52."""
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    office_nat = lab.nat_router("office", upstream=inet)
    home_nat = lab.nat_router("home", upstream=inet)
    r1_host, s1 = lab.host("r1", office_nat.lan), lab.host("s1", office_nat.lan)
    r1_host._sysctl({"net.ipv4.ip_forward": 1})
    underlay = str(inet.network)
    control = start_control(ctl, tmp_path / "control")
    control.admin("users", "create", "alice")
    key = control.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    login = ["up", "--login-server", control.url, "--auth-key", key]
    r1 = start_node(tmp_path, r1_host, "r1")
    r1.weft(*login, "--hostname", "r1", "--advertise-routes", underlay)
    a = start_node(tmp_path, lab.host("a", home_nat.lan), "a")
    a.weft(*login, "--hostname", "a", "--accept-routes")
    r1_id = control.node_id("r1")
    poll_until(lambda: underlay in json.dumps(routes_of(control, "r1")["announced"]),
               timeout_s=5, what="r1's route announced")  # fmt: skip
    poll_until(lambda: a.status()["home_relay"] == "default", timeout_s=10, what="a's relay")
    control.admin("nodes", "approve-routes", str(r1_id), "--routes", underlay)
    poll_until(lambda: underlay in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the underlay route at a")  # fmt: skip
    got = a.host.run(["ip", "route", "get", ctl.ip]).stdout
    assert "dev weft0" in got and "table 52" in got, got  # a's other traffic goes to r1
    own_traffic_unbroken(a, r1, 10)
    assert reaches(a, ctl.ip)  # through r1, masqueraded at r1 and then at the office NAT
    assert reaches(a, s1.ip) is False  # only the underlay is routed, not the office LAN

    # The stream still brings changes: the exit node, selected, replaces the route.
    r1.weft("set", "--advertise-exit-node")
    poll_until(lambda: "0.0.0.0/0" in json.dumps(routes_of(control, "r1")["announced"]),
               timeout_s=5, what="r1's exit announced")  # fmt: skip
    control.admin("nodes", "approve-routes", str(r1_id), "--routes", "0.0.0.0/0,::/0")
    poll_until(lambda: underlay not in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the underlay route gone at a")  # fmt: skip
    poll_until(lambda: a.weft("set", "--exit-node", "r1", check=False).returncode == 0,
               timeout_s=5, what="a selects r1 as its exit node")  # fmt: skip
    poll_until(lambda: "default dev weft0" in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the default route at a")  # fmt: skip
    got = a.host.run(["ip", "route", "get", ctl.ip]).stdout
    assert "dev weft0" in got and "table 52" in got, got
    own_traffic_unbroken(a, r1, 10)
    assert reaches(a, ctl.ip)
    for n in (r1, a):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def iperf_mbit(client: Node, server: Host, ip: str) -> float:
    server.popen(["iperf3", "-s", "-1"])
    server.wait_listening(5201, proto="tcp")
    r = client.host.run(["iperf3", "-c", ip, "-t", "5", "-J"], check=False, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6


@pytest.mark.exclusive  # two throughputs compared: runs alone
def test_a_subnet_router_forwards_at_least_half_the_direct_tailnet_throughput(
    lab: Lab, tmp_path: Path
) -> None:
    o = office(lab, tmp_path, ["r1"])
    r1, a = o.routers["r1"], o.a
    direct = iperf_mbit(a, r1.host, r1.ip4())
    routed = iperf_mbit(a, o.s1, o.s1.ip)
    print(f"iperf3 a -> r1 (tailnet) {direct:.0f} Mbit/s, a -> s1 via r1 {routed:.0f} Mbit/s "
          f"({routed / direct:.2f}x)")  # fmt: skip
    assert routed >= 0.5 * direct
