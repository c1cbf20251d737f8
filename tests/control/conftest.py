"""Fixtures for the coordination server's tests: stores, a PostgreSQL cluster, servers."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import serve_in_thread
from weftnet.control.server.app import ServeOptions

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _pg_tool(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    port: int
    directory: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (fails, never skips, without PostgreSQL)."""
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make install`",
            pytrace=False,
        )
    as_user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="weft-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "no `postgres` user to run PostgreSQL as: run `make install`", pytrace=False
            )
        os.chown(directory, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    started = False
    try:
        subprocess.run(
            [
                *as_user,
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for _attempt in range(5):
            port = _free_port()
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
            )
            r = subprocess.run(
                [
                    *as_user,
                    pg_ctl,
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(directory / "log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )
            if r.returncode == 0:
                started = True
                break
        if not started:
            pytest.fail(
                f"PostgreSQL did not start: {(directory / 'log').read_text()[-2000:]}",
                pytrace=False,
            )
        yield PgCluster(port, directory)
    finally:
        if started:
            subprocess.run(
                [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(directory, ignore_errors=True)


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
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5), limits=limits) as client:
        yield client


__all__ = ["Control", "PgCluster"]
