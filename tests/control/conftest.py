"""Fixtures for the coordination server's tests: stores, a PostgreSQL cluster, servers."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import serve_in_thread
from weftlab.pgcluster import PgCluster, PgUnavailable, throwaway_cluster
from weftnet.control.server.app import ServeOptions


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (fails, never skips, without PostgreSQL)."""
    try:
        with throwaway_cluster() as cluster:
            yield cluster
    except PgUnavailable as e:
        pytest.fail(str(e), pytrace=False)


_db_numbers = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database in the session's cluster."""
    name = f"weft_test_{os.getpid()}_{next(_db_numbers)}"
    pg_cluster.admin(f"CREATE DATABASE {name}")
    try:
        yield pg_cluster.url(name)
    finally:
        pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each API test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'control.db'}"
    return str(request.getfixturevalue("pg_url"))


@dataclass
class Control:
    url: str
    api_key: str
    data_dir: Path
    database_url: str


# Short intervals so tests see keepalives, ephemeral deletion and login timeouts quickly.
TEST_KEEPALIVE_S = 0.3
TEST_EPHEMERAL_GRACE_S = 0.5
TEST_LOGIN_WAIT_S = 10.0


def options_for_test(data_dir: Path, **overrides: Any) -> ServeOptions:
    """A test server's options: 127.0.0.1, a free port, short intervals, no access log,
    no STUN (no fixed port in tests; tests of STUN bind their own); ``overrides`` win."""
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": 0,
        "keepalive_s": TEST_KEEPALIVE_S,
        "ephemeral_grace_s": TEST_EPHEMERAL_GRACE_S,
        "followup_wait_s": TEST_LOGIN_WAIT_S,
        "access_log": False,
        "stun_port": 0,
    }
    return ServeOptions(**(options | overrides))


@pytest.fixture
def control(tmp_path: Path, database_url: str) -> Iterator[Control]:
    """A server on 127.0.0.1 on a thread of this process, for one test."""
    data_dir = tmp_path / "data"
    options = options_for_test(data_dir, database_url=database_url)
    with serve_in_thread(options) as server:
        yield Control(server.url, server.api_key, data_dir, database_url)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # No connection is reused: the servers run in this process, and under load this
    # client may send its next request on a kept-alive connection just as the server
    # closes it for idling (KEEP_ALIVE_S): "Server disconnected without sending a
    # response" (a POST is not retried). weftd's client retries its requests.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5), limits=limits) as client:
        yield client


__all__ = ["Control", "PgCluster"]
