"""A throwaway PostgreSQL cluster on 127.0.0.1, from the Debian server binaries.

``throwaway_cluster()`` runs initdb in a temporary directory (as the ``postgres`` user
when we are root: initdb refuses root), starts it on a free port with durability off
(fsync, synchronous commit: nothing here outlives the run), yields a ``PgCluster`` and
removes everything at the end. ``PgUnavailable`` says what is missing or why it did not
start; tests turn it into a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
START_ATTEMPTS = 5  # a free port can be taken between choosing it and binding it


class PgUnavailable(Exception):
    """PostgreSQL cannot be run here; the message says what to do."""


@dataclass
class PgCluster:
    port: int
    directory: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type,unused-ignore]


def pg_tool(name: str) -> str | None:
    for directory in PG_BIN_DIRS:
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway_cluster(max_connections: int = 300) -> Iterator[PgCluster]:
    initdb, pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PgUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make install`"
        )
    as_user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="weft-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory, ignore_errors=True)
            raise PgUnavailable(
                "no `postgres` user to run PostgreSQL as: run `make install`"
            ) from None
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
        for _attempt in range(START_ATTEMPTS):
            port = free_port()
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off"
                f" -c max_connections={max_connections}"
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
            raise PgUnavailable(
                f"PostgreSQL did not start: {(directory / 'log').read_text()[-2000:]}"
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
