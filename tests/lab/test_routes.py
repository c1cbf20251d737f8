"""Subnet routes end to end (issue 14, docs/routes.md): a router in an office LAN with a
plain host that runs no weftd, a client on the internet, real weftd nodes and server.

The office LAN sits behind its NAT router; r1 (weftd) is on that LAN and advertises it;
s1 is a plain host there whose default gateway is the NAT router, not r1, so its replies
reach the tailnet only because r1 masquerades (--snat-subnet-routes, the default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, start_node

pytestmark = pytest.mark.lab


def reaches(node: Node, ip: str) -> bool:
    r = node.host.run(["ping", "-c", "1", "-W", "1", ip], check=False, timeout=10)
    return r.returncode == 0


def table_52(host: Host) -> str:
    return host.run(["ip", "-4", "route", "show", "table", "52"], check=False).stdout


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
    r1_id = next(n["id"] for n in control.admin_json("nodes", "list") if n["given_name"] == "r1")
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
