"""Device approval end to end (docs/identity.md): weftd nodes in
namespaces around a coordination server with device approval on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import Node, join, pings, start_node, wait_mesh

pytestmark = pytest.mark.lab
APPROVAL_REACH_S = 2.0  # the console's answer to the approval to the first ping from a peer


def quick_ping(src: Node, dst_ip: str) -> bool:
    """One echo, waiting 0.3 s for it (a finer clock than ``pings``)."""
    r = src.host.run(["ping", "-c", "1", "-W", "0.3", dst_ip], check=False, timeout=10)
    return r.returncode == 0


def test_a_new_device_waits_for_approval_then_joins_within_2_s(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl_host = lab.host("ctl", inet)
    hosts = [lab.host(name, inet) for name in ("a", "b", "c", "d")]
    control = start_control(ctl_host, tmp_path / "control")
    a, b, c, d = (start_node(tmp_path, h, h.name) for h in hosts)
    join(control, [a, b])  # before approval is on: authorized at once
    wait_mesh([a, b], timeout_s=5)
    assert control.admin("settings", "set", "--device-approval", "on").stdout.strip() == (
        "device approval: on"
    )
    key = control.admin("keys", "create", "--user", "alice").stdout.strip()
    # `weft up` says where to approve it, once, and keeps waiting (here: gives up at 3 s).
    r = c.weft("up", "--login-server", control.url, "--auth-key", key, "--hostname", "c",
               "--timeout", "3", check=False)  # fmt: skip
    assert r.returncode != 0 and "timed out" in r.stderr
    assert r.stdout.count("To approve your machine, visit (as admin):") == 1, r.stdout
    assert f"\t{control.url}/admin" in r.stdout
    st = c.status()
    assert st["backend_state"] == "NeedsMachineAuth" and st["peers"] == []
    assert st["admin_url"] == f"{control.url}/admin"
    text = c.weft("status", check=False).stdout
    assert f"Waiting for an admin to approve this machine: visit {control.url}/admin" in text
    c_ip = c.ip4()
    for peer in (a, b):
        assert "c" not in {p["hostname"] for p in peer.status()["peers"]}
    assert not pings(a, c_ip) and not pings(c, a.ip4())
    nodes = {n["given_name"]: n for n in control.admin_json("nodes", "list")}
    assert not nodes["c"]["authorized"] and nodes["a"]["authorized"]
    # The admin approves it in the web console (logged in with a local account, the
    # form's Approve button): a peer reaches it within 2 s.
    control.admin("users", "create", "admin")
    control.admin("users", "role", "admin", "admin")
    password = control.admin("users", "set-password", "admin", "--generate").stdout.split()[-1]
    assert control.ca_file is not None
    browser = [sys.executable, "-m", "weftlab.console_browser", control.url, str(control.ca_file)]
    r = ctl_host.run([*browser, "admin", password, "approve", str(nodes["c"]["id"])])
    approved = json.loads(r.stdout)
    assert approved["status"] == 303, approved
    poll_until(lambda: quick_ping(a, c_ip), timeout_s=10, what="a ping from a to c")
    elapsed = time.time() - approved["answered_at"]
    print(f"c reachable {elapsed:.2f} s after the console's Approve")
    assert elapsed < APPROVAL_REACH_S
    assert c.status()["backend_state"] == "Running"
    # A preauthorized key skips approval: `weft up` returns Running.
    pre = control.admin("keys", "create", "--user", "alice", "--preauthorized").stdout.strip()
    d.weft("up", "--login-server", control.url, "--auth-key", pre, "--hostname", "d")
    assert d.status()["backend_state"] == "Running"
    wait_mesh([a, d], timeout_s=5)
    lines = control.admin("audit", "--limit", "50", "--json").stdout.splitlines()
    actions = [json.loads(line)["action"] for line in lines]
    assert "node.authorize" in actions and "settings.set" in actions
