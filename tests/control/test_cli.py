"""weft-control as an admin uses it: a real `serve` subprocess and the admin commands."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import Control, FakeNode, admin, start_control
from weftnet import tailcfg

KEY_LINE = re.compile(r"^weftkey-[0-9a-f]{12}-[0-9a-f]{48}-[0-9a-f]{32}\n$")  # + server fingerprint


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STUN_PORT = _free_udp_port()
RELAY_ARGS = ["--region", "cli", "--stun-port", str(STUN_PORT), "--relay-rate", "1.5M"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    proc = start_control(None, tmp_path_factory.mktemp("cli") / "data", extra_args=RELAY_ARGS)
    try:
        yield proc
    finally:
        proc.stop()


def one_line_error(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("weft-control: ")
    return lines[0]


async def _register(url: str, key: str | None, hostname: str, **kw: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as http:
        node = FakeNode(url, http, hostname)
        return node, await node.register(key, **kw)


def test_keys_create_prints_the_key_alone(server: Control) -> None:
    server.admin("users", "create", "alice")
    r = server.admin("keys", "create", "--user", "alice", "--reusable", "--tags", "tag:a,tag:b")
    assert KEY_LINE.match(r.stdout) and r.stderr == ""
    [listed] = [k for k in server.admin_json("keys", "list") if k["prefix"] in r.stdout]
    assert listed["tags"] == ["tag:a", "tag:b"] and listed["reusable"] and listed["valid"]
    assert r.stdout.strip().split("-")[2] not in server.admin("keys", "list").stdout
    revoked = server.admin("keys", "revoke", listed["prefix"])
    assert listed["prefix"] in revoked.stdout


def test_every_listing_has_json(server: Control) -> None:
    for group in ("users", "keys", "nodes", "apikeys"):
        out = server.admin_json(group, "list")
        assert isinstance(out, list)
        table = server.admin(group, "list").stdout
        assert table.splitlines()[0].startswith("ID")


def test_serve_relay_flags_reach_the_relay_map_and_the_relay(server: Control) -> None:
    [relay] = server.admin_json("relays", "list")
    assert (relay["region"], relay["url"], relay["stun_port"]) == ("cli", server.url, STUN_PORT)
    assert relay["embedded"] and relay["public_key"].startswith("relaykey:")
    table = server.admin("relays", "list").stdout.splitlines()
    assert table[0].startswith("REGION") and table[1].startswith("cli ")

    async def scenario() -> None:
        from weftnet import controlbox, stun, tailcfg
        from weftnet.relay.client import RelayClient

        key = server.admin("keys", "create", "--user", "alice").stdout.strip()
        node, answer = await _register(server.url, key, "relay-flags")
        assert answer.machine_authorized, answer.error
        pinned = controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, relay["public_key"])
        async with RelayClient(
            relay["url"], bytes(node.node), lambda *_: None, server_key=pinned
        ) as c:
            assert await c.wait_connected(5), c.last_error
            assert c.server_hello is not None and c.server_hello.rate_bytes_per_s == 1_500_000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(stun.binding_request(b"c" * 12, "weftnet"), ("127.0.0.1", STUN_PORT))
            assert stun.parse_response(s.recv(1500)) == (
                b"c" * 12,
                ("127.0.0.1", s.getsockname()[1]),
            )

    if not any(u["name"] == "alice" for u in server.admin_json("users", "list")):
        server.admin("users", "create", "alice")
    asyncio.run(scenario())


def test_bad_input_gets_one_line_and_a_nonzero_exit(server: Control, tmp_path: Path) -> None:
    assert "no user named nobody" in one_line_error(
        server.admin("keys", "create", "--user", "nobody", check=False)
    )
    assert "invalid duration" in one_line_error(
        server.admin("keys", "create", "--user", "alice", "--expiration", "soon", check=False)
    )
    assert "no node with id 999" in one_line_error(
        server.admin("nodes", "delete", "999", check=False)
    )
    assert "no node named ghost" in one_line_error(
        server.admin("nodes", "expire", "ghost", check=False)
    )
    one_line_error(server.admin("users", "create", "two words", check=False))
    one_line_error(server.admin("users", "frobnicate", check=False), 2)
    one_line_error(
        admin("nodes", "register", "--user", "alice", check=False, data_dir=server.data_dir), 2
    )
    unreachable = admin(
        "users", "list", server="http://127.0.0.1:1", api_key="weftapi-x", check=False
    )
    assert "cannot reach" in one_line_error(unreachable)
    bad_key = admin("users", "list", server=server.url, api_key="weftapi-nope", check=False)
    assert "refused the API key" in one_line_error(bad_key)
    assert "admin.json" in one_line_error(
        admin("users", "list", data_dir=tmp_path / "none", check=False)
    )


def test_serve_refuses_bad_listen_and_busy_ports(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            sys.executable,
            "-m",
            "weftnet.control.cli.main",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    one_line_error(serve("--listen", "nonsense"), 2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = serve("--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_remote_admin_with_a_created_api_key(server: Control) -> None:
    created = server.admin("apikeys", "create", "--expiration", "1d")
    api_key = created.stdout.strip()
    assert re.match(r"^weftapi-[0-9a-f]{12}-[0-9a-f]{48}$", api_key)
    r = admin("users", "list", "--json", server=server.url, api_key=api_key)
    assert "alice" in [u["name"] for u in json.loads(r.stdout)]
    env = {**os.environ, "WEFT_CONTROL_URL": server.url, "WEFT_CONTROL_API_KEY": api_key}
    argv = [sys.executable, "-m", "weftnet.control.cli.main", "users", "list", "--json"]
    via_env = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=True)
    assert json.loads(via_env.stdout) == json.loads(r.stdout)
    server.admin("apikeys", "revoke", api_key.split("-")[1])
    assert "revoked" in one_line_error(
        admin("users", "list", server=server.url, api_key=api_key, check=False)
    )


def test_apikeys_scope_expiry_and_revoke_by_prefix_only(server: Control) -> None:
    relay_key = server.admin("apikeys", "create", "--scope", "relay").stdout.strip()
    prefix = relay_key.split("-")[1]
    [listed] = [k for k in server.admin_json("apikeys", "list") if k["prefix"] == prefix]
    assert listed["scope"] == "relay" and listed["expires_at"] is not None
    row = next(
        line for line in server.admin("apikeys", "list").stdout.splitlines() if prefix in line
    )
    assert "relay" in row and "never" not in row
    error = one_line_error(
        admin("users", "list", server=server.url, api_key=relay_key, check=False)
    )
    assert "403" in error or "scope 'relay'" in error
    assert "at most 365d" in one_line_error(
        server.admin("apikeys", "create", "--expiration", "400d", check=False)
    )
    assert "at most 365d" in one_line_error(
        server.admin("keys", "create", "--user", "alice", "--expiration", "53w", check=False)
    )
    # Revocation by the whole key is refused before anything is sent.
    r = server.admin("apikeys", "revoke", relay_key, check=False)
    assert "prefix" in one_line_error(r, code=2) and relay_key.split("-")[2] not in r.stderr
    auth_key = server.admin("keys", "create", "--user", "alice").stdout.strip()
    r = server.admin("keys", "revoke", auth_key, check=False)
    assert "prefix" in one_line_error(r, code=2) and auth_key.split("-")[2] not in r.stderr
    assert prefix in server.admin("apikeys", "revoke", prefix).stdout


def test_interactive_login_approved_with_nodes_register(server: Control) -> None:
    async def flow() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            node = FakeNode(server.url, http, "kiosk")
            first = await node.register()
            assert first.auth_url is not None
            code = first.auth_url.rsplit("/", 1)[1]
            waiting = asyncio.create_task(node.register(followup=first.auth_url))
            out = await asyncio.to_thread(
                server.admin, "nodes", "register", "--user", "alice", "--code", code
            )
            assert out.stdout.startswith("registered node ") and "kiosk" in out.stdout
            answer = await asyncio.wait_for(waiting, 10)
            assert answer.machine_authorized

    asyncio.run(flow())
    [kiosk] = [
        n for n in server.admin_json("nodes", "list", "--user", "alice") if n["hostname"] == "kiosk"
    ]
    assert (
        server.admin("nodes", "rename", str(kiosk["id"]), "front-desk")
        .stdout.strip()
        .endswith("front-desk")
    )
    assert server.admin("nodes", "expire", "front-desk").returncode == 0
    assert server.admin("nodes", "delete", "front-desk").returncode == 0


def test_files_are_private_and_logs_hold_no_secrets(server: Control) -> None:
    key = server.admin("keys", "create", "--user", "alice").stdout.strip()
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    for name in ("admin.json", "server.key", "control.db"):
        assert stat.S_IMODE((server.data_dir / name).stat().st_mode) == 0o600, name
    log = server.log()
    assert "GET /api/v1" in log or "POST /api/v1" in log
    for secret in (key.split("-")[2], server.api_key.split("-")[2]):
        assert secret not in log


def test_kill_9_and_restart_keeps_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_control(None, data)
    try:
        first.admin("users", "create", "carol")
        key = first.admin("keys", "create", "--user", "carol", "--reusable").stdout.strip()
        node, answer = asyncio.run(_register(first.url, key, "web"))
        assert answer.machine_authorized
        asyncio.run(_register(first.url, key, "db"))
        nodes_before = first.admin_json("nodes", "list")
        server_key = httpx.get(first.url + "/key").json()
    finally:
        first.kill()
    second = start_control(None, data)
    try:
        assert second.api_key == first.api_key  # admin.json's key is reused
        assert httpx.get(second.url + "/key").json() == server_key
        nodes_after = second.admin_json("nodes", "list")
        fields = ("id", "given_name", "ipv4", "ipv6", "node_key", "user")
        assert [{f: n[f] for f in fields} for n in nodes_after] == [
            {f: n[f] for f in fields} for n in nodes_before
        ]
        assert [u["name"] for u in second.admin_json("users", "list")] == ["carol"]

        async def resync() -> None:  # the same node, no new login: its map comes back
            async with httpx.AsyncClient(timeout=30) as http:
                node.http, node.url = http, second.url
                [frame] = await node.map_once()
                assert frame.error is None and [p.given_name for p in frame.peers or []] == ["db"]

        asyncio.run(resync())
    finally:
        assert second.stop() == 0  # SIGTERM: a clean exit


def test_sigterm_ends_open_map_streams_promptly(tmp_path: Path) -> None:
    proc = start_control(None, tmp_path / "data")
    try:
        proc.admin("users", "create", "dave")
        key = proc.admin("keys", "create", "--user", "dave").stdout.strip()

        async def stream_then_stop() -> int:
            async with httpx.AsyncClient(timeout=30) as http:
                node = FakeNode(proc.url, http, "n")
                assert (await node.register(key)).machine_authorized
                async with node.map_stream() as stream:
                    await stream.next()
                    return await asyncio.to_thread(proc.stop, 5.0)

        assert asyncio.run(stream_then_stop()) == 0
    finally:
        proc.kill()


def test_nodes_routes_and_approve_routes(server: Control) -> None:
    server.admin("users", "create", "rita")
    key = server.admin("keys", "create", "--user", "rita").stdout.strip()

    async def router() -> int:
        async with httpx.AsyncClient(timeout=30) as http:
            node = FakeNode(server.url, http, "gw")
            answer = await node.register(key)
            hostinfo = tailcfg.Hostinfo(hostname="gw", routable_ips=["198.18.20.0/24", "::/0"])
            await node.map_once(hostinfo=hostinfo)
            return int(answer.node.id)  # type: ignore[union-attr]

    node_id = asyncio.run(router())
    [row] = [r for r in server.admin_json("nodes", "routes") if r["id"] == node_id]
    assert (row["announced"], row["approved"], row["serving"]) == (
        ["198.18.20.0/24", "::/0"],
        [],
        [],
    )
    out = server.admin("nodes", "approve-routes", str(node_id), "--routes", "0.0.0.0/0")
    assert out.stdout.strip() == f"node {node_id}: approved 0.0.0.0/0, ::/0"
    table = server.admin("nodes", "routes", str(node_id)).stdout.splitlines()
    assert table[0].split() == ["ID", "HOSTNAME", "APPROVED", "AVAILABLE", "SERVING", "(PRIMARY)"]
    assert table[1].split()[:2] == [str(node_id), "gw"]
    server.admin("nodes", "approve-routes", str(node_id), "--routes", "")
    assert server.admin_json("nodes", "routes", str(node_id))[0]["approved"] == []
    bad = server.admin(
        "nodes", "approve-routes", str(node_id), "--routes", "10.1.2.3/8", check=False
    )
    assert "10.1.2.3/8 has non-address bits set; expected 10.0.0.0/8" in one_line_error(bad)


def _console_login(url: str, name: str, password: str) -> int:
    """Log in to the web console with a password; the status of the answer."""
    with httpx.Client(base_url=url, timeout=30) as http:
        page = http.get("/admin/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        form = {"csrf": csrf.group(1), "username": name, "password": password}
        return http.post("/admin/login", data=form).status_code


def test_users_set_password_and_role_for_the_console(server: Control) -> None:
    server.admin("users", "create", "carol")
    out = server.admin("users", "set-password", "carol", "--generate").stdout
    password = out.strip().rsplit(": ", 1)[1]
    assert len(password) >= 20
    assert _console_login(server.url, "carol", password) == 303  # to the console
    assert _console_login(server.url, "carol", password + "x") == 401
    argv = [sys.executable, "-m", "weftnet.control.cli.main", "users", "set-password", "carol"]
    argv += ["--data-dir", str(server.data_dir)]
    typed = subprocess.run(
        argv, input="a long typed password\n", capture_output=True, text=True, timeout=30
    )
    assert typed.returncode == 0 and password not in typed.stdout, typed.stderr
    assert _console_login(server.url, "carol", "a long typed password") == 303
    generated = server.admin_json("users", "set-password", "carol", "--generate")
    assert _console_login(server.url, "carol", generated["password"]) == 303
    assert "carol is now auditor" in server.admin("users", "role", "carol", "Auditor").stdout
    assert "no role 'boss'" in one_line_error(
        server.admin("users", "role", "carol", "boss", check=False)
    )
