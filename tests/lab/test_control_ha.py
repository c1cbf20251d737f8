"""Issue 18: two control server replicas on one PostgreSQL behind HAProxy, six nodes.

Replicas A and B run in their own lab hosts on one database (the ``pg_cluster``, by its
unix socket) with one server key; HAProxy (Debian's, ``balance roundrobin`` with health
checks, TCP mode) runs in a third. Two nodes list A then B, two B then A, two go
through HAProxy. Checked: an admin change on A reaches B's nodes within 1 s; under a
ping ring at 0.1 s intervals, kill -9 of B loses no ping, B's nodes are streaming from
A within 5 s (the presence rows say so), and every admin write acknowledged through
HAProxy around the kill is there afterwards. Uniqueness under concurrency across
replicas (single-use keys, addresses, names) is tests/control/test_replicas.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, start_node, wait_mesh
from weftnet.control.server.app import SERVER_KEY_FILE, load_or_create_server_key
from weftnet.node import localapi

pytestmark = pytest.mark.lab

HAPROXY = "/usr/sbin/haproxy"
PORT = 8080
CROSS_REPLICA_S = 1.0  # an admin change on A reaches nodes on B within this
FAILOVER_S = 5.0  # B's nodes stream from A again within this after kill -9 of B
PING_INTERVAL_S = 0.1
PING_COUNT = 120  # 12 s of pings around the kill
WRITES_FOR_S = 8.0  # the admin writer's run through the kill (at most WRITES_MAX)
WRITES_MAX = 400

HAPROXY_CONFIG = """\
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch
frontend control
    bind {lb}:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2
    server a {a}:{port} check
    server b {b}:{port} check
"""

# Admin writes through HAProxy: one new user every 50 ms; prints those acknowledged.
WRITER = """\
import os, sys, time, httpx
url, until = sys.argv[1], time.monotonic() + float(sys.argv[2])
headers = {"Authorization": "Bearer " + os.environ["WEFT_API_KEY"]}
for i in range(int(sys.argv[3])):
    if time.monotonic() > until:
        break
    try:
        r = httpx.post(url + "/api/v1/users", json={"name": f"w{i}"}, headers=headers, timeout=5)
        print(("ok" if r.status_code == 201 else f"status-{r.status_code}"), f"w{i}", flush=True)
    except httpx.HTTPError as e:
        print("err", f"w{i}", type(e).__name__, flush=True)
    time.sleep(0.05)
"""


@pytest.fixture
def database(pg_cluster: Any) -> Iterator[tuple[str, str]]:
    """(URL for the replicas in lab hosts: the unix socket; URL for this process)."""
    name = f"weft_ha_{os.getpid()}"
    pg_cluster.admin(f"CREATE DATABASE {name}")
    try:
        yield (
            f"postgresql+psycopg://postgres@/{name}"
            f"?host={pg_cluster.directory}&port={pg_cluster.port}",
            pg_cluster.url(name).replace("+psycopg", ""),
        )
    finally:
        pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def replica(host: Host, data_dir: Path, database_url: str) -> Control:
    return start_control(
        host,
        data_dir,
        database_url=database_url,
        tls=False,  # the auth key's fingerprint verifies the (shared) server key
        extra_args=["--no-relay"],  # nodes share one segment: direct paths
    )


def start_haproxy(host: Host, tmp: Path, lb: str, a: str, b: str) -> subprocess.Popen[Any]:
    if not os.access(HAPROXY, os.X_OK):
        pytest.fail(f"{HAPROXY} not found: run `make install` (Debian's haproxy)", pytrace=False)
    config = tmp / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(lb=lb, a=a, b=b, port=PORT))
    host.run([HAPROXY, "-c", "-f", str(config)])
    log = open(tmp / "haproxy.log", "ab")  # noqa: SIM115 (the process holds it)
    proc = host.popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=log)
    host.wait_listening(PORT, proto="tcp")
    return proc


def status(node: Node) -> dict[str, Any]:
    """`weft status` through the node's local API (fast: no CLI process)."""
    answer = localapi.request(node.socket, "status")
    assert answer.get("ok"), answer
    result: dict[str, Any] = answer["result"]
    return result


def peer_named(node: Node, hostname: str) -> dict[str, Any] | None:
    return next((p for p in status(node)["peers"] if p["hostname"] == hostname), None)


