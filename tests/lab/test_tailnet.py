"""Issue 3 end to end: a coordination server and three weftd nodes in namespaces."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import Node, join, pings, start_node, wait_mesh

pytestmark = pytest.mark.lab


def build(lab: Lab, tmp: Path, database_url: str | None = None) -> tuple[Control, list[Node]]:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl_host = lab.host("ctl", inet)
    a = lab.host("a", inet)
    b = lab.host("b", inet)
    nat = lab.nat_router("nat", upstream=inet, kind="easy")
    c = lab.host("c", nat.lan)
    control = start_control(ctl_host, tmp / "control", database_url=database_url)
    nodes = [start_node(tmp, h, h.name) for h in (a, b, c)]
    return control, nodes


def test_three_nodes_ping_each_other_within_5_s(lab: Lab, tmp_path: Path) -> None:
    control, nodes = build(lab, tmp_path)
    join(control, nodes)
    elapsed = wait_mesh(nodes, timeout_s=5)
    print(f"mesh complete {elapsed:.2f} s after the last `weft up`")
    st = nodes[2].status()
    assert st["backend_state"] == "Running" and st["self"]["online"]
    assert {p["hostname"] for p in st["peers"]} == {"a", "b"}
    for p in st["peers"]:
        assert set(p) >= {"hostname", "ips", "online", "path", "endpoint", "relay",
                          "rx_bytes", "tx_bytes", "last_handshake"}  # fmt: skip
        assert p["path"] == "direct" and p["online"]
        assert p["dns_name"] == f"{p['hostname']}.weft.internal"  # MagicDNS
    assert st["self"]["dns_name"] == "c.weft.internal"
    r = nodes[2].weft("ping", "a")  # by name
    assert f"pong from a ({nodes[0].ip4()}) via 198.18.0.2:41641 in" in r.stdout, r.stdout
    r = nodes[2].weft("ping", nodes[0].ip4())
    assert f"pong from a ({nodes[0].ip4()}) via 198.18.0.2:41641 in" in r.stdout, r.stdout
    report = json.loads(nodes[2].weft("netcheck", "--json").stdout)
    assert report["udp"] and report["preferred_relay"] == "default"
    assert report["public_address"].startswith("198.18.0.")  # c's NAT, seen by STUN
    assert nodes[2].weft("netcheck").stdout.startswith("Report:")
    v4 = nodes[0].ip4()
    assert v4.startswith("100.") and nodes[0].weft("ip", "-6").stdout.startswith("fd7a:115c:a1e0:")
    # The local API is root-only: another user cannot even connect to the socket.
    os.chmod(tmp_path, 0o755)
    probe = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1]); print('CONNECTED')\n"
        "except PermissionError:\n    print('REFUSED')"
    )
    r = nodes[0].host.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", probe, nodes[0].socket]
    )
    assert r.stdout.strip() == "REFUSED"


def test_control_server_crash_does_not_stop_traffic(lab: Lab, tmp_path: Path) -> None:
    control, nodes = build(lab, tmp_path)
    join(control, nodes)
    wait_mesh(nodes, timeout_s=5)
    before = {n.host.name: n.ip4() for n in nodes}
    a = nodes[0]
    # A steady ping through the crash: every echo must come back.
    result: dict[str, str] = {}

    def ping_through() -> None:
        r = a.host.run(["ping", "-c", "30", "-i", "0.2", "-W", "1", before["c"]], check=False,
                       timeout=30)  # fmt: skip
        result["out"] = r.stdout

    t = threading.Thread(target=ping_through)
    t.start()
    time.sleep(1)
    control.kill()
    poll_until(lambda: not a.status()["self"]["online"], timeout_s=10, what="a to notice")
    t.join()
    assert " 0% packet loss" in result["out"], result["out"]
    control.start()  # the same data directory
    for n in nodes:
        poll_until(lambda n=n: n.status()["self"]["online"], timeout_s=20, what="resync")
        assert n.status()["backend_state"] == "Running"  # no re-authentication
    assert {n.host.name: n.ip4() for n in nodes} == before
    wait_mesh(nodes, timeout_s=5)
    names = {row.get("name") or row.get("hostname") for row in control.admin_json("nodes", "list")}
    assert names >= {"a", "b", "c"}


def test_weftd_restart_comes_back_with_the_same_address(lab: Lab, tmp_path: Path) -> None:
    control, nodes = build(lab, tmp_path)
    join(control, nodes)
    wait_mesh(nodes, timeout_s=5)
    a = nodes[0]
    ip = a.ip4()
    a.kill9()
    a.start()
    poll_until(lambda: a.status()["backend_state"] == "Running", timeout_s=10, what="a back")
    assert a.ip4() == ip
    wait_mesh(nodes, timeout_s=10)


def test_deleted_node_is_cut_off_within_2_s(lab: Lab, tmp_path: Path) -> None:
    control, nodes = build(lab, tmp_path)
    join(control, nodes)
    wait_mesh(nodes, timeout_s=5)
    a, b, c = nodes
    c_ip = c.ip4()
    rows = control.admin_json("nodes", "list")
    cid = next(r["id"] for r in rows if (r.get("name") or r.get("hostname")) == "c")
    control.admin("nodes", "delete", str(cid))
    t0 = time.monotonic()
    poll_until(
        lambda: all(p["hostname"] != "c" for n in (a, b) for p in n.status()["peers"]),
        timeout_s=2,
        what="c to vanish from every peer's map",
    )
    assert time.monotonic() - t0 < 2
    assert not pings(a, c_ip, count=2)
    assert not pings(c, a.ip4(), count=2)
    poll_until(lambda: c.status()["backend_state"] == "NeedsLogin", timeout_s=5, what="c out")


def test_bad_auth_keys_are_refused_and_leave_nothing(lab: Lab, tmp_path: Path) -> None:
    control, nodes = build(lab, tmp_path)
    a, b = nodes[0], nodes[1]
    control.admin("users", "create", "bob")
    single = control.admin("keys", "create", "--user", "bob").stdout.strip()
    a.weft("up", "--login-server", control.url, "--auth-key", single)
    count = len(control.admin_json("nodes", "list"))
    revoked = control.admin("keys", "create", "--user", "bob").stdout.strip()
    control.admin("keys", "revoke", revoked.split("-")[1])
    expired = control.admin("keys", "create", "--user", "bob", "--expiration", "1s").stdout.strip()
    time.sleep(1.5)  # the key's lifetime must pass; there is nothing to poll
    for key in (single, revoked, expired, "weftkey-000000000000-" + "0" * 40, "garbage"):
        r = b.weft("up", "--login-server", control.url, "--auth-key", key, check=False)
        assert r.returncode != 0, key
        msg = r.stderr.strip()
        assert msg.startswith("weft: ") and "Traceback" not in msg and len(msg.splitlines()) == 1
        assert key not in msg or key == "garbage"
    assert len(control.admin_json("nodes", "list")) == count
    assert b.status()["backend_state"] == "NeedsLogin"


def test_three_nodes_on_postgresql(lab: Lab, tmp_path: Path, pg_cluster) -> None:  # type: ignore[no-untyped-def]
    # The control server runs in a lab namespace: it reaches the cluster by its unix socket.
    name = f"weft_lab_{os.getpid()}"
    pg_cluster.admin(f"CREATE DATABASE {name}")
    try:
        url = f"postgresql+psycopg://postgres@/{name}?host={pg_cluster.directory}&port={pg_cluster.port}"
        control, nodes = build(lab, tmp_path, database_url=url)
        join(control, nodes)
        wait_mesh(nodes, timeout_s=5)
        control.kill()
        control.start()
        for n in nodes:
            poll_until(lambda n=n: n.status()["self"]["online"], timeout_s=20, what="resync")
        assert len(control.admin_json("nodes", "list")) == 3
    finally:
        pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
