"""Fixtures for tests that build network namespaces (marked ``lab``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

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


@pytest.fixture
def lab(lab_environment: None) -> Iterator[Lab]:
    """A fresh Lab, torn down after the test whether it passed or failed."""
    with Lab() as the_lab:
        yield the_lab


# The throwaway PostgreSQL cluster of the control-server tests, shared with lab tests.
from tests.control.conftest import pg_cluster  # noqa: E402, F401
