"""Resource limits of the control server (security audit H2, M2, M5)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from weftlab.control import Control, start_control

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
