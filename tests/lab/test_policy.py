"""Issue 6 end to end: the access policy enforced by real weftd nodes in namespaces.

alice's laptop (a), bob's laptop (c) and a database server joined with a tag:db key
(b). The policy lets alice reach the database on 5432 only; b runs TCP echo servers on
5432, 22 and 8080, and every check is a real TCP exchange across the tailnet.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest

from weftlab import wgpeers
from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, start_node

pytestmark = pytest.mark.lab

ECHO_SERVER = r"""
import socket, sys, threading, time
lifetime_s = float(sys.argv[1])
def echo(c):
    with c:
        while data := c.recv(4096):
            c.sendall(data)
def serve(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
for port in sys.argv[2:]:
    threading.Thread(target=serve, args=(int(port),), daemon=True).start()
time.sleep(lifetime_s)  # bounded: the server ends by itself
"""

PROBE = r"""
import socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(b"weft\n")
        ok = s.recv(16) == b"weft\n"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"""

# One TCP connection kept busy for a while: a round trip every 50 ms, each allowed 2 s.
FLOW = r"""
import socket, sys, time
ip, port, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
n, err = 0, ""
try:
    s = socket.create_connection((ip, port), timeout=2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(b"x" * 64)
        got = b""
        while len(got) < 64:
            chunk = s.recv(64 - len(got))
            if not chunk:
                raise OSError("closed by the peer")
            got += chunk
        n += 1
        time.sleep(0.05)
except OSError as e:
    err = repr(e)
open(out, "w").write(f"{n} {err}")
sys.exit(1 if err else 0)
"""

POLICY = """{
  // alice reaches the database on 5432; nobody else reaches anything.
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
  ],
}
"""

OPEN_FOR_BOB = POLICY.replace(
    '"acls": [',
    '"acls": [\n    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:5432"]},',
)

SCHEDULED = POLICY.replace(
    '"acls": [',
    """"schedules": {"schedule:work": {"days": ["mon", "tue", "wed", "thu", "fri"],
                  "hours": "09:00-17:00", "timezone": "Europe/Berlin"}},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:8080"],
     "schedule": ["schedule:work"]},""",
)


def reach(host: Host, ip: str, port: int, timeout_s: float = 1.0) -> bool:
    r = host.run(["python3", "-c", PROBE, ip, str(port), str(timeout_s)], check=False, timeout=30)
    return r.returncode == 0


def set_policy(control: Control, tmp: Path, text: str) -> float:
    """Put ``text`` in force; the monotonic time the command returned."""
    path = tmp / "policy.hujson"
    path.write_text(text)
    out = control.admin("policy", "set", str(path)).stdout
    assert out.startswith("policy set:"), out
    return time.monotonic()


def tailnet(lab: Lab, tmp: Path) -> tuple[Control, Node, Node, Node]:
    """The control server (policy clock movable), a = alice, b = tag:db, c = bob."""
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    control = start_control(ctl, tmp / "control", policy_clock=True)
    set_policy(control, tmp, POLICY)
    for user in ("alice@example.com", "bob@example.com"):
        control.admin("users", "create", user)
    keys = {
        "a": control.admin("keys", "create", "--user", "alice@example.com").stdout.strip(),
        "b": control.admin(
            "keys", "create", "--user", "alice@example.com", "--tags", "tag:db"
        ).stdout,
        "c": control.admin("keys", "create", "--user", "bob@example.com").stdout.strip(),
    }
    nodes = []
    for name in ("a", "b", "c"):
        node = start_node(tmp, lab.host(name, inet), name)
        node.weft(
            "up",
            "--login-server",
            control.url,
            "--auth-key",
            keys[name].strip(),
            "--hostname",
            name,
        )
        nodes.append(node)
    a, b, c = nodes
    b.host.popen(["python3", "-c", ECHO_SERVER, "240", "5432", "22", "8080"])
    b_ip = b.ip4()
    poll_until(lambda: reach(a.host, b_ip, 5432), timeout_s=15, what="alice reaching db:5432")
    return control, a, b, c


def filtered(node: Node) -> int:
    return int(node.status()["counters"]["drop_filtered"])


def test_allowed_port_reachable_denied_port_not_even_from_a_plain_wireguard_peer(
    lab: Lab, tmp_path: Path
) -> None:
    control, a, b, c = tailnet(lab, tmp_path)
    b_ip = b.ip4()
    assert reach(a.host, b_ip, 5432)
    before = filtered(b)
    assert not reach(a.host, b_ip, 22)  # denied port: b drops the SYN after decryption
    assert not reach(c.host, b_ip, 5432)  # bob: not even a peer of b
    assert filtered(b) > before
    # Maps list only who may talk: bob's node sees nobody, the database sees alice.
    assert c.status()["peers"] == []
    assert [p["hostname"] for p in b.status()["peers"]] == ["a"]
    # whois names the tagged node and the user behind an address.
    who = json.loads(a.weft("whois", b_ip, "--json").stdout)
    assert who["node"]["tags"] == ["tag:db"] and who["user"] is None, who
    who = json.loads(b.weft("whois", a.ip4(), "--json").stdout)
    assert who["user"]["name"] == "alice@example.com", who

    # Now alice's laptop ignores the policy: its weftd is replaced by wireguard-go with
    # the same key, address and port, and a hand-written config that sends anything.
    nodes = {n["given_name"]: n for n in control.admin_json("nodes", "list")}
    a_port = int(nodes["a"]["endpoints"][0].rsplit(":", 1)[1])
    b_endpoint = nodes["b"]["endpoints"][0]
    a_ip = a.ip4()
    private = (a.state_dir / "node.key").read_text().strip()
    b_public = bytes.fromhex(nodes["b"]["node_key"].removeprefix("nodekey:"))
    a.kill9()
    poll_until(lambda: not wgpeers.link_exists(a.host, "weft0"), timeout_s=5, what="weft0 gone")
    rogue = wgpeers.start_wireguard_go(
        a.host,
        "wg0",
        base64.b64encode(bytes.fromhex(private)).decode(),
        a_port,
        [f"{a_ip}/32"],
        [
            wgpeers.Peer(
                public_key=base64.b64encode(b_public).decode(),
                allowed_ips=[f"{b_ip}/32", "100.100.100.100/32"],
                endpoint=b_endpoint,
                persistent_keepalive=1,
            )
        ],
    )
    try:
        # The tunnel works (the allowed port answers), so a silent denied port is the
        # filter, not a broken tunnel.
        poll_until(lambda: reach(a.host, b_ip, 5432), timeout_s=15, what="wg0 reaching 5432")
        before = filtered(b)
        for port in (22, 8080):
            assert not reach(a.host, b_ip, port)
        udp = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        udp += f"[s.sendto(b'x' * 100, ('{b_ip}', 22)) for _ in range(20)]"
        a.host.run(["python3", "-c", udp])
        poll_until(lambda: filtered(b) >= before + 22, timeout_s=5, what="b counting drops")
        print(f"b dropped {filtered(b) - before} packets from the plain WireGuard peer")
        # Nor may it use b's resolver (docs/dns.md): b drops what the tunnel carries to
        # 100.100.100.100 before its packet filter, and counts it.
        to_resolver = int(b.status()["counters"]["drop_service_ip"])
        dig = ["dig", "@100.100.100.100", "+time=1", "+tries=2", "b.weft.internal"]
        out = a.host.run(dig, check=False).stdout
        assert "ANSWER SECTION" not in out and "timed out" in out, out
        poll_until(lambda: int(b.status()["counters"]["drop_service_ip"]) >= to_resolver + 2,
                   timeout_s=5, what="b counting packets to its resolver")  # fmt: skip
    finally:
        rogue.stop()


def monday_berlin(h: int, m: int, s: int) -> float:
    return dt.datetime(2026, 11, 23, h, m, s, tzinfo=dt.timezone(dt.timedelta(hours=1))).timestamp()


def test_policy_changes_apply_within_2_s_and_time_windows_open_and_close(
    lab: Lab, tmp_path: Path
) -> None:
    control, a, b, c = tailnet(lab, tmp_path)
    b_ip = b.ip4()
    # alice keeps one TCP connection busy through everything below.
    out = tmp_path / "flow.txt"
    flow = a.host.popen(["python3", "-c", FLOW, b_ip, "5432", "14", str(out)])
    try:
        assert not reach(c.host, b_ip, 5432)
        applied = set_policy(control, tmp_path, OPEN_FOR_BOB)
        poll_until(lambda: reach(c.host, b_ip, 5432, 0.3), timeout_s=2, what="bob let in")
        opened_s = time.monotonic() - applied
        applied = set_policy(control, tmp_path, POLICY)
        poll_until(lambda: not reach(c.host, b_ip, 5432, 0.3), timeout_s=2, what="bob shut out")
        closed_s = time.monotonic() - applied
        print(f"policy change applied in {opened_s:.2f} s (open) and {closed_s:.2f} s (close)")

        # A policy whose tests fail is refused and the old one stays in force.
        bad = tmp_path / "bad.hujson"
        bad.write_text(OPEN_FOR_BOB.replace('"deny": ["tag:db:22"]', '"deny": ["tag:db:5432"]'))
        r = control.admin("policy", "set", str(bad), check=False)
        assert r.returncode == 1 and "tests[1] expects alice@example.com" in r.stderr, r.stderr
        assert control.admin_json("policy", "get")["policy"] == POLICY
        assert not reach(c.host, b_ip, 5432) and reach(a.host, b_ip, 5432)

        # A time window, judged by a clock the test moves: Monday 08:59:57 in Berlin.
        set_policy(control, tmp_path, SCHEDULED)
        control.set_policy_clock(monday_berlin(8, 59, 57))
        edge = time.monotonic() + 3.0
        poll_until(lambda: not reach(a.host, b_ip, 8080, 0.3), timeout_s=2, what="8080 closed")
        poll_until(lambda: reach(a.host, b_ip, 8080, 0.3), timeout_s=6, what="8080 at 09:00")
        opened_after_edge = time.monotonic() - edge
        assert opened_after_edge < 2.0, opened_after_edge
        control.set_policy_clock(monday_berlin(17, 0, 1))
        start = time.monotonic()
        poll_until(lambda: not reach(a.host, b_ip, 8080, 0.3), timeout_s=2, what="8080 at 17:00")
        print(
            f"window opened {opened_after_edge:.2f} s after 09:00, closed in "
            f"{time.monotonic() - start:.2f} s"
        )
        assert reach(a.host, b_ip, 5432)  # the unscheduled rule is untouched

        assert flow.wait(timeout=30) == 0, out.read_text()
        n = int(out.read_text().split()[0])
        assert n > 50, out.read_text()
        print(f"alice's connection made {n} round trips across all the changes")
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait()
