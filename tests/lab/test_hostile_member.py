"""One hostile tailnet member cannot stop anybody else (real weftd nodes in namespaces).

The member speaks the real node protocol (weftlab.hostile) and tries an all-zero node
key, a low-order disco key, a hostname full of terminal escapes, 200 endpoints
(loopback and multicast among them) and garbage map requests. The server refuses the bad
keys with messages naming them. Then the worst case: the server's own database hands
every node that member with an all-zero node key and a low-order disco key (an old
server, a restored backup, a bug): each honest node skips that peer, names it in its
health list and keeps everything else working. Three honest nodes ping each other the
whole time without losing a packet.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import Node, join, start_node, wait_mesh
from weftnet import controlbox, tailcfg
from weftnet.endpoint import is_usable_peer_address, parse_endpoint

pytestmark = pytest.mark.lab

ZERO_NODE_KEY = controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, bytes(32))
LOW_ORDER_DISCO = controlbox.key_to_text(
    tailcfg.DISCO_KEY_PREFIX,
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
)
PING_COUNT = 80  # 8 s at 0.1 s: spans the hostile member's tries and the server restart
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def ping_stream(src: Node, dst_ip: str, out: dict[str, str]) -> None:
    r = src.host.run(
        ["ping", "-c", str(PING_COUNT), "-i", "0.1", "-W", "1", dst_ip], check=False, timeout=60
    )
    out[f"{src.host.name}->{dst_ip}"] = r.stdout


def test_a_hostile_member_cannot_stop_the_honest_nodes(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl_host = lab.host("ctl", inet)
    honest_hosts = [lab.host(name, inet) for name in ("a", "b", "c")]
    evil_host = lab.host("evil", inet)
    control = start_control(ctl_host, tmp_path / "control")
    honest = [start_node(tmp_path, h, h.name) for h in honest_hosts]
    key = join(control, honest)
    wait_mesh(honest, timeout_s=5)
    ips = {n.host.name: n.ip4() for n in honest}

    results: dict[str, str] = {}
    pingers = [
        threading.Thread(target=ping_stream, args=(src, ips[dst.host.name], results))
        for src, dst in zip(honest, [*honest[1:], honest[0]], strict=True)
    ]
    for t in pingers:
        t.start()

    # 1. The member tries its luck through the node protocol.
    hostile = [sys.executable, "-m", "weftlab.hostile", control.url, key, str(control.ca_file)]
    r = evil_host.run(hostile, timeout=60)
    tries = json.loads(r.stdout)
    print("hostile member:", json.dumps(tries, indent=1))
    assert "node key" in tries["zero_node_key"] and "low-order" in tries["zero_node_key"]
    assert tries["registered"]
    assert "disco key" in tries["low_order_disco_key"]
    assert "low-order" in tries["low_order_disco_key"]
    assert tries["escapes_and_endpoints"] == ""  # accepted, cleaned up (below)
    garbage = tries["garbage_map"]
    assert garbage.pop("not sealed") == "HTTP 401"
    assert garbage.pop("sealed stale").startswith("clock_skew: ")
    assert all(a.startswith("bad_request: ") for a in garbage.values()), garbage

    listed = control.admin_json("nodes", "list")
    evil = next(n for n in listed if n["node_key"] == tries["node_key"])
    assert not CONTROL_CHARS.search(json.dumps(evil, ensure_ascii=False))
    # The 200 endpoints: only usable unicast ones kept, at most MAX_ENDPOINTS (+ the
    # address the server saw the member come from).
    kept = [parse_endpoint(e) for e in evil["endpoints"]]
    assert 0 < len(kept) <= tailcfg.MAX_ENDPOINTS + 1, evil["endpoints"]
    assert all(is_usable_peer_address(e) for e in kept), evil["endpoints"]
    assert not CONTROL_CHARS.search(control.admin("nodes", "list").stdout.replace("\n", ""))
    peer_view = next(p for p in honest[0].status()["peers"] if p["id"] == evil["id"])
    assert not CONTROL_CHARS.search(peer_view["hostname"])

    # 2. A server that hands out the member with keys no session can use.
    control.kill()
    with sqlite3.connect(control.data_dir / "control.db") as db:
        db.execute(
            "UPDATE nodes SET node_key = ?, disco_key = ? WHERE id = ?",
            (ZERO_NODE_KEY, LOW_ORDER_DISCO, evil["id"]),
        )
    control.start()
    name = evil["given_name"]

    def skipped_everywhere() -> bool:
        for n in honest:
            health = n.status().get("health", [])
            if not any(name in h and "skipped" in h for h in health):
                return False
        return True

    poll_until(skipped_everywhere, timeout_s=15, what=f"every honest node to skip {name}")
    print("health of a:", honest[0].status()["health"])
    text = honest[0].weft("status").stdout
    assert name in text and "skipped" in text, text
    assert not CONTROL_CHARS.search(text.replace("\n", "")), text

    for t in pingers:
        t.join(timeout=60)
    for pair, out in results.items():
        assert f"{PING_COUNT} packets transmitted, {PING_COUNT} received" in out, (pair, out)

    # The honest nodes still follow the map (a new node appears) and logged no traceback.
    late = start_node(tmp_path, lab.host("late", inet), "late")
    late.weft("up", "--login-server", control.url, "--auth-key", key, "--hostname", "late")
    wait_mesh([*honest, late], timeout_s=10)
    for n in honest:
        assert "Traceback" not in n.log(), n.log()[-3000:]
