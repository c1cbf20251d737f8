"""Device approval and the audit log over HTTP: the sealed node protocol (a FakeNode)
and the admin API, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from weftlab.control import FakeNode

from .conftest import Control
from .test_api import api, joined, new_key

pytestmark = pytest.mark.anyio
APPROVAL_PUSH_S = 2.0  # an approved node gets its peers within this long


async def audit(http: httpx.AsyncClient, control: Control, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await api(http, control, "GET", "/audit", params=params)
    return entries


async def test_a_waiting_node_is_told_and_gets_its_peers_when_approved(
    http: httpx.AsyncClient, control: Control
) -> None:
    key = await new_key(http, control, reusable=True)
    a = await joined(http, control, key, "a")
    settings = await api(http, control, "PATCH", "/settings", json={"device_approval": True})
    assert settings == {"device_approval": True}
    assert await api(http, control, "GET", "/settings") == {"device_approval": True}
    b = FakeNode(control.url, http, "b")
    answer = await b.register(key)
    assert not answer.machine_authorized and answer.node is not None and answer.auth_url is None
    assert not answer.node.machine_authorized
    nodes = {n["given_name"]: n for n in await api(http, control, "GET", "/nodes")}
    assert not nodes["b"]["authorized"] and nodes["a"]["authorized"]
    assert nodes["b"]["auth_method"] == "authkey" and not nodes["b"]["key_expiry_disabled"]
    relay_keys = (await api(http, control, "GET", "/relay/nodekeys"))["node_keys"]
    assert b.node_key not in relay_keys and a.node_key in relay_keys
    async with a.map_stream() as a_stream, b.map_stream() as b_stream:
        assert not (await a_stream.next()).peers
        first = await b_stream.next()
        assert not first.peers and first.node is not None and not first.node.machine_authorized
        started = time.monotonic()
        out = await api(http, control, "POST", f"/nodes/{answer.node.id}/authorize")
        assert out["authorized"]
        got = await b_stream.until(lambda f: bool(f.peers_changed), APPROVAL_PUSH_S)
        assert got.node is not None and got.node.machine_authorized
        await a_stream.until(lambda f: bool(f.peers_changed), APPROVAL_PUSH_S)
        print(f"approved node and its peer updated in {time.monotonic() - started:.3f} s")
    # A preauthorized key skips approval.
    pre = await new_key(http, control, preauthorized=True)
    keys = await api(http, control, "GET", "/keys")
    assert [k["preauthorized"] for k in keys].count(True) == 1
    c = await joined(http, control, pre, "c")
    assert c.node_key in (await api(http, control, "GET", "/relay/nodekeys"))["node_keys"]


async def test_every_mutating_admin_route_writes_one_audit_entry_as_the_api_key(
    http: httpx.AsyncClient, control: Control
) -> None:
    key = await new_key(http, control, reusable=True)  # user + key: two entries
    node = await joined(http, control, key, "n")
    [record] = await api(http, control, "GET", "/nodes")
    nid = record["id"]
    prefix = control.api_key.split("-")[1]
    routes: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("POST", "/users", {"name": "bob"}, "user.create"),
        ("POST", "/keys", {"user": "bob"}, "auth_key.create"),
        ("POST", "/apikeys", {"description": "ci"}, "api_key.create"),
        (
            "PUT",
            "/policy",
            {
                "policy": '{"tagOwners": {"tag:x": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
            },
            "policy.set",
        ),
        ("PUT", "/dns", {"dns": {"magic_dns": True}}, "dns.set"),
        ("PATCH", "/settings", {"device_approval": True}, "settings.set"),
        ("POST", f"/nodes/{nid}/rename", {"name": "renamed"}, "node.rename"),
        ("POST", f"/nodes/{nid}/routes", {"routes": ["10.9.0.0/24"]}, "node.routes"),
        ("PUT", f"/nodes/{nid}/attributes/managed", {"value": True}, "node.attribute"),
        ("DELETE", f"/nodes/{nid}/attributes/managed", None, "node.attribute"),
        ("POST", f"/nodes/{nid}/key-expiry", {"disabled": True}, "node.key_expiry"),
        ("POST", f"/nodes/{nid}/tags", {"tags": ["tag:x"]}, "node.tags"),
        ("POST", f"/nodes/{nid}/expire", None, "node.expire"),
        ("DELETE", f"/nodes/{nid}", None, "node.delete"),
    ]
    for method, path, body, action in routes:
        before = await audit(http, control, limit=1)
        await api(http, control, method, path, **({"json": body} if body else {}))
        new = await audit(http, control, before=10**9, since=before[0]["ts"])
        new = [e for e in new if e["id"] > before[0]["id"]]
        assert [e["action"] for e in new] == [action], (method, path, new)
        assert new[0]["actor"]["type"] == "api_key" and new[0]["actor"]["id"] == prefix
        assert new[0]["origin"] == "api" and new[0]["remote_addr"] == "127.0.0.1"
    # The two revocations and the user deletion, by prefix.
    api_keys = await api(http, control, "GET", "/apikeys")
    ci = next(k for k in api_keys if k["description"] == "ci")
    auth_keys = await api(http, control, "GET", "/keys")
    for method, path, action in (
        ("DELETE", f"/apikeys/{ci['prefix']}", "api_key.revoke"),
        ("DELETE", f"/keys/{auth_keys[0]['prefix']}", "auth_key.revoke"),
        ("DELETE", "/users/bob", "user.delete"),
    ):
        before = (await audit(http, control, limit=1))[0]["id"]
        await api(http, control, method, path)
        new = [e for e in await audit(http, control) if e["id"] > before]
        assert [e["action"] for e in new] == [action]
    # A refused change writes nothing.
    before = await audit(http, control, limit=1000)
    r = await http.post(
        f"{control.url}/api/v1/nodes/{nid}/tags",
        headers={"Authorization": f"Bearer {control.api_key}"},
        json={"tags": ["no-tag-syntax"]},
    )
    assert r.status_code == 404 or r.status_code == 400
    assert await audit(http, control, limit=1000) == before
    # The export: JSON lines, everything, newest first; no secret anywhere.
    r = await http.get(
        f"{control.url}/api/v1/audit/export",
        headers={"Authorization": f"Bearer {control.api_key}"},
    )
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["id"] for e in lines] == [e["id"] for e in before]
    assert key.split("-")[2] not in r.text and control.api_key.split("-")[2] not in r.text
    del node
