"""The DNS settings on a real `weft-control serve`: `dns get|check|set`, the admin API,
refusals that change nothing, and a change reaching a map stream within 2 s.

The server's --server-url is http://control.weft.example.com:8080 (never dialled: the
tests and FakeNodes use the local URL), so a tailnet domain weft.example.com would
swallow it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.control.test_cli import one_line_error
from weftlab.control import Control, FakeNode, start_control
from weftnet import tailcfg

SERVER_URL = "http://control.weft.example.com:8080"
DOC = {
    "magic_dns": True,
    "base_domain": "tail.example",
    "override_local_dns": False,
    "nameservers": {"global": ["198.18.0.53"], "split": {"corp.test": ["198.18.20.53"]}},
    "search_domains": ["corp.test"],
    "extra_records": [{"name": "grafana.tail.example", "type": "A", "value": "100.64.0.9"}],
}
BAD = [
    (
        '{"nameservers": {"split": {"corp.test": ["1.2.3"]}}}',
        'nameservers.split["corp.test"][0]: "1.2.3" is not an IP address',
    ),
    (
        '{"base_domain": "weft.example.com"}',
        "base_domain weft.example.com would swallow the server's own name control.weft.example.com",
    ),
    ('{"nameservers": {"global": ["100.100.100.100"]}}', "the node's own resolver"),
    ('{"extra_records": [{"name": "a.test", "type": "AAAA", "value": "1.2.3.4"}]}', "IPv6"),
    ('{"magic_dns": true, "nameserver": {}}', 'unknown key "nameserver"'),
    ("{ not json", "line 1, column 3"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    proc = start_control(
        None,
        tmp_path_factory.mktemp("dns") / "data",
        extra_args=["--server-url", SERVER_URL, "--dns-domain", "corp.example"],
    )
    try:
        yield proc
    finally:
        proc.stop()


def write(tmp_path: Path, doc: Any, name: str = "dns.hujson") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_dns_commands_check_set_get_and_refuse_bad_documents(
    server: Control, tmp_path: Path
) -> None:
    server.admin("dns", "set", write(tmp_path, {"magic_dns": True}))
    first = server.admin("dns", "get").stdout
    assert json.loads(first)["base_domain"] == "corp.example"  # from serve --dns-domain
    good = write(tmp_path, DOC)
    checked = server.admin("dns", "check", good).stdout
    assert checked.startswith("DNS settings ok (not applied): MagicDNS on under tail.example")
    assert server.admin("dns", "get").stdout == first  # check changed nothing

    r = server.admin("dns", "set", good)
    assert r.stdout == (
        "DNS settings set: MagicDNS on under tail.example, 1 global nameserver(s) (fallback),"
        " 1 split domain(s), 1 extra record(s)\n"
    )
    assert server.admin_json("dns", "get") == DOC
    in_force = server.admin("dns", "get").stdout
    assert json.loads(in_force) == DOC

    for bad, message in BAD:
        path = write(tmp_path, bad, "bad.hujson")
        for action in ("set", "check"):
            line = one_line_error(server.admin("dns", action, path, check=False))
            assert "DNS settings refused" in line and message in line, line
        assert server.admin("dns", "get").stdout == in_force  # byte for byte

    missing = one_line_error(server.admin("dns", "set", str(tmp_path / "nope"), check=False), 2)
    assert "cannot read" in missing


def test_dns_get_output_is_a_document_dns_set_takes(server: Control, tmp_path: Path) -> None:
    server.admin("dns", "set", write(tmp_path, DOC))
    shown = server.admin("dns", "get").stdout
    argv = [sys.executable, "-m", "weftnet.control.cli.main", "dns", "set", "-"]
    r = subprocess.run(
        [*argv, "--data-dir", str(server.data_dir)],
        input=shown,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert r.stdout.startswith("DNS settings set:")
    assert server.admin("dns", "get").stdout == shown


@pytest.mark.anyio
async def test_admin_api_get_put_check(server: Control) -> None:
    headers = {"authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.url + "/api/v1", headers=headers) as api:
        r = await api.put("/dns", json={"dns": DOC})
        assert r.status_code == 200 and r.json() == DOC
        text = '{"magic_dns": false, /* HuJSON */ "base_domain": "tail.example",}'
        r = await api.post("/dns/check", json={"dns": text})
        assert r.status_code == 200 and r.json()["ok"] is True
        assert r.json()["dns"]["magic_dns"] is False
        assert (await api.get("/dns")).json() == DOC  # check changed nothing
        for body in ({"dns": {"base_domain": "weft.example.com"}}, {"dns": []}, {}):
            for method, path in (("PUT", "/dns"), ("POST", "/dns/check")):
                r = await api.request(method, path, json=body)
                assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
        assert (await api.get("/dns")).json() == DOC

        # A registered relay's host may not be swallowed either.
        relay = {
            "region": "dnstest",
            "url": "http://relay.tail.example:8443",
            "public_key": "relaykey:" + "ab" * 32,
        }
        assert (await api.post("/relays", json=relay)).status_code == 200
        try:
            r = await api.put("/dns", json={"dns": DOC})
            assert r.status_code == 400
            assert "would swallow the relay's name relay.tail.example" in r.json()["error"]
        finally:
            await api.delete("/relays/dnstest")
        assert (await api.put("/dns", json={"dns": DOC})).status_code == 200


def test_a_dns_change_reaches_the_map_stream_within_2_s(server: Control, tmp_path: Path) -> None:
    server.admin("dns", "set", write(tmp_path, DOC))

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            key = server.admin("keys", "create", "--tags", "tag:dns").stdout.strip()
            fake = FakeNode(server.url, http, "dnsnode")
            assert (await fake.register(key)).node is not None
            async with fake.map_stream() as stream:
                full = await stream.next()
                assert full.peers is not None and full.dns_config is not None
                assert (
                    full.dns_config.domain == "tail.example" and full.dns_domain == "tail.example"
                )
                assert [r.addr for r in full.dns_config.fallback_resolvers] == ["198.18.0.53"]

                changed = {
                    **DOC,
                    "base_domain": "new.example",
                    "override_local_dns": True,
                    "nameservers": {"global": ["198.18.0.54"], "split": {}},
                }
                start = time.monotonic()
                server.admin("dns", "set", write(tmp_path, changed))
                frame = await stream.until(lambda f: f.dns_config is not None, 2.0)
                took = time.monotonic() - start
                print(f"DNS change reached the map stream in {took * 1000:.0f} ms")
                assert frame.peers is None  # a delta, not a new full map
                assert frame.dns_config == tailcfg.DNSConfig(
                    magic_dns=True,
                    domain="new.example",
                    resolvers=[tailcfg.DNSResolver(addr="198.18.0.54")],
                    search_domains=["new.example", "corp.test"],
                    extra_records=[
                        tailcfg.DNSRecord(name="grafana.tail.example", type="A", value="100.64.0.9")
                    ],
                )
                assert frame.dns_domain == "new.example"  # for nodes that read only that

                # A refused document sends nothing.
                bad = write(tmp_path, BAD[0][0], "bad.hujson")
                assert server.admin("dns", "set", bad, check=False).returncode == 1
                with pytest.raises(TimeoutError):
                    await stream.until(lambda f: f.dns_config is not None, 0.5)

            # A new full map (a non-streaming request) carries the settings too.
            [again] = await fake.map_once()
            assert again.dns_config == frame.dns_config and again.dns_domain == "new.example"

    asyncio.run(scenario())


def test_serve_refuses_a_dns_domain_that_swallows_its_own_name(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "weftnet.control.cli.main", "serve"]
    argv += ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")]
    argv += ["--server-url", "https://control.weft.example.com", "--stun-port", "0"]
    r = subprocess.run(
        [*argv, "--dns-domain", "weft.example.com"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert (
        "--dns-domain weft.example.com would swallow the server's own name"
        " control.weft.example.com" in r.stderr
    ), r.stderr