def presence_on(db_url: str, pid: int) -> set[int]:
    """The nodes streaming from the replica with this process id (its presence rows)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT p.node_id FROM node_presence p"
            " JOIN control_replicas r ON r.id = p.replica_id WHERE r.pid = %s",
            (pid,),
        ).fetchall()
    return {row[0] for row in rows}


def test_two_replicas_behind_haproxy(lab: Lab, tmp_path: Path, database: tuple[str, str]) -> None:
    lab_db, db = database
    inet = lab.segment("inet", "198.18.0.0/24")
    host_a, host_b, lb = (lab.host(name, inet) for name in ("ctla", "ctlb", "lb"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir(mode=0o700)
    load_or_create_server_key(tmp_path / "a")  # replicas share one server key
    shutil.copy2(tmp_path / "a" / SERVER_KEY_FILE, tmp_path / "b" / SERVER_KEY_FILE)
    a = replica(host_a, tmp_path / "a", lab_db)
    try:
        b = replica(host_b, tmp_path / "b", lab_db)
        try:
            check_replicas(lab, inet, tmp_path, lb, a, b, db)
        finally:
            b.kill()
    finally:
        a.stop()  # before the database goes


def check_replicas(
    lab: Lab, inet: Any, tmp_path: Path, lb: Host, a: Control, b: Control, db: str
) -> None:
    assert a.process is not None and b.process is not None
    host_a, host_b = a.host, b.host
    start_haproxy(lb, tmp_path, lb.ip, host_a.ip, host_b.ip)
    lb_url = f"http://{lb.ip}:{PORT}"

    a.admin("users", "create", "alice")
    key = a.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    servers = {
        "n1": f"{a.url},{b.url}",
        "n2": f"{a.url},{b.url}",
        "n3": f"{b.url},{a.url}",
        "n4": f"{b.url},{a.url}",
        "n5": lb_url,
        "n6": lb_url,
    }
    nodes = {name: start_node(tmp_path, lab.host(name, inet), name) for name in servers}
    for name, node in nodes.items():
        node.weft("up", "--login-server", servers[name], "--auth-key", key, "--hostname", name)
    wait_mesh(list(nodes.values()), timeout_s=10)
    ids = {row["given_name"]: row["id"] for row in a.admin_json("nodes", "list")}
    on_b = {"n3", "n4"} | {n for n in ("n5", "n6") if ids[n] in presence_on(db, b.process.pid)}
    assert all(status(nodes[n])["self"]["control_url"] == b.url for n in ("n3", "n4"))

    # (a) Online state is shared, and an admin change on A reaches B's nodes within 1 s.
    n1_seen_from_b = peer_named(nodes["n3"], "n1")
    assert n1_seen_from_b is not None and n1_seen_from_b["online"]
    a.admin("nodes", "rename", str(ids["n1"]), "renamed-n1")
    changed_at = time.monotonic()
    for name in sorted(on_b):
        poll_until(
            lambda name=name: peer_named(nodes[name], "renamed-n1") is not None,
            timeout_s=CROSS_REPLICA_S,
            what=f"{name} (on replica B) to see the rename made on replica A",
        )
    print(f"rename on A seen by every node on B after {time.monotonic() - changed_at:.3f} s")

    # (b) kill -9 of B under a ping ring and a stream of admin writes through HAProxy.
    ring = list(nodes.values())
    ips = {n.host.name: n.ip4() for n in ring}
    pings = []
    for i, node in enumerate(ring):
        target = ips[ring[(i + 1) % len(ring)].host.name]
        argv = ["ping", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL_S), "-W", "1", target]
        pings.append(node.host.popen(argv, stdout=subprocess.PIPE, text=True))
    writes_log = tmp_path / "writes.txt"
    with open(writes_log, "w") as out:
        writer = lb.popen(
            [sys.executable, "-c", WRITER, lb_url, str(WRITES_FOR_S), str(WRITES_MAX)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WEFT_API_KEY": a.api_key},
        )
    time.sleep(2)  # pings and writes under way before the kill (nothing to poll)
    b.kill()
    killed_at = time.monotonic()
    all_ids = set(ids.values())
    poll_until(
        lambda: presence_on(db, a.process.pid) >= all_ids,  # type: ignore[union-attr]
        timeout_s=FAILOVER_S,
        what="every node to stream from replica A",
    )
    failover_s = time.monotonic() - killed_at
    print(f"B's nodes ({sorted(on_b)}) on replica A {failover_s:.2f} s after kill -9 of B")
    for name in ("n3", "n4"):
        st = status(nodes[name])
        assert st["self"]["online"] and st["self"]["control_url"] == a.url, st["self"]

    writer.wait(timeout=WRITES_FOR_S + 30)
    outputs = [p.communicate(timeout=PING_COUNT * PING_INTERVAL_S + 30)[0] for p in pings]
    for node, output in zip(ring, outputs, strict=True):
        assert f"{PING_COUNT} received, 0% packet loss" in output, (node.host.name, output)
    lines = writes_log.read_text().splitlines()
    acknowledged = {line.split()[1] for line in lines if line.startswith("ok ")}
    assert len(acknowledged) >= 20, lines  # the writer ran before and after the kill
    users = {u["name"] for u in a.admin_json("users", "list")}
    assert acknowledged <= users, sorted(acknowledged - users)
    print(f"{len(acknowledged)} admin writes acknowledged, all present; {len(lines)} tried")
