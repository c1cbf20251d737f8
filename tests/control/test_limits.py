"""Resource limits of the control server (security audit H2, M2, M5)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import Control, FakeNode, serve_in_thread, start_control
from weftnet.control.server.app import ServeOptions

MIB = 1 << 20


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    running = start_control(None, tmp_path / "data", extra_args=["--no-access-log"])
    try:
        yield running
    finally:
        running.stop()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _send_big(url: str, mib: int, prefix: bytes = b"", suffix: bytes = b"") -> int | None:
    """Stream ``mib`` MiB to url (no auth); the status, or None if the server hung up."""
    chunk = b"A" * MIB

    def body() -> Iterator[bytes]:
        yield prefix
        for _ in range(mib):
            yield chunk
        yield suffix

    try:
        r = httpx.request(
            "PUT" if "/api/v1/" in url else "POST",
            url,
            content=body(),
            headers={"content-type": "application/json"},
            timeout=15,
        )
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        return None
    return r.status_code


@pytest.mark.parametrize("where", ["node", "admin"], ids=["node-protocol", "admin-api-without-key"])
def test_a_300_mib_unauthenticated_body_does_not_grow_the_server(
    control: Control, where: str
) -> None:
    assert control.process is not None
    pid = control.process.pid
    if where == "node":
        url = control.url + "/machine/" + "ab" * 32 + "/register"
        prefix = suffix = b""
    else:
        url = control.url + "/api/v1/policy"
        prefix, suffix = b'{"policy": "', b'"}'
    before = _rss_mib(pid)
    started = time.monotonic()
    status = _send_big(url, 300, prefix, suffix)
    took = time.monotonic() - started
    grown = _rss_mib(pid) - before
    assert status in (None, 413, 401), status
    assert grown < 20, f"server RSS grew by {grown:.0f} MiB"
    assert took < 15
    # still serving
    assert httpx.get(control.url + "/health", timeout=5).status_code == 200


def test_a_declared_oversized_body_is_refused_before_it_is_sent(control: Control) -> None:
    url = control.url + "/machine/" + "ab" * 32 + "/register"
    r = httpx.post(url, content=b"x" * (64 * 1024 + 1), timeout=5)
    assert r.status_code == 413
    assert "larger than 65536" in r.text


def test_admin_api_checks_the_key_before_reading_the_body(control: Control) -> None:
    # Malformed JSON without a key: 401 (the body is never parsed), not 400.
    r = httpx.put(control.url + "/api/v1/policy", content=b'{"policy": ', timeout=5)
    assert r.status_code == 401
    assert "missing API key" in r.json()["error"]
    bad = {"authorization": "Bearer weftapi-abcd-efgh"}
    r = httpx.put(control.url + "/api/v1/policy", content=b'{"policy": ', headers=bad, timeout=5)
    assert r.status_code == 401
    good = {"authorization": f"Bearer {control.api_key}"}
    r = httpx.get(control.url + "/api/v1/users", headers=good, timeout=5)
    assert r.status_code == 200
    r = httpx.put(
        control.url + "/api/v1/policy",
        content=b"x" * (3 * MIB),
        headers=good,
        timeout=5,
    )
    assert r.status_code == 413
    assert httpx.get(control.url + "/api/v1/openapi.json", timeout=5).status_code == 200


# -- M5: half-open connections, request-head timeout --------------------------------

HALF_OPEN = 500


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[Any]:
    options = ServeOptions(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        access_log=False,
        stun_port=0,
        head_timeout_s=1.5,
        keepalive_s=0.5,
    )
    with serve_in_thread(options) as running:
        yield running


async def _joined(http: httpx.AsyncClient, server: Any) -> FakeNode:
    auth = {"authorization": f"Bearer {server.api_key}"}
    r = await http.post(f"{server.url}/api/v1/users", json={"name": "alice"}, headers=auth)
    assert r.status_code == 201, r.text
    r = await http.post(f"{server.url}/api/v1/keys", json={"user": "alice"}, headers=auth)
    node = FakeNode(server.url, http, "legit")
    answer = await node.register(r.json()["key"])
    assert answer.machine_authorized, answer.error
    return node


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 0.01) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.anyio
async def test_half_open_connections_neither_block_nodes_nor_stay_open(fast_server: Any) -> None:
    port = fast_server.port
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(HALF_OPEN):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            conns.append((reader, writer))
        await asyncio.gather(*(w.drain() for _, w in conns))
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as http:
            node = await _joined(http, fast_server)
            async with node.map_stream() as stream:
                first = await stream.next(5)
                assert first.node is not None
                took = time.monotonic() - started
                assert took < 5, f"a node needed {took:.1f}s to get its map"
                # The slow heads go on (one header line each), past the head timeout;
                # the map stream (keepalives every 0.5 s) is not cut meanwhile.
                for i in range(6):
                    for _, writer in conns:
                        if not writer.is_closing():
                            with contextlib.suppress(OSError):
                                writer.write(f"X-{i}: y\r\n".encode())
                    await asyncio.sleep(0.5)
                frame = await stream.next(2)
                assert frame.keepalive or frame.node is not None
            # admin API still answers
            r = await http.get(
                f"{fast_server.url}/api/v1/users",
                headers={"authorization": f"Bearer {fast_server.api_key}"},
            )
            assert r.status_code == 200
        closed = [await _closed_by_server(r) for r, _ in conns]
        assert all(closed), f"{closed.count(False)} half-open connections still open"
    finally:
        for _, writer in conns:
            writer.close()


@pytest.mark.anyio
async def test_a_map_stream_outlives_the_head_timeout(fast_server: Any) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        node = await _joined(http, fast_server)
        async with node.map_stream() as stream:
            await stream.next(5)
            deadline = time.monotonic() + 4  # well past head_timeout_s 1.5
            keepalives = 0
            while time.monotonic() < deadline:
                frame = await stream.next(2)
                keepalives += bool(frame.keepalive)
            assert keepalives >= 4


@pytest.mark.anyio
async def test_an_idle_connection_is_closed_after_the_head_timeout(fast_server: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fast_server.port)
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        assert time.monotonic() - started < 3
    finally:
        writer.close()
