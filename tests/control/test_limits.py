"""Resource limits of the control server (security audit H2, M2, M5)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import Control, FakeNode, serve_in_thread, start_control
from weftnet import tailcfg
from weftnet.control.cli.main import build_parser, serve_options
from weftnet.control.server.app import ServeOptions
from weftnet.control.server.logins import DEFAULT_PER_SOURCE
from weftnet.control.service.registration import NodeRules

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
        for i in range(HALF_OPEN):
            # From 4 addresses, each under its cap of 256 connections (another test
            # shows what the cap does).
            source = (f"127.0.1.{i % 4 + 1}", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
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


PER_ADDRESS = 3
RELAY_UPGRADE = (
    b"GET /relay HTTP/1.1\r\nHost: x\r\nUpgrade: weft-relay\r\nConnection: Upgrade\r\n\r\n"
)


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[Any]:
    options = ServeOptions(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        access_log=False,
        stun_port=0,
        max_connections_per_address=PER_ADDRESS,
    )
    with serve_in_thread(options) as running:
        yield running


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _served(conn: Conn) -> bool:
    """True if the server answers a request on ``conn``; False if it closed it."""
    reader, writer = conn
    with contextlib.suppress(OSError):
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(100), 5)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200")


async def _relay_link(port: int) -> Conn:
    reader, writer = await _connect(port)
    writer.write(RELAY_UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _closed_at_once(port: int, source: str = "127.0.0.1") -> bool:
    reader, writer = await _connect(port, source)
    try:
        return await asyncio.wait_for(reader.read(100), 5) == b""
    except OSError:
        return True
    finally:
        writer.close()


@pytest.mark.anyio
async def test_connections_beyond_the_per_address_cap_are_closed_at_once(
    capped_server: Any,
) -> None:
    """Relay links count too, until they close, and give their slot back exactly once."""
    port = capped_server.port
    plain = [await _connect(port), await _connect(port)]
    relay = await _relay_link(port)
    opened: list[Conn] = [*plain, relay]
    try:
        started = time.monotonic()
        assert await _closed_at_once(port)  # a 4th from 127.0.0.1
        assert time.monotonic() - started < 1
        # Another address is served meanwhile.
        other = await _connect(port, "127.0.0.2")
        opened.append(other)
        assert await _served(other)
        # The relay link closes: its slot (and only its) comes back.
        relay[1].close()
        deadline = time.monotonic() + 5
        while True:
            again = await _connect(port)
            if await _served(again):
                opened.append(again)
                break
            again[1].close()
            assert time.monotonic() < deadline, "the relay link's slot never came back"
            await asyncio.sleep(0.05)
        assert await _closed_at_once(port)  # 2 plain + the new one: full again
        for conn in plain:
            assert await _served(conn)  # the first two were never cut
    finally:
        for _, writer in opened:
            writer.close()


def test_the_per_address_cap_is_a_serve_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    argv = ["serve", "--max-connections-per-address", "16"]
    assert serve_options(parser.parse_args(argv)).max_connections_per_address == 16
    assert serve_options(parser.parse_args(["serve"])).max_connections_per_address == 256
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--max-connections-per-address", "0"])
    assert "invalid number '0'" in capsys.readouterr().err


# -- M2: anonymous interactive logins ------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    options = ServeOptions(
        data_dir=tmp_path / "data", host="127.0.0.1", port=0, access_log=False, stun_port=0
    )
    with serve_in_thread(options) as running:
        yield running


def _pending_rows(server: Any) -> int:
    return int(server.store.row_counts()["pending_registrations"])


@pytest.mark.exclusive  # compares latency with an idle baseline: nothing else may run
@pytest.mark.anyio
async def test_pending_logins_from_one_source_are_capped(control: Control) -> None:
    """1,000 anonymous logins from one address: 20 rows; the admin API stays fast.

    The server runs as its own process (the client's work must not share its GIL)."""
    db = sqlite3.connect(f"file:{control.data_dir / 'control.db'}?mode=ro", uri=True)
    auth = {"authorization": f"Bearer {control.api_key}"}

    async def latency(http: httpx.AsyncClient) -> float:
        started = time.monotonic()
        r = await http.get(f"{control.url}/api/v1/users", headers=auth)
        assert r.status_code == 200
        return time.monotonic() - started

    async with httpx.AsyncClient(timeout=10) as http, httpx.AsyncClient(timeout=10) as admin:
        for _ in range(5):
            await latency(admin)  # warm up
        idle = statistics.median([await latency(admin) for _ in range(30)])
        sem = asyncio.Semaphore(1)

        async def login(i: int) -> tailcfg.RegisterResponse:  # one at a time: a steady flood
            async with sem:
                return await FakeNode(control.url, http, f"anon{i}").register()

        stop = asyncio.Event()
        busy: list[float] = []

        async def probe() -> None:
            while not stop.is_set():
                busy.append(await latency(admin))
                await asyncio.sleep(0.02)

        prober = asyncio.create_task(probe())
        started = time.monotonic()
        answers = await asyncio.gather(*(login(i) for i in range(1000)))
        took = time.monotonic() - started
        stop.set()
        await prober
    urls = [a for a in answers if a.auth_url]
    refused = [a for a in answers if a.error]
    assert len(urls) == DEFAULT_PER_SOURCE
    assert len(refused) == 1000 - DEFAULT_PER_SOURCE
    assert "too many logins waiting for approval from this address" in (refused[0].error or "")
    assert refused[0].error_kind == tailcfg.ERROR_SERVER
    rows = db.execute("select count(*) from pending_registrations").fetchone()[0]
    db.close()
    assert rows == DEFAULT_PER_SOURCE
    during = statistics.median(busy)
    print(
        f"1000 logins in {took:.1f}s; admin GET idle {idle * 1000:.1f} ms,"
        f" during {during * 1000:.1f} ms (n={len(busy)})"
    )
    # Within 2x of idle, plus 5 ms for scheduling jitter: on a 2-core machine the client's
    # sealing shares the cores, and the refused logins still cost the server their HTTP
    # handling (measured: idle 2.8-3.1 ms, during 4.8-7.4 ms). The row count above is what
    # tells the fix apart; this guards against the logins getting expensive again.
    assert during <= 2 * idle + 0.005


@pytest.mark.anyio
async def test_a_new_login_of_a_machine_replaces_its_open_one(server: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        node = FakeNode(server.url, http, "again")
        first = await node.register()
        for _ in range(5):
            last = await node.register()
        assert first.auth_url and last.auth_url and first.auth_url != last.auth_url
        assert _pending_rows(server) == 1
        answer = await node.register(followup=first.auth_url)
        assert answer.error and "unknown" in answer.error


@pytest.mark.anyio
async def test_followups_wake_on_their_code_not_on_every_change(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = 0
    original = NodeRules._followup

    def counted(self: NodeRules, *args: Any) -> Any:
        nonlocal checks
        checks += 1
        return original(self, *args)

    monkeypatch.setattr(NodeRules, "_followup", counted)
    auth = {"authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(timeout=70) as http:
        await _joined(http, server)
        members = (await http.get(f"{server.url}/api/v1/nodes", headers=auth)).json()
        node_id = members[0]["id"]
        waiting = [FakeNode(server.url, http, f"w{i}") for i in range(10)]
        urls = [(await n.register()).auth_url for n in waiting]
        tasks = [
            asyncio.create_task(n.register(followup=u)) for n, u in zip(waiting, urls, strict=True)
        ]
        await asyncio.sleep(0.5)
        assert checks == 10
        for i in range(5):  # tailnet changes do not make the followups re-check
            r = await http.put(
                f"{server.url}/api/v1/nodes/{node_id}/attributes/probe",
                json={"value": i},
                headers=auth,
            )
            assert r.status_code == 200, r.text
        await asyncio.sleep(0.5)
        assert checks == 10
        started = time.monotonic()
        assert urls[0] is not None
        code = urls[0].rsplit("/", 1)[-1]
        r = await http.post(
            f"{server.url}/api/v1/nodes/register",
            json={"user": "alice", "code": code},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        answer = await asyncio.wait_for(tasks[0], 3)
        assert answer.machine_authorized
        assert time.monotonic() - started < 1  # woken by its code, not the 5 s re-check
        assert checks == 11
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
