"""Subnet routes end to end (issue 14, docs/routes.md): a router in an office LAN with a
plain host that runs no weftd, a client on the internet, real weftd nodes and server.

The office LAN sits behind its NAT router; r1 (weftd) is on that LAN and advertises it;
s1 is a plain host there whose default gateway is the NAT router, not r1, so its replies
reach the tailnet only because r1 masquerades (--snat-subnet-routes, the default).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, start_node

pytestmark = pytest.mark.lab


def reaches(node: Node, ip: str) -> bool:
    r = node.host.run(["ping", "-c", "1", "-W", "1", ip], check=False, timeout=10)
    return r.returncode == 0


def table_52(host: Host) -> str:
    return host.run(["ip", "-4", "route", "show", "table", "52"], check=False).stdout


ECHO_PORT = 8000
# A TCP server that answers each connection with the client address it sees, and logs it.
WHOAMI_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, peer = s.accept()
    print(peer[0], flush=True)
    c.sendall(peer[0].encode())
    c.close()
"""
WHOAMI_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(100).decode())
except OSError:
    pass
"""


def start_whoami(host: Host, log: Path, port: int = ECHO_PORT) -> None:
    host.popen([sys.executable, "-c", WHOAMI_SERVER, str(port)], stdout=open(log, "w"))  # noqa: SIM115
    host.wait_listening(port, proto="tcp")


def whoami(src: Host, ip: str, port: int = ECHO_PORT, timeout_s: float = 1.0) -> str:
    """The client address the server at ip:port sees from ``src``; '' when unreachable."""
    cmd = [sys.executable, "-c", WHOAMI_CLIENT, ip, str(port), str(timeout_s)]
    return str(src.run(cmd, check=False, timeout=timeout_s + 10).stdout.strip())


def not_local_drops(host: Host) -> int:
    """Packets from the tunnel that weftd's forward chain dropped as not served."""
    out = host.run(["nft", "-j", "list", "table", "inet", "weftd"]).stdout
    rules = [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]
    return sum(int(x["counter"]["packets"]) for r in rules if r.get("comment") == "not local"
               for x in r["expr"] if "counter" in x)  # fmt: skip


