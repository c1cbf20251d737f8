"""Fixtures for tests that build network namespaces (marked ``lab``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from weftlab import secrets
from weftlab.netlab import Lab

_NEEDED_TOOLS = (
    *("ip", "nft", "ss", "ping", "wireguard-go", "wg", "iperf3"),
    *("dig", "dnsmasq", "dnsperf"),  # DNS: bind9-dnsutils, dnsmasq-base, dnsperf
)


def _why_no_lab() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces): run as root"
    missing = [tool for tool in _NEEDED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"lab tests need {', '.join(missing)}: run `make install`"
    return None


@pytest.fixture(scope="session")
def lab_environment() -> Iterator[None]:
    """Fail when the lab can't run (never skip silently); remove dead runs' namespaces once."""
    reason = _why_no_lab()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    Lab.cleanup_stale()
    yield


# What a Lab's own directory held (its hosts' logs and key files), read before the Lab
# removes it, for ``no_secrets_in_logs`` to scan with the test's other logs.
_lab_logs: list[tuple[Path, str]] = []
_lab_secrets: list[secrets.Secret] = []


@pytest.fixture
def lab(lab_environment: None) -> Iterator[Lab]:
    """A fresh Lab, torn down after the test whether it passed or failed."""
    with Lab() as the_lab:
        try:
            yield the_lab
        finally:  # its hosts' logs (wireguard-go, ...) go with it
            _lab_logs.extend(secrets.read_logs(secrets.log_files(the_lab.workdir)))
            _lab_secrets.extend(secrets.key_files_in(the_lab.workdir))


@pytest.fixture(autouse=True)
def no_secrets_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each lab test: no log file of its own (weftd, weft-control serve with its
    access log, relays, the lab hosts') holds an auth key, an API key or a private key.
    The failure names file and line, and what the secret is, never the secret."""
    roots = [request.getfixturevalue("tmp_path")] if "tmp_path" in request.fixturenames else []
    secrets.forget()
    _lab_logs.clear()
    _lab_secrets.clear()
    yield
    findings = secrets.scan_tree(roots, _lab_logs, _lab_secrets)
    secrets.forget()
    _lab_logs.clear()
    _lab_secrets.clear()
    if findings:
        lines = "\n".join(f"  {f}" for f in findings)
        pytest.fail(f"secrets in logs ({len(findings)}):\n{lines}", pytrace=False)


# The throwaway PostgreSQL cluster of the control-server tests, shared with lab tests.
from tests.control.conftest import pg_cluster  # noqa: E402, F401
