"""TLS end to end on 127.0.0.1 (weftnet.tls): the coordination server with --tls-cert,
weftd's control client and relay client, the admin CLI, and a standalone relay; each
refuses a certificate it cannot verify with an error that says what to do."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from weftlab.control import admin, serve_in_thread
from weftlab.testca import TestCA
from weftnet import tls
from weftnet.control.server.app import ControlServer, ServeError, ServeOptions
from weftnet.node.controlclient import ControlClient, ControlError
from weftnet.node.state import NodeState
from weftnet.relay.client import RelayClient
from weftnet.relay.standalone import RelayError, RelayOptions, StandaloneRelay


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlServer]:
    data = tmp_path_factory.mktemp("control")
    cert, key = ca.issue("control", ["127.0.0.1", "localhost"], data.parent / "tls")
    options = ServeOptions(
        data_dir=data / "data",
        host="127.0.0.1",
        port=0,
        stun_port=0,
        access_log=False,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    with serve_in_thread(options) as s:
        yield s


def cli(*args: str, **kw: str) -> subprocess.CompletedProcess[str]:
    return admin(*args, check=False, **kw)


def test_the_server_serves_https_and_the_local_admin_pins_its_certificate(
    server: ControlServer,
) -> None:
    assert server.url.startswith("https://127.0.0.1:")
    r = cli("users", "create", "tls-admin", data_dir=server.options.data_dir)
    assert r.returncode == 0, r.stderr


def test_the_admin_cli_verifies_the_certificate(server: ControlServer, ca: TestCA) -> None:
    remote = {"server": server.url, "api_key": server.api_key}
    r = cli("users", "list", **remote)
    assert r.returncode == 1 and "not trusted" in r.stderr and "--tls-ca" in r.stderr, r.stderr
    r = cli("users", "list", "--tls-ca", str(ca.ca_file), **remote)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "SSL_CERT_FILE": str(ca.ca_file)}
    argv = [sys.executable, "-m", "weftnet.control.cli.main", "users", "list"]
    argv += ["--server", server.url, "--api-key", server.api_key]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_the_admin_cli_sends_no_api_key_over_plain_http_to_another_host() -> None:
    r = cli("users", "list", server="http://198.18.0.1:9", api_key="weftapi-x")
    assert r.returncode == 1 and "plain http" in r.stderr and "--allow-insecure-http" in r.stderr
    r = cli("users", "list", "--allow-insecure-http", server="http://198.18.0.1:9",
            api_key="weftapi-x")  # fmt: skip
    assert "plain http" not in r.stderr  # it tried (and found nobody there)


def test_a_node_logs_in_over_https_and_uses_the_relay_over_tls(
    server: ControlServer, ca: TestCA, tmp_path: Path
) -> None:
    r = cli("users", "create", "alice", data_dir=server.options.data_dir)
    key = cli("keys", "create", "--user", "alice", data_dir=server.options.data_dir)
    auth_key = key.stdout.strip()

    async def scenario() -> None:
        state = NodeState.load(tmp_path / "node")
        client = ControlClient(state, server.url, tls_ca=str(ca.ca_file))
        try:
            from weftnet import serverkey
            from weftnet.node.trust import ServerTrust

            sent, fp = serverkey.split_auth_key(auth_key)
            answer = await client.register(
                auth_key=sent, hostname="n", trust=ServerTrust(fingerprint=fp)
            )
            assert answer.machine_authorized, answer.error
            frame = await anext(aiter(client.map_stream([], "n")))
            [region] = frame.relay_map
            assert region.url == server.url, region  # the embedded relay, https
        finally:
            await client.close()
        relay = RelayClient(
            region.url,
            state.node_private,
            lambda _src, _pkt: None,
            tls_context=tls.client_context(str(ca.ca_file)),
        )
        async with relay:
            assert await relay.wait_connected(10), relay.last_error
            assert await relay.ping() < 1.0

    assert r.returncode == 0 and key.returncode == 0
    asyncio.run(scenario())


def test_an_old_auth_key_without_a_fingerprint_still_works_over_https(
    server: ControlServer, ca: TestCA, tmp_path: Path
) -> None:
    from weftnet import serverkey
    from weftnet.node.trust import ServerTrust

    cli("users", "create", "bob", data_dir=server.options.data_dir)
    made = cli("keys", "create", "--user", "bob", data_dir=server.options.data_dir)
    legacy, fingerprint = serverkey.split_auth_key(made.stdout.strip())
    assert fingerprint is not None and legacy.count("-") == 2

    async def scenario() -> None:
        state = NodeState.load(tmp_path / "node")
        client = ControlClient(state, server.url, tls_ca=str(ca.ca_file))
        try:
            answer = await client.register(auth_key=legacy, hostname="old", trust=ServerTrust())
            assert answer.machine_authorized, answer.error
        finally:
            await client.close()
        plain = ControlClient(state, "http://198.18.0.1:8080")
        try:  # the same key over plain http to another host: nothing verifies the server
            with pytest.raises(ControlError, match="over plain http"):
                await plain.register(auth_key=legacy, hostname="old", trust=ServerTrust())
        finally:
            await plain.close()

    asyncio.run(scenario())


def test_an_untrusted_certificate_is_refused_with_a_clear_error(
    server: ControlServer, tmp_path: Path
) -> None:
    other = TestCA(tmp_path / "other")

    async def scenario() -> None:
        client = ControlClient(
            NodeState.load(tmp_path / "node"), server.url, tls_ca=str(other.ca_file)
        )
        try:
            with pytest.raises(ControlError, match=r"TLS certificate is not trusted.*--tls-ca"):
                await client.register(hostname="n")
        finally:
            await client.close()
        assert not (tmp_path / "node" / "server.json").exists()  # nothing pinned
        relay = RelayClient(
            server.url,
            bytes(32),
            lambda _src, _pkt: None,
            tls_context=tls.client_context(str(other.ca_file)),
        )
        async with relay:
            assert not await relay.wait_connected(1.5)
            assert relay.last_error is not None and "not trusted" in relay.last_error

    asyncio.run(scenario())


def test_unusable_certificate_files_stop_the_server_with_one_line(
    ca: TestCA, tmp_path: Path
) -> None:
    cert, key = ca.issue("x", ["127.0.0.1"], tmp_path)
    cases = [
        (str(tmp_path / "missing.pem"), str(key), "No such file"),
        (str(key), str(key), "not a PEM certificate chain"),
        (str(cert), str(cert), "not a PEM certificate chain"),
        (str(cert), None, "go together"),
    ]
    for cert_file, key_file, message in cases:
        options = ServeOptions(data_dir=tmp_path / "data", port=0, stun_port=0)
        options.tls_cert, options.tls_key = cert_file, key_file
        with pytest.raises(ServeError, match=message):
            ControlServer(options).open()
    with pytest.raises(tls.TlsError, match=r"--tls-ca .*no such file"):
        tls.client_context(str(tmp_path / "nope.pem"))


def test_a_standalone_relay_serves_tls_and_verifies_the_control_server(
    server: ControlServer, ca: TestCA, tmp_path: Path
) -> None:
    r = cli("apikeys", "create", "--scope", "relay", data_dir=server.options.data_dir)
    api_key = r.stdout.strip()
    cert, key = ca.issue("relay", ["127.0.0.1"], tmp_path)

    def options(**kw: object) -> RelayOptions:
        base = RelayOptions(
            control_url=server.url,
            api_key=api_key,
            region="tls-relay",
            host="127.0.0.1",
            port=0,
            stun_port=0,
            data_dir=tmp_path / "relay",
            tls_cert=str(cert),
            tls_key=str(key),
            tls_ca=str(ca.ca_file),
        )
        for name, value in kw.items():
            setattr(base, name, value)
        return base

    with pytest.raises(RelayError, match="plain http"):
        StandaloneRelay(options(control_url="http://198.18.0.1:8080"))

    async def scenario() -> None:
        relay = StandaloneRelay(options())
        await relay.start()
        try:
            assert relay.url.startswith("https://127.0.0.1:")
            node = RelayClient(
                relay.url,
                bytes(range(32)),
                lambda _src, _pkt: None,
                tls_context=tls.client_context(str(ca.ca_file)),
            )
            async with node:  # not a node the server knows: refused after TLS
                assert not await node.wait_connected(1.5)
                assert node.last_error is not None and "refused" in node.last_error
        finally:
            await relay.close()
        untrusting = StandaloneRelay(options(tls_ca=None, data_dir=tmp_path / "relay2"))
        with pytest.raises(RelayError, match="not trusted"):
            await untrusting.start()
        await untrusting.close()

    assert r.returncode == 0, r.stderr
    asyncio.run(scenario())