def test_a_subnet_route_works_within_2_s_of_approval_and_goes_within_2_s(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    office = lab.nat_router("office", upstream=inet)
    r1_host, s1 = lab.host("r1", office.lan), lab.host("s1", office.lan)
    r1_host._sysctl({"net.ipv4.ip_forward": 1})
    lan = str(office.lan.network)
    control = start_control(ctl, tmp_path / "control")
    control.admin("users", "create", "alice")
    key = control.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    r1 = start_node(tmp_path, r1_host, "r1")
    a = start_node(tmp_path, lab.host("a", inet), "a")
    b = start_node(tmp_path, lab.host("b", inet), "b")
    login = ["up", "--login-server", control.url, "--auth-key", key]
    r1.weft(*login, "--hostname", "r1", "--advertise-routes", lan)
    a.weft(*login, "--hostname", "a", "--accept-routes")
    b.weft(*login, "--hostname", "b")  # does not accept routes
    r1_id = control.node_id("r1")
    poll_until(lambda: lan in json.dumps(control.admin_json("nodes", "routes")),
               timeout_s=5, what="r1's route announced")  # fmt: skip
    assert not reaches(a, s1.ip)  # announced, not approved

    control.admin("nodes", "approve-routes", str(r1_id), "--routes", lan)
    t0 = time.monotonic()
    poll_until(lambda: reaches(a, s1.ip), timeout_s=2.5, interval_s=0.05, what="a -> s1")
    usable_s = time.monotonic() - t0
    assert lan in table_52(a.host), table_52(a.host)
    assert not reaches(b, s1.ip) and lan not in table_52(b.host)  # no --accept-routes
    st = a.status()
    assert any(lan in p.get("primary_routes", []) for p in st["peers"]), st["peers"]

    control.admin("nodes", "approve-routes", str(r1_id), "--routes", "")
    t0 = time.monotonic()
    poll_until(lambda: lan not in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the route gone from a")  # fmt: skip
    gone_s = time.monotonic() - t0
    assert not reaches(a, s1.ip)
    # Approved again, then the router stops advertising it (`weft set`, no new login).
    control.admin("nodes", "approve-routes", str(r1_id), "--routes", lan)
    poll_until(lambda: reaches(a, s1.ip), timeout_s=2.5, interval_s=0.05, what="a -> s1 again")
    r1.weft("set", "--advertise-routes", "")
    t0 = time.monotonic()
    poll_until(lambda: lan not in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the route gone once r1 stops advertising it")  # fmt: skip
    unadvertised_s = time.monotonic() - t0
    assert not reaches(a, s1.ip)
    print(f"route usable {usable_s:.2f} s after approval, gone {gone_s:.2f} s after withdrawal,"
          f" {unadvertised_s:.2f} s after the router stopped advertising it")  # fmt: skip
    for n in (r1, a, b):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def test_an_exit_node_carries_internet_traffic_and_nothing_leaks_when_it_dies(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, i = lab.host("ctl", inet), lab.host("i", inet)
    nat_e = lab.nat_router("nate", upstream=inet)
    nat_a = lab.nat_router("nata", upstream=inet)
    e_host, a_host = lab.host("e", nat_e.lan), lab.host("a", nat_a.lan)
    neighbour = lab.host("nb", nat_a.lan)  # a host on a's own LAN
    guest = lab.host("g", nat_e.lan)  # a host on e's LAN: not for exit node users
    e_host._sysctl({"net.ipv4.ip_forward": 1})
    i_log = tmp_path / "i.log"
    start_whoami(i, i_log)
    control = start_control(ctl, tmp_path / "control")
    control.admin("users", "create", "alice")
    key = control.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    e = start_node(tmp_path, e_host, "e")
    a = start_node(tmp_path, a_host, "a")
    login = ["up", "--login-server", control.url, "--auth-key", key]
    e.weft(*login, "--hostname", "e", "--advertise-exit-node")
    a.weft(*login, "--hostname", "a")
    assert whoami(a_host, i.ip) == nat_a.wan_ip  # no exit node yet
    control.admin(
        "nodes", "approve-routes", str(control.node_id("e")), "--routes", "0.0.0.0/0,::/0"
    )
    poll_until(lambda: "e" in a.weft("exit-node", "list").stdout.split(), timeout_s=5,
               interval_s=0.1, what="e in a's `weft exit-node list`")  # fmt: skip
    listed = json.loads(a.weft("exit-node", "list", "--json").stdout)
    assert [n["hostname"] for n in listed] == ["e"] and listed[0]["online"], listed

    a.weft("set", "--exit-node", "e")
    t0 = time.monotonic()
    poll_until(lambda: whoami(a_host, i.ip) == nat_e.wan_ip, timeout_s=2.5, interval_s=0.05,
               what="i to see e's NAT address from a")  # fmt: skip
    switch_s = time.monotonic() - t0
    route = a_host.run(["ip", "-4", "route", "get", i.ip]).stdout
    assert "dev weft0" in route and "table 52" in route, route
    assert reaches(a, i.ip)
    routes = a.status()["routes"]
    assert routes["exit_node"] == e.ip4() and routes["exit_routes"], routes  # stored as its IP

    def direct_to_e() -> bool:  # weftd's own traffic bypasses the default route into weft0
        st = a.status()
        return st["self"]["online"] and [p["path"] for p in st["peers"]] == ["direct"]

    poll_until(direct_to_e, timeout_s=10, interval_s=0.2, what="a: online, direct path to e")

    # LAN access only with --exit-node-allow-lan-access.
    assert not reaches(a, neighbour.ip)
    a.weft("set", "--exit-node-allow-lan-access")
    poll_until(lambda: reaches(a, neighbour.ip), timeout_s=3, interval_s=0.1, what="a -> its LAN")
    assert whoami(a_host, i.ip) == nat_e.wan_ip  # the internet still goes through e
    a.weft("set", "--exit-node-allow-lan-access=false")
    poll_until(lambda: not reaches(a, neighbour.ip), timeout_s=3, interval_s=0.1,
               what="a's LAN through e again")  # fmt: skip

    # e's own LAN is not part of the internet it offers ("guest Wi-Fi").
    before = not_local_drops(e_host)
    assert not reaches(a, guest.ip) and not reaches(a, nat_e.lan_ip)
    assert whoami(a_host, guest.ip) == "" and not_local_drops(e_host) >= before + 3

    # Stop using e, and start again.
    a.weft("set", "--exit-node=")
    t0 = time.monotonic()
    poll_until(lambda: whoami(a_host, i.ip) == nat_a.wan_ip, timeout_s=2, interval_s=0.05,
               what="i to see a's own NAT address again")  # fmt: skip
    back_s = time.monotonic() - t0
    a.weft("set", "--exit-node", "e")
    poll_until(lambda: whoami(a_host, i.ip) == nat_e.wan_ip, timeout_s=2, interval_s=0.05,
               what="i to see e's NAT address again")  # fmt: skip

    # Kill switch: e's weftd dies; a's traffic goes nowhere, not around it.
    e.kill9()
    seen_before = i_log.read_text().split()
    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < 5:
        assert whoami(a_host, i.ip, timeout_s=0.5) == ""
        assert not reaches(a, i.ip)
        attempts += 1
    seen_after = i_log.read_text().split()[len(seen_before) :]
    assert nat_a.wan_ip not in seen_after and a_host.ip not in seen_after, seen_after

    def says_blocked() -> bool:
        health = " ".join(a.status()["health"])
        return "exit node" in health and "blocked" in health

    poll_until(says_blocked, timeout_s=5, interval_s=0.1, what="a's health to say it is blocked")
    print(f"exit node used {switch_s:.2f} s after `weft set --exit-node e`, "
          f"left {back_s:.2f} s after `weft set --exit-node=`; "
          f"{attempts} probes to i after kill -9 of e's weftd, none leaked")  # fmt: skip
    for n in (e, a):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def set_policy(control: Control, tmp: Path, text: str) -> float:
    """Put ``text`` in force; the monotonic time the command returned."""
    path = tmp / "policy.hujson"
    path.write_text(text)
    out = control.admin("policy", "set", str(path)).stdout
    assert out.startswith("policy set:"), out
    return time.monotonic()


def routes_of_peers(node: Node) -> list[str]:
    return [r for p in node.status()["peers"] for r in p.get("primary_routes") or []]


def test_the_policy_limits_a_routed_lan_to_one_port_and_hides_it_from_others(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    office = lab.nat_router("office", upstream=inet)
    r1_host, s1 = lab.host("r1", office.lan), lab.host("s1", office.lan)
    r1_host._sysctl({"net.ipv4.ip_forward": 1})
    start_whoami(s1, tmp_path / "s1-8000.log", 8000)
    start_whoami(s1, tmp_path / "s1-8001.log", 8001)
    lan = str(office.lan.network)
    alice_only = f"""{{
  // alice reaches one port on one office host through r1; nothing else is allowed.
  "acls": [
    {{"action": "accept", "src": ["alice@example.com"], "dst": ["{s1.ip}/32:8000"]}},
  ],
  "tests": [
    {{"src": "alice@example.com", "accept": ["{s1.ip}:8000"], "deny": ["{s1.ip}:8001"]}},
  ],
}}
"""
    both = alice_only.replace(
        '["alice@example.com"], "dst"', '["alice@example.com", "bob@example.com"], "dst"'
    )
    control = start_control(ctl, tmp_path / "control")
    set_policy(control, tmp_path, both)
    keys = {}
    for user in ("alice@example.com", "bob@example.com"):
        control.admin("users", "create", user)
        keys[user] = control.admin("keys", "create", "--user", user, "--reusable").stdout.strip()
    r1 = start_node(tmp_path, r1_host, "r1")
    a = start_node(tmp_path, lab.host("a", inet), "a")
    b = start_node(tmp_path, lab.host("b", inet), "b")
    up = ["up", "--login-server", control.url, "--auth-key"]
    r1.weft(*up, keys["alice@example.com"], "--hostname", "r1", "--advertise-routes", lan)
    a.weft(*up, keys["alice@example.com"], "--hostname", "a", "--accept-routes")
    b.weft(*up, keys["bob@example.com"], "--hostname", "b", "--accept-routes")
    control.admin("nodes", "approve-routes", str(control.node_id("r1")), "--routes", lan)
    for n in (a, b):
        poll_until(lambda n=n: lan in table_52(n.host), timeout_s=5, interval_s=0.05,
                   what=f"{n.host.name} to get the route")  # fmt: skip

    # bob's rule goes: his node loses the route, alice's keeps it.
    applied = set_policy(control, tmp_path, alice_only)
    poll_until(lambda: lan not in table_52(b.host), timeout_s=2, interval_s=0.05,
               what="the route gone from bob's node")  # fmt: skip
    hidden_s = time.monotonic() - applied
    assert lan not in routes_of_peers(b), b.status()["peers"]
    assert whoami(b.host, s1.ip) == ""
    assert lan in table_52(a.host) and lan in routes_of_peers(a)

    # alice: port 8000 only, through r1's masquerade; the rest dropped at r1.
    poll_until(lambda: whoami(a.host, s1.ip) == r1_host.ip, timeout_s=5, interval_s=0.1,
               what="alice's node to reach s1:8000 through r1")  # fmt: skip
    before = r1.status()["counters"]["drop_filtered"]
    for _ in range(3):
        assert whoami(a.host, s1.ip, 8001, timeout_s=0.5) == ""
    dropped = r1.status()["counters"]["drop_filtered"] - before
    assert dropped >= 3, dropped  # at least each probe's SYN
    # (ICMP has no ports: as in Tailscale, the rule lets alice ping s1; docs/policy.md)
    assert (tmp_path / "s1-8001.log").read_text() == ""
    r = control.admin("policy", "check", str(tmp_path / "policy.hujson"), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"bob's node lost the route {hidden_s:.2f} s after `policy set`; r1 dropped {dropped}")
    for n in (r1, a, b):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def test_auto_approvers_approve_a_tagged_router_and_revoke_within_2_s(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    office = lab.nat_router("office", upstream=inet)
    r1_host, s1 = lab.host("r1", office.lan), lab.host("s1", office.lan)
    r1_host._sysctl({"net.ipv4.ip_forward": 1})
    lan = str(office.lan.network)
    other = "198.19.40.0/24"  # announced too, but no autoApprovers entry covers it
    auto = f"""{{
  "tagOwners": {{"tag:router": ["alice@example.com"], "tag:exit": ["alice@example.com"]}},
  "autoApprovers": {{"routes": {{"{lan}": ["tag:router"]}}, "exitNode": ["tag:exit"]}},
  "acls": [{{"action": "accept", "src": ["*"], "dst": ["*:*"]}}],
}}
"""
    control = start_control(ctl, tmp_path / "control")
    set_policy(control, tmp_path, auto)
    control.admin("users", "create", "alice@example.com")
    key = control.admin("keys", "create", "--user", "alice@example.com", "--reusable").stdout
    tagged, exit_key = (
        control.admin("keys", "create", "--user", "alice@example.com", "--tags", tag).stdout
        for tag in ("tag:router", "tag:exit")
    )
    r1 = start_node(tmp_path, r1_host, "r1")
    e_host = lab.host("e", inet)
    e_host._sysctl({"net.ipv4.ip_forward": 1})
    e = start_node(tmp_path, e_host, "e")
    e.weft("up", "--login-server", control.url, "--auth-key", exit_key.strip(), "--hostname",
           "e", "--advertise-exit-node")  # fmt: skip
    a = start_node(tmp_path, lab.host("a", inet), "a")
    a.weft("up", "--login-server", control.url, "--auth-key", key.strip(), "--hostname", "a",
           "--accept-routes")  # fmt: skip
    t0 = time.monotonic()
    r1.weft("up", "--login-server", control.url, "--auth-key", tagged.strip(), "--hostname",
            "r1", "--advertise-routes", f"{lan},{other}", "--advertise-exit-node")  # fmt: skip
    poll_until(lambda: lan in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the auto-approved route at a")  # fmt: skip
    approved_s = time.monotonic() - t0
    poll_until(lambda: reaches(a, s1.ip), timeout_s=5, interval_s=0.05, what="a -> s1")
    usable_s = time.monotonic() - t0
    (routes,) = [r for r in control.admin_json("nodes", "routes") if r["given_name"] == "r1"]
    assert routes["auto_approved"] == [lan] and routes["approved"] == [], routes  # no exit
    assert routes["serving"] == [lan] and sorted(routes["announced"]) == sorted(
        [lan, other, "0.0.0.0/0", "::/0"]
    )
    (e_routes,) = [r for r in control.admin_json("nodes", "routes") if r["given_name"] == "e"]
    assert sorted(e_routes["auto_approved"]) == ["0.0.0.0/0", "::/0"], e_routes
    listed = json.loads(a.weft("exit-node", "list", "--json").stdout)
    assert [n["hostname"] for n in listed] == ["e"], listed
    listing = control.admin("nodes", "routes").stdout
    assert f"{lan} (auto)" in listing, listing
    assert other not in table_52(a.host)

    # The entry goes: the approval it made goes with it; others stay.
    control.admin("nodes", "approve-routes", str(control.node_id("r1")), "--routes", other)
    poll_until(lambda: other in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the manually approved route at a")  # fmt: skip
    revoked = set_policy(control, tmp_path, auto.replace(f'"{lan}": ["tag:router"]', ""))
    poll_until(lambda: lan not in table_52(a.host), timeout_s=2, interval_s=0.05,
               what="the route gone from a")  # fmt: skip
    revoke_s = time.monotonic() - revoked
    assert not reaches(a, s1.ip)
    (routes,) = [r for r in control.admin_json("nodes", "routes") if r["given_name"] == "r1"]
    assert routes["auto_approved"] == [] and routes["serving"] == [other], routes
    assert routes["approved"] == [other] and other in table_52(a.host)
    (e_routes,) = [r for r in control.admin_json("nodes", "routes") if r["given_name"] == "e"]
    assert sorted(e_routes["auto_approved"]) == ["0.0.0.0/0", "::/0"], e_routes
    print(f"auto-approved route at a {approved_s:.2f} s, usable {usable_s:.2f} s after r1's "
          "`weft up` returned; "
          f"revoked at a {revoke_s:.2f} s after `policy set`")  # fmt: skip
    for n in (r1, a, e):
        assert "Traceback" not in n.log(), n.log()[-3000:]


def test_an_exit_node_is_offered_only_to_users_the_policy_lets_reach_the_internet(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, i = lab.host("ctl", inet), lab.host("i", inet)
    nat_e = lab.nat_router("nate", upstream=inet)
    e_host, a_host = lab.host("e", nat_e.lan), lab.host("a", inet)
    e_host._sysctl({"net.ipv4.ip_forward": 1})
    start_whoami(i, tmp_path / "i.log")
    tailnet_only = """{
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]}],
}
"""
    internet = tailnet_only.replace(
        '"acls": [',
        '"acls": [{"action": "accept", "src": ["alice@example.com"], '
        '"dst": ["autogroup:internet:*"]},',
    )
    control = start_control(ctl, tmp_path / "control")
    set_policy(control, tmp_path, tailnet_only)
    control.admin("users", "create", "alice@example.com")
    key = control.admin("keys", "create", "--user", "alice@example.com", "--reusable").stdout
    e = start_node(tmp_path, e_host, "e")
    a = start_node(tmp_path, a_host, "a")
    login = ["up", "--login-server", control.url, "--auth-key", key.strip()]
    e.weft(*login, "--hostname", "e", "--advertise-exit-node")
    a.weft(*login, "--hostname", "a")
    control.admin("nodes", "approve-routes", str(control.node_id("e")), "--routes", "0.0.0.0/0")
    poll_until(lambda: reaches(a, e.ip4()), timeout_s=5, interval_s=0.1, what="a -> e")
    assert json.loads(a.weft("exit-node", "list", "--json").stdout) == []
    r = a.weft("set", "--exit-node", "e", check=False)
    assert r.returncode != 0 and "not an exit node" in r.stderr + r.stdout, r
    assert whoami(a_host, i.ip) == a_host.ip

    applied = set_policy(control, tmp_path, internet)
    poll_until(lambda: json.loads(a.weft("exit-node", "list", "--json").stdout) != [],
               timeout_s=2, interval_s=0.05, what="e offered to a")  # fmt: skip
    offered_s = time.monotonic() - applied
    a.weft("set", "--exit-node", "e")
    poll_until(lambda: whoami(a_host, i.ip) == nat_e.wan_ip, timeout_s=2, interval_s=0.05,
               what="i to see e's NAT address from a")  # fmt: skip
    print(f"e offered to a {offered_s:.2f} s after the policy allowing autogroup:internet")
    for n in (e, a):
        assert "Traceback" not in n.log(), n.log()[-3000:]
