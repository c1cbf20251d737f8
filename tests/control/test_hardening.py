"""Hostile or broken input from nodes: keys no session can use, hostnames with terminal
escapes, odd endpoints, garbage requests, and refusals a node can tell apart.

Every refusal must change nothing, and nothing a node sends may crash the server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey

from weftlab.control import FakeNode, serve_in_thread
from weftlab.fakes import SeededEntropy
from weftnet import controlbox, tailcfg
from weftnet.control.domain import names, netmap
from weftnet.control.domain.records import Store
from weftnet.control.server.app import ServeOptions
from weftnet.control.service import ControlService, Refused, Registered, Settings
from weftnet.control.store.sql import SqlStore, redact_error

from .memstore import MemoryStore

NOW = 1_700_000_000.0

# X25519 points of small order and non-canonical encodings of them (RFC 7748 section 5;
# the list libsodium blocks): a DH with any of them gives all zeros.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ((1 << 255) - 19 - 1).to_bytes(32, "little"),
    ((1 << 255) - 19).to_bytes(32, "little"),
    ((1 << 255) - 19 + 1).to_bytes(32, "little"),
]
ESCAPES = "\x1b]0;owned\x07\x1b[2J\r\n\u202eevil\x00\x9b"


def _key(prefix: str) -> str:
    return controlbox.key_to_text(prefix, bytes(PrivateKey.generate().public_key))


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqlStore.open("sqlite://")


@pytest.fixture
def svc(store: Store) -> ControlService:
    service = ControlService(store, Settings(), random_bytes=SeededEntropy("hardening"))
    service.create_user("alice", NOW)
    return service


def counts(svc: ControlService) -> dict[str, int]:
    store = svc.store
    assert isinstance(store, MemoryStore | SqlStore)
    return store.row_counts()


def joined(svc: ControlService, hostname: str = "laptop") -> tuple[str, str]:
    """(machine key, node key) of a newly registered node."""
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    machine, node_key = _key(tailcfg.MACHINE_KEY_PREFIX), _key(tailcfg.NODE_KEY_PREFIX)
    req = tailcfg.RegisterRequest(
        ts=NOW, node_key=node_key, auth_key=key, hostinfo=tailcfg.Hostinfo(hostname=hostname)
    )
    assert isinstance(svc.register(machine, req, NOW, "http://control"), Registered)
    return machine, node_key


def refused(fn: Any, *args: Any) -> Refused:
    with pytest.raises(Refused) as e:
        fn(*args)
    return e.value


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", LOW_ORDER, ids=lambda r: r.hex()[:8])
def test_low_order_node_keys_are_refused_at_registration(svc: ControlService, raw: bytes) -> None:
    key, _ = svc.create_auth_key(NOW, "alice")
    before = counts(svc)
    node_key = controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, raw)
    req = tailcfg.RegisterRequest(ts=NOW, node_key=node_key, auth_key=key)
    e = refused(svc.register, _key(tailcfg.MACHINE_KEY_PREFIX), req, NOW, "http://control")
    assert str(e) == (
        f"node key nodekey:{raw.hex()[:4]}\N{HORIZONTAL ELLIPSIS}:"
        " a low-order X25519 point, no session can use it"
    )
    assert e.kind == tailcfg.ERROR_BAD_REQUEST
    assert counts(svc) == before  # the auth key was not used either


def test_low_order_and_malformed_keys_are_refused_on_map_requests(svc: ControlService) -> None:
    machine, node_key = joined(svc)
    low = controlbox.key_to_text(tailcfg.DISCO_KEY_PREFIX, LOW_ORDER[2])
    req = tailcfg.MapRequest(ts=NOW, node_key=node_key, disco_key=low)
    assert "disco key discokey:e0eb" in str(refused(svc.map_request, machine, req, None, NOW))
    bad = tailcfg.MapRequest(ts=NOW, node_key=node_key, disco_key="discokey:zz")
    assert str(refused(svc.map_request, machine, bad, None, NOW)).startswith("disco key: expected")
    zero = controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, bytes(32))
    req = tailcfg.MapRequest(ts=NOW, node_key=zero)
    assert "low-order" in str(refused(svc.map_request, machine, req, None, NOW))
    [(node, _)] = svc.list_nodes()
    assert node.disco_key is None and node.last_seen is None  # nothing recorded


def test_an_old_node_key_that_is_low_order_is_refused(svc: ControlService) -> None:
    machine, node_key = joined(svc)
    req = tailcfg.RegisterRequest(
        ts=NOW,
        node_key=_key(tailcfg.NODE_KEY_PREFIX),
        old_node_key=controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, bytes(32)),
    )
    assert "old node key" in str(refused(svc.register, machine, req, NOW, "http://c"))
    assert [n.node_key for n, _ in svc.list_nodes()] == [node_key]


# -- hostnames --------------------------------------------------------------------------


def test_clean_hostname_keeps_no_character_that_can_drive_a_terminal() -> None:
    cleaned = names.clean_hostname(f"  web{ESCAPES}01  ")
    assert all(c.isprintable() for c in cleaned)
    assert "\x1b" not in cleaned and "\u202e" not in cleaned
    assert cleaned.startswith("web ]0;owned") and cleaned.endswith("evil 01")
    assert names.clean_hostname("Alice's Laptop") == "Alice's Laptop"
    assert len(names.clean_hostname("x" * 10_000)) == names.MAX_HOSTNAME


def test_hostnames_are_stored_and_sent_without_control_characters(svc: ControlService) -> None:
    machine, node_key = joined(svc, f"db{ESCAPES}")
    [(node, _)] = svc.list_nodes()
    assert all(c.isprintable() for c in node.hostname) and node.hostname.startswith("db")
    assert names.check_given_name(node.given_name) == node.given_name
    req = tailcfg.MapRequest(
        ts=NOW, node_key=node_key, hostinfo=tailcfg.Hostinfo(hostname=f"renamed{ESCAPES}")
    )
    node = svc.map_request(machine, req, None, NOW)
    assert node.hostname.startswith("renamed") and all(c.isprintable() for c in node.hostname)
    # A row written before this rule (or by hand) is cleaned on the way out too.
    dirty = dataclasses.replace(node, hostname=f"old{ESCAPES}")
    wire = netmap.wire_node(dirty, {}, False, NOW)
    assert wire.name.startswith("old") and all(c.isprintable() for c in wire.name)


def test_an_interactive_login_stores_a_clean_hostname(svc: ControlService) -> None:
    req = tailcfg.RegisterRequest(
        ts=NOW,
        node_key=_key(tailcfg.NODE_KEY_PREFIX),
        hostinfo=tailcfg.Hostinfo(hostname=f"box{ESCAPES}"),
    )
    answer = svc.register(_key(tailcfg.MACHINE_KEY_PREFIX), req, NOW, "http://c")
    assert not isinstance(answer, Registered) and answer.auth_url is not None
    node = svc.register_by_code("alice", answer.auth_url, NOW).node
    assert all(c.isprintable() for c in node.hostname)


# -- endpoints ---------------------------------------------------------------------------


def test_unusable_malformed_and_duplicate_endpoints_are_dropped() -> None:
    reported = [
        "198.51.100.7:41641",
        "127.0.0.1:41641",  # loopback
        "[::1]:41641",
        "224.0.0.1:41641",  # multicast
        "0.0.0.0:41641",  # unspecified
        "169.254.1.1:41641",  # link-local
        "[fe80::1]:41641",
        "198.51.100.8:0",  # port 0
        "nonsense",
        "198.51.100.7:99999",
        "fd00::1:41641",  # ambiguous without brackets
        "[::ffff:198.51.100.7]:41641",  # the first one again, IPv4-mapped
        "[2001:DB8::0001]:41641",
        "198.51.100.7:41641",
    ]
    assert netmap.clean_endpoints(reported) == ("198.51.100.7:41641", "[2001:db8::1]:41641")


def test_more_than_max_endpoints_keeps_the_first_ones(svc: ControlService) -> None:
    machine, node_key = joined(svc)
    many = [f"198.51.100.{i}:41641" for i in range(1, 41)]
    req = tailcfg.MapRequest(ts=NOW, node_key=node_key, endpoints=["127.0.0.1:1", *many])
    node = svc.map_request(machine, req, "203.0.113.9", NOW)
    assert node.endpoints == tuple(many[: tailcfg.MAX_ENDPOINTS])
    assert tailcfg.MAX_ENDPOINTS == 32


# -- the HTTP side: error kinds, garbage, /health --------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    options = ServeOptions(
        data_dir=tmp_path / "data", host="127.0.0.1", port=0, access_log=False, stun_port=0
    )
    with serve_in_thread(options) as running:
        yield running


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


async def _admin(http: httpx.AsyncClient, server: Any, method: str, path: str, **kw: Any) -> Any:
    r = await http.request(
        method,
        f"{server.url}/api/v1{path}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        **kw,
    )
    assert r.status_code < 300, r.text
    return r.json()


async def _joined(http: httpx.AsyncClient, server: Any, hostname: str = "n") -> FakeNode:
    users = await _admin(http, server, "GET", "/users")
    if not users:
        await _admin(http, server, "POST", "/users", json={"name": "alice"})
    key = (await _admin(http, server, "POST", "/keys", json={"user": "alice"}))["key"]
    node = FakeNode(server.url, http, hostname)
    answer = await node.register(key)
    assert answer.machine_authorized, answer.error
    return node


def _rows(server: Any) -> dict[str, int]:
    assert isinstance(server.store, SqlStore)
    return server.store.row_counts()


@pytest.mark.anyio
async def test_map_refusals_carry_a_kind_the_node_can_act_on(
    http: httpx.AsyncClient, server: Any
) -> None:
    stranger = FakeNode(server.url, http)
    [frame] = await stranger.map_once()
    assert frame.error_kind == tailcfg.ERROR_LOGGED_OUT and "not registered" in (frame.error or "")
    node = await _joined(http, server)
    [frame] = await node.map_once(ts=time.time() - 3600)
    assert frame.error_kind == tailcfg.ERROR_CLOCK_SKEW and "check the time" in (frame.error or "")
    [frame] = await node.map_once(home_relay="no spaces allowed")
    assert frame.error_kind == tailcfg.ERROR_BAD_REQUEST
    [frame] = await node.map_once()
    assert frame.error is None and frame.error_kind is None
    async with node.map_stream() as stream:
        first = await stream.next()
        assert first.node is not None
        await _admin(http, server, "POST", f"/nodes/{first.node.id}/expire")
        final = await stream.until(lambda f: f.error is not None, 5.0)
        assert final.error_kind == tailcfg.ERROR_EXPIRED
    [frame] = await node.map_once()
    assert frame.error_kind == tailcfg.ERROR_EXPIRED
    other = await _joined(http, server, "other")
    async with other.map_stream() as stream:
        first = await stream.next()
        assert first.node is not None
        await _admin(http, server, "DELETE", f"/nodes/{first.node.id}")
        final = await stream.until(lambda f: f.error is not None, 5.0)
        assert final.error == "node deleted" and final.error_kind == tailcfg.ERROR_LOGGED_OUT


@pytest.mark.anyio
async def test_register_refusals_carry_a_kind(http: httpx.AsyncClient, server: Any) -> None:
    node = FakeNode(server.url, http)
    stale = await node.register("weftkey-nonsense", ts=time.time() + 3600)
    assert stale.error_kind == tailcfg.ERROR_CLOCK_SKEW
    bad = await node.register("weftkey-nonsense")
    assert bad.error_kind == tailcfg.ERROR_BAD_REQUEST and not bad.machine_authorized
    low = controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, bytes(32))
    answer = await node.register("weftkey-nonsense", node_key=low)
    assert answer.error is not None and "low-order" in answer.error


GARBAGE: list[bytes] = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'{"ts": "yesterday", "node_key": 5}',
    b'{"ts": NaN, "node_key": "nodekey:00"}',
    b'{"ts": 1e999, "node_key": "nodekey:00"}',
    b'{"ts": TS, "node_key": "x", "endpoints": "1.2.3.4:5", "logout": "yes"}',
    b'{"ts": TS, "node_key": "x", "endpoints": [1, 2, 3], "followup": 7}',
    b'{"ts": TS, "node_key": "x", "hostinfo": {"hostname": ["a"]}}',
    b'{"ts": TS, "node_key": "x", "version": 1e400}',
    b'{"ts": TS, "node_key": "nodekey:00"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' * 3000 + b"1" + b"}" * 3000,
]


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["map", "register"])
async def test_garbage_requests_get_a_clear_refusal_and_change_nothing(
    http: httpx.AsyncClient, server: Any, what: str
) -> None:
    node = await _joined(http, server)
    before = _rows(server)
    [node_row] = await _admin(http, server, "GET", "/nodes")
    now = time.time()
    huge = {
        "ts": now,
        "node_key": node.node_key,
        "disco_key": "discokey:" + "a" * 20_000,
        "hostinfo": {"hostname": "h" * 20_000, "os": "o" * 5000},
        "home_relay": "r" * 5000,
        "followup": "f" * 5000,
    }
    wrong_key = {"ts": now, "node_key": "nodekey:" + "ab" * 5000, "auth_key": "k" * 20_000}
    bodies = [*GARBAGE, json.dumps(huge).encode(), json.dumps(wrong_key).encode()]
    response = tailcfg.MapResponse if what == "map" else tailcfg.RegisterResponse
    for body in bodies:
        body = body.replace(b"TS", str(time.time()).encode())
        r = await node.post(what, node.seal_bytes(body))
        assert r.status_code == 200, (body[:40], r.text)
        frames = controlbox.FrameReader().feed(r.content) if what == "map" else [r.content]
        [answer] = [response.model_validate_json(node.open(f)) for f in frames]
        assert answer.error and answer.error_kind == tailcfg.ERROR_BAD_REQUEST, body[:40]
        assert "\n" not in answer.error and len(answer.error) < 300
    # Bodies that do not open are plain 4xx answers.
    r = await node.post(what, os.urandom(200))
    assert r.status_code == 401
    r = await node.post(what, b"x" * (65 * 1024))
    assert r.status_code == 413
    r = await http.post(f"{server.url}/machine/{'00' * 32}/{what}", content=os.urandom(100))
    assert r.status_code == 401  # a low-order machine key never opens a box
    assert _rows(server) == before
    assert await _admin(http, server, "GET", "/nodes") == [node_row]
    assert (await http.get(f"{server.url}/health")).json()["ok"] is True


@pytest.mark.anyio
async def test_health_never_shows_database_error_text(
    http: httpx.AsyncClient, server: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    secret = "connection to db.internal.example failed: user weft password=hunter2"

    def broken(*_args: Any, **_kw: Any) -> Any:
        raise RuntimeError(secret)

    monkeypatch.setattr(server.store, "transaction", broken)
    with caplog.at_level(logging.WARNING):
        r = await http.get(f"{server.url}/health")
    assert r.status_code == 503
    assert r.json() == {"ok": False, "error": "database unavailable"}
    assert "db.internal.example" in caplog.text  # the operator sees what failed
    assert "hunter2" not in caplog.text


@pytest.mark.anyio
async def test_a_database_failure_on_a_map_request_is_a_server_error_not_a_logout(
    http: httpx.AsyncClient, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = await _joined(http, server)

    def broken(*_args: Any, **_kw: Any) -> Any:
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(server.store, "transaction", broken)
    [frame] = await node.map_once()
    assert frame.error_kind == tailcfg.ERROR_SERVER and "try again" in (frame.error or "")


# -- the replay guard ------------------------------------------------------------------


def test_database_errors_are_logged_without_passwords() -> None:
    e = RuntimeError(
        "could not connect to postgresql://weft:s3cret@db.example:5432/weft"
        " (password=hunter2 host=db.example)\nDETAIL: more"
    )
    line = redact_error(e)
    assert "s3cret" not in line and "hunter2" not in line and "DETAIL" not in line
    assert "postgresql://weft:***@db.example:5432/weft" in line and "password=***" in line


def test_the_replay_guard_never_forgets_a_nonce_inside_its_window() -> None:
    guard = controlbox.ReplayGuard(max_entries=3)
    now = NOW

    def sealed(n: int) -> bytes:
        return n.to_bytes(controlbox.NONCE_LEN, "big") + b"body"

    for n in range(3):
        guard.check(sealed(n), now, now)
    with pytest.raises(controlbox.GuardFull, match="too many requests"):
        guard.check(sealed(3), now, now + 1)
    for n in range(3):  # still remembered: replays are refused, never let through
        with pytest.raises(controlbox.SealError, match="replayed"):
            guard.check(sealed(n), now, now + 1)
    # Once a request's ts is outside the window it cannot pass the ts check any more, so
    # its nonce may go; then there is room again.
    later = now + controlbox.MAX_CLOCK_SKEW_S + 1
    guard.check(sealed(3), later, later)
    assert len(guard) == 1
    with pytest.raises(controlbox.ClockSkew):
        guard.check(sealed(0), now, later)


def test_the_replay_guard_forgets_by_the_request_ts_not_arrival_order() -> None:
    guard = controlbox.ReplayGuard(max_entries=10)
    skew = controlbox.MAX_CLOCK_SKEW_S
    early = b"\1" * controlbox.NONCE_LEN
    late = b"\2" * controlbox.NONCE_LEN
    guard.check(late, NOW + 100, NOW)  # a fast clock: its window closes last
    guard.check(early, NOW - 100, NOW)
    now = NOW + skew - 50  # early's window closed, late's is open
    with pytest.raises(controlbox.SealError, match="replayed"):
        guard.check(late, NOW + 100, now)
    assert len(guard) == 1


def test_nodes_list_prints_no_control_characters_whatever_the_server_sends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from weftnet.control.cli import main as cli

    row = {
        "id": 1,
        "given_name": "db",
        "hostname": f"db{ESCAPES}",  # an older server may send a raw hostname
        "user": "alice\x1b[31m",
        "tags": [],
        "ipv4": "100.64.0.1",
        "ipv6": "fd7a:115c:a1e0::1",
        "online": True,
        "home_relay": None,
        "last_seen": None,
        "key_expiry": None,
        "expired": False,
    }
    cli._print_nodes([row], NOW)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\r" not in out and "\x07" not in out
    assert "db?]0;owned?" in out and "alice?[31m" in out


def test_the_admin_json_key_expires_and_is_renewed_at_start(tmp_path: Path) -> None:
    """L6: the local admin key has a lifetime too; an old one is replaced and revoked."""
    from weftnet.control.domain import credentials
    from weftnet.control.domain.records import NewApiKey
    from weftnet.control.server.app import ADMIN_FILE, ensure_admin_key

    store = SqlStore.open("sqlite://")
    svc = ControlService(store, Settings(), random_bytes=SeededEntropy("admin.json"))
    first = ensure_admin_key(svc, tmp_path, "http://127.0.0.1:1")
    key = svc.check_api_key(first, time.time())
    assert key.scope == "admin" and key.expires_at is not None
    assert abs(key.expires_at - time.time() - 365 * 86400) < 60
    assert ensure_admin_key(svc, tmp_path, "http://127.0.0.1:1") == first  # still young
    # A never-expiring key from before migration 0004 is replaced, and revoked.
    legacy, prefix = credentials.new_key(credentials.API_KEY_KIND, os.urandom)
    with store.transaction(write=True) as tx:
        tx.add_api_key(
            NewApiKey(
                prefix=prefix,
                key_hash=credentials.key_hash(legacy),
                description="old local admin",
                created_at=time.time(),
                expires_at=None,
            )
        )
    (tmp_path / ADMIN_FILE).write_text(json.dumps({"api_key": legacy}))
    renewed = ensure_admin_key(svc, tmp_path, "http://127.0.0.1:1")
    assert renewed != legacy and svc.check_api_key(renewed, time.time()).expires_at
    assert json.loads((tmp_path / ADMIN_FILE).read_text())["api_key"] == renewed
    revoked = {k.prefix: k.revoked_at for k in svc.list_api_keys()}
    assert revoked[prefix] is not None
    store.dispose()
