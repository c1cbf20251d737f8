"""Issue 18: two relays serve one region as a mesh. Nodes homed on different relays,
with UDP between them blocked, reach each other through the mesh (ping, iperf3); when
one relay dies its nodes move to the other within 5 s and traffic resumes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, join, start_node
from weftlab.testca import lab_ca

pytestmark = pytest.mark.lab

MESH = "lab"
RELAY_PORT = 8081


def start_mesh_relay(
    control: Control, host: Host, name: str, api_key: str, secret: Path, tmp: Path
) -> subprocess.Popen[bytes]:
    """``weft-control relay --region NAME --mesh lab`` on ``host``, https on 8081."""
    cert, key = lab_ca().issue(name, [host.ip], tmp / f"{name}-tls")
    with open(tmp / f"{name}.log", "ab") as log:  # the child keeps its own copy
        return host.popen(
            [sys.executable, "-m", "weftnet.control.cli.main", "relay", "--region", name,
             "--mesh", MESH, "--mesh-secret-file", str(secret),
             "--listen", f"0.0.0.0:{RELAY_PORT}", "--stun-port", "0",
             "--control-url", control.url, "--api-key", api_key, "--data-dir", str(tmp / name),
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(control.ca_file)],
            stdout=log, stderr=log,
        )  # fmt: skip


def refuse_tcp(host: Host, to: Host) -> None:
    """``host`` gets a TCP reset from anything it sends to ``to``'s relay port."""
    rules = (
        "table inet meshtest {\n chain out {\n  type filter hook output priority filter;\n"
        f"  ip daddr {to.ip} tcp dport {RELAY_PORT} reject with tcp reset\n }}\n}}\n"
    )
    host.run(["nft", "-f", "-"], input=rules)


def allow_tcp(host: Host) -> None:
    host.run(["nft", "delete", "table", "inet", "meshtest"])


def relay_of(n: Node) -> str | None:
    servers: dict[str, str] = n.status().get("relay_servers", {})
    return servers.get(MESH)


def pings(src: Node, ip: str) -> bool:
    r = src.host.run(["ping", "-c", "1", "-W", "1", ip], check=False)
    return r.returncode == 0


def test_nodes_on_two_relays_of_a_region_talk_through_the_mesh_and_survive_one_dying(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    r1_host, r2_host = lab.host("r1", inet), lab.host("r2", inet)
    a_host, b_host = lab.host("a", inet), lab.host("b", inet)
    control = start_control(ctl, tmp_path / "control", extra_args=["--no-relay"])
    api_key = control.admin("apikeys", "create", "--scope", "relay").stdout.strip()
    secret = tmp_path / "mesh.secret"
    secret.touch(mode=0o600)
    secret.write_text("a1" * 32 + "\n")
    relays = {
        "lab-1": start_mesh_relay(control, r1_host, "lab-1", api_key, secret, tmp_path),
        "lab-2": start_mesh_relay(control, r2_host, "lab-2", api_key, secret, tmp_path),
    }
    poll_until(
        lambda: {r["region"] for r in control.admin_json("relays", "list")} == set(relays),
        timeout_s=15,
        what="both relays in the relay map",
    )
    listed = control.admin_json("relays", "list")
    assert {r["mesh"] for r in listed} == {MESH}

    # Home a on lab-1 and b on lab-2: each can reach only that one while it connects.
    refuse_tcp(a_host, r2_host)
    refuse_tcp(b_host, r1_host)
    lab.block_udp(a_host, b_host)  # no direct path: only the relays
    a, b = start_node(tmp_path, a_host, "a"), start_node(tmp_path, b_host, "b")
    join(control, [a, b])
    poll_until(lambda: relay_of(a) == "lab-1" and relay_of(b) == "lab-2", timeout_s=20,
               what="a on lab-1 and b on lab-2")  # fmt: skip
    allow_tcp(a_host)
    allow_tcp(b_host)
    assert a.status()["home_relay"] == b.status()["home_relay"] == MESH

    b_ip, a_ip = b.ip4(), a.ip4()
    poll_until(lambda: pings(a, b_ip), timeout_s=15, what="a ping from a to b via the mesh")
    assert pings(b, a_ip)
    peer = a.status()["peers"][0]
    assert peer["path"] == "relay" and peer["home_relay"] == MESH, peer
    assert (relay_of(a), relay_of(b)) == ("lab-1", "lab-2")  # so the mesh carried them

    b.host.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL)
    b.host.wait_listening(5201, proto="tcp")
    out = a.host.run(["iperf3", "-c", b_ip, "-t", "3", "-J"], check=False, timeout=60)
    result = json.loads(out.stdout)
    assert "error" not in result, result.get("error")
    assert all(i["sum"]["bytes"] > 0 for i in result["intervals"])
    received = result["end"]["sum_received"]["bytes"]
    assert received > 1_000_000, received
    print(f"iperf3 through the mesh: {result['end']['sum_received']['bits_per_second'] / 1e6:.0f}"
          f" Mbit/s ({received} bytes)")  # fmt: skip

    # lab-2 dies: b moves to lab-1 within 5 s, and a reaches it again.
    relays["lab-2"].kill()
    killed = time.monotonic()
    relays["lab-2"].wait(10)
    moved = poll_until(lambda: relay_of(b) == "lab-1", timeout_s=5, what="b on lab-1")
    assert moved
    took = time.monotonic() - killed
    poll_until(lambda: pings(a, b_ip), timeout_s=10, what="a ping from a to b after the move")
    back = time.monotonic() - killed
    print(f"b on lab-1 {took:.2f} s after lab-2 died; ping again after {back:.2f} s")
    assert relay_of(a) == "lab-1"

    relays["lab-1"].terminate()
    assert relays["lab-1"].wait(15) == 0
    for name in relays:
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert "mesh: watching" in log, log[-3000:]
        assert "a1" * 32 not in log  # the mesh secret never reaches a log
    for n in (a, b):
        assert "Traceback" not in n.log(), n.log()[-3000:]
    assert "Traceback" not in control.log(), control.log()[-3000:]
