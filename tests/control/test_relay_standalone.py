"""``weft-control relay``: a standalone relay region, as a subprocess, against a server
on a thread of this process. Everything on 127.0.0.1; waits poll with deadlines."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import FakeNode, admin, serve_in_thread
from weftlab.netlab import poll_until
from weftnet import stun
from weftnet.control.server.app import ServeOptions

from .conftest import TEST_KEEPALIVE_S, Control
from .test_relay_embedded import (
    REVOCATION_DEADLINE_S,
    Datagrams,
    api,
    client,
    free_udp_port,
    joined,
    until,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A server whose own relay is region "home" (SQLite, no STUN)."""
    data_dir = tmp_path / "data"
    options = ServeOptions(
        data_dir=data_dir,
        host="127.0.0.1",
        port=0,
        keepalive_s=TEST_KEEPALIVE_S,
        access_log=False,
        region="home",
        stun_port=0,
    )
    with serve_in_thread(options) as server:
        yield Control(server.url, server.api_key, data_dir, "")


def relay_scoped_key(control: Control) -> str:
    """An API key with scope relay: all a standalone relay needs (M4)."""
    r = httpx.post(
        f"{control.url}/api/v1/apikeys",
        json={"scope": "relay", "description": "test relay"},
        headers={"Authorization": f"Bearer {control.api_key}"},
        timeout=5,
    )
    r.raise_for_status()
    return str(r.json()["key"])


def relay_argv(control: Control, tmp_path: Path, region: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "weftnet.control.cli.main",
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--control-url",
        control.url,
        "--api-key",
        relay_scoped_key(control),
        "--region",
        region,
        "--data-dir",
        str(tmp_path / f"relay-{region}"),
        *extra,
    ]


@pytest.fixture
def relay_stun_port() -> int:
    return free_udp_port()


@pytest.fixture
def relay_process(
    control: Control, tmp_path: Path, relay_stun_port: int
) -> Iterator[subprocess.Popen[str]]:
    """``weft-control relay --region eu`` until the test ends (SIGTERM, then checked)."""
    log = tmp_path / "relay.log"
    argv = relay_argv(control, tmp_path, "eu", "--stun-port", str(relay_stun_port))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def registered_regions(control: Control) -> dict[str, dict[str, Any]]:
    r = httpx.get(
        f"{control.url}/api/v1/relays",
        headers={"Authorization": f"Bearer {control.api_key}"},
        timeout=5,
    )
    r.raise_for_status()
    return {entry["region"]: entry for entry in r.json()}


async def wait_region(control: Control, name: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        assert proc.poll() is None, "the relay exited"
        return registered_regions(control).get(name)

    found = await asyncio.to_thread(poll_until, ready, timeout_s=20, what=f"relay region {name}")
    assert found is not None
    return found


async def test_a_standalone_relay_registers_admits_known_keys_and_cuts_off_deleted_nodes(
    http: httpx.AsyncClient,
    control: Control,
    relay_process: subprocess.Popen[str],
    relay_stun_port: int,
) -> None:
    a, b = await joined(http, control, "a"), await joined(http, control, "b")
    async with a.map_stream() as stream:
        full = await stream.next()
        assert [r.name for r in full.relay_map or []] == ["home"]
        entry = await wait_region(control, "eu", relay_process)
        assert entry["embedded"] is False and entry["stun_port"] == relay_stun_port
        assert entry["url"].startswith("http://127.0.0.1:")
        # Nodes with an open stream hear of the new region as a delta.
        delta = await stream.until(lambda f: f.relay_map is not None, 2)
    home, eu = delta.relay_map or []
    assert (home.name, eu.name) == ("home", "eu")
    assert (eu.url, eu.public_key, eu.stun_port) == (
        entry["url"],
        entry["public_key"],
        relay_stun_port,
    )
    assert eu.public_key != home.public_key
    # A new map has it from the start.
    [again] = await b.map_once()
    assert [r.name for r in again.relay_map or []] == ["home", "eu"]

    a_in: list[tuple[bytes, bytes]] = []
    b_in: list[tuple[bytes, bytes]] = []
    async with client(a, eu, a_in) as ca, client(b, eu, b_in) as cb:
        assert await ca.wait_connected(5), ca.last_error
        assert await cb.wait_connected(5), cb.last_error
        ca.send(bytes(b.node.public_key), b"through eu")
        await until(lambda: b_in == [(bytes(a.node.public_key), b"through eu")], 5, "a -> b")

        # A node registered after the relay last fetched the keys: admitted on the miss.
        late = await joined(http, control, "late")
        async with client(late, eu) as cl:
            assert await cl.wait_connected(5), cl.last_error

        unknown = FakeNode(control.url, http, "unknown")  # never registered
        async with client(unknown, eu) as cu:
            await until(lambda: cu.last_error is not None, 5, "the unknown key's refusal")
            assert not cu.connected and "unknown node key" in (cu.last_error or "")

        nodes = await api(http, control, "GET", "/nodes")
        [node_a] = [n for n in nodes if n["given_name"] == "a"]
        await api(http, control, "DELETE", f"/nodes/{node_a['id']}")
        took = await until(lambda: not ca.connected, REVOCATION_DEADLINE_S, "a cut off")
        why = ca.last_error or ""
        print(f"standalone relay revocation: {took * 1000:.0f} ms after the API call")
        assert "node key revoked" in why
        await until(lambda: "unknown node key" in (ca.last_error or ""), 3, "a refused again")
        assert cb.connected and cb.connections == 1

    # Its STUN server answers too.
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        Datagrams, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", relay_stun_port)
    )
    try:
        transport.sendto(b"not stun")
        transport.sendto(stun.binding_request(b"s" * 12, "weftnet"))
        answer = await asyncio.wait_for(proto.received.get(), 2)
        me = transport.get_extra_info("sockname")
        assert stun.parse_response(answer) == (b"s" * 12, ("127.0.0.1", me[1]))
    finally:
        transport.close()

    listed = await asyncio.to_thread(
        admin, "relays", "list", "--json", server=control.url, api_key=control.api_key
    )
    assert [(r["region"], r["embedded"]) for r in json.loads(listed.stdout)] == [
        ("home", True),
        ("eu", False),
    ]
    table = await asyncio.to_thread(
        admin, "relays", "list", server=control.url, api_key=control.api_key
    )
    assert "standalone" in table.stdout and "embedded" in table.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong API key", "API key"),
        ("the server's own region", "control server's own relay"),
    ],
)
def test_a_relay_the_server_refuses_exits_with_one_line(
    control: Control, tmp_path: Path, case: str, message: str
) -> None:
    argv = relay_argv(
        control,
        tmp_path,
        "home" if case == "the server's own region" else "eu",
        "--stun-port",
        "0",
    )
    if case == "wrong API key":
        argv[argv.index("--api-key") + 1] = "weftapi-000000000000-" + "0" * 48
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("weft-control relay: ") and message in last, r.stderr
    assert "Traceback" not in r.stderr
    assert time.monotonic() - started < 20
