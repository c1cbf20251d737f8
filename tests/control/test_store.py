"""The SQL store itself: migrations match the models, atomic key use, SQLite settings."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from weftnet.control.domain.records import DISCO_KEY_UNIQUE, NewAuthKey, NewNode, StoreConflict
from weftnet.control.store.models import metadata
from weftnet.control.store.sql import SqlStore, normalize_url, redact

NOW = 1_700_000_000.0


def _key(prefix: str = "aaaaaaaaaaaa") -> NewAuthKey:
    return NewAuthKey(
        prefix=prefix,
        key_hash="0" * 64,
        user_id=None,
        reusable=False,
        ephemeral=False,
        tags=("tag:x",),
        created_at=NOW,
        expires_at=NOW + 3600,
    )


def _node(n: int) -> NewNode:
    return NewNode(
        machine_key=f"mkey:{n}",
        node_key=f"nodekey:{n}",
        user_id=None,
        tags=(),
        hostname="h",
        given_name=f"h{n}",
        ipv4=f"100.64.0.{n}",
        ipv6=f"fd7a:115c:a1e0::{n}",
        ephemeral=False,
        created_at=NOW,
        key_expiry=None,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'control.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_migrations_produce_exactly_the_models(url: str) -> None:
    store = SqlStore.open(url)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        SqlStore.open(url).dispose()  # a second start finds nothing to do
    finally:
        store.dispose()


def test_single_use_key_is_used_once_even_when_transactions_race(pg_url: str) -> None:
    """Both transactions read the key as unused; the conditional UPDATE lets one win.
    (PostgreSQL only: SQLite's BEGIN IMMEDIATE never lets two writers overlap.)"""
    store = SqlStore.open(pg_url)
    try:
        with store.transaction(write=True) as tx:
            key_id = tx.add_auth_key(_key()).id
        racers = 20
        barrier = threading.Barrier(racers)
        results: list[bool] = []

        def race() -> None:
            with store.transaction(write=True) as tx:
                key = tx.auth_key_by_prefix("aaaaaaaaaaaa")
                assert key is not None and key.used_count == 0
                barrier.wait(10)
                results.append(tx.use_auth_key(key_id, NOW))

        threads = [threading.Thread(target=race) for _ in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [False] * (racers - 1) + [True]
    finally:
        store.dispose()


def test_node_ids_are_never_reused(url: str) -> None:
    store = SqlStore.open(url)
    try:
        with store.transaction(write=True) as tx:
            first = tx.add_node(_node(1)).id
            tx.delete_node(first)
        with store.transaction(write=True) as tx:
            assert tx.add_node(_node(2)).id > first
    finally:
        store.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = SqlStore.open(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        store.dispose()


def test_urls() -> None:
    assert normalize_url("postgresql://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert "pw" not in redact("postgresql+psycopg://u:pw@h/db")
    with pytest.raises(ValueError, match="unsupported database"):
        SqlStore("mysql://h/db")


def test_api_keys_from_before_scopes_become_admin_keys(url: str) -> None:
    """Migration 0004 adds api_keys.scope; keys made before it keep full access."""
    from alembic import command
    from alembic.config import Config

    from weftnet.control.store.sql import MIGRATIONS_DIR

    old = SqlStore(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with old.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")
            conn.execute(
                text(
                    "INSERT INTO api_keys (prefix, key_hash, description, created_at)"
                    " VALUES ('bbbbbbbbbbbb', :h, 'old', :t)"
                ),
                {"h": "0" * 64, "t": NOW},
            )
    finally:
        old.dispose()
    store = SqlStore.open(url)
    try:
        with store.transaction(write=False) as tx:
            key = tx.api_key_by_prefix("bbbbbbbbbbbb")
        assert key is not None and key.scope == "admin" and key.expires_at is None
    finally:
        store.dispose()


def _insert_node(conn: Any, n: int, disco_key: str | None) -> None:
    """A node row as schema 0004 has it (JSON columns as literals: PostgreSQL will not
    cast a text parameter to json)."""
    conn.execute(
        text(
            "INSERT INTO nodes (machine_key, node_key, disco_key, tags, hostname, given_name,"
            " ipv4, ipv6, endpoints, created_at, ephemeral)"
            " VALUES (:mk, :nk, :dk, '[]', 'h', :name, :v4, :v6, '[]', :t, false)"
        ),
        {
            "mk": f"mkey:{n}",
            "nk": f"nodekey:{n}",
            "dk": disco_key,
            "name": f"h{n}",
            "v4": f"100.64.0.{n}",
            "v6": f"fd7a:115c:a1e0::{n}",
            "t": NOW,
        },
    )


def test_migration_0005_makes_disco_keys_unique_keeping_the_newest_holder(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from weftnet.control.store.sql import MIGRATIONS_DIR

    shared, own = "discokey:" + "a" * 64, "discokey:" + "b" * 64
    old = SqlStore(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with old.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0004")
            # Before the rule: nodes 1, 2 and 5 share a disco key; 3 and 4 have none.
            for n, disco in [(1, shared), (2, shared), (3, None), (4, None), (5, shared)]:
                _insert_node(conn, n, disco)
            _insert_node(conn, 6, own)
    finally:
        old.dispose()
    store = SqlStore.open(url)
    try:
        with store.transaction(write=False) as tx:
            disco = {node.given_name: node.disco_key for node in tx.nodes()}
        assert disco == {"h1": None, "h2": None, "h3": None, "h4": None, "h5": shared, "h6": own}
        # The database itself now refuses a second holder, and names the index.
        with pytest.raises(StoreConflict) as e, store.transaction(write=True) as tx:
            node = tx.node_by_machine_key("mkey:1")
            assert node is not None
            tx.update_node(node.id, disco_key=shared)
        assert e.value.constraint == DISCO_KEY_UNIQUE
        with store.transaction(write=True) as tx:  # any number of nodes without one
            tx.add_node(_node(7))
            tx.add_node(_node(8))
    finally:
        store.dispose()


def test_migration_0006_gives_existing_nodes_no_routes(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from weftnet.control.store.sql import MIGRATIONS_DIR

    old = SqlStore(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with old.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
            _insert_node(conn, 1, None)
    finally:
        old.dispose()
    store = SqlStore.open(url)
    try:
        with store.transaction(write=True) as tx:
            (node,) = tx.nodes()
            assert node.announced_routes == () and node.approved_routes == ()
            tx.update_node(
                node.id, announced_routes=("198.18.20.0/24", "::/0"), approved_routes=("::/0",)
            )
        with store.transaction(write=False) as tx:
            again = tx.node_by_id(node.id)
        assert again is not None and again.announced_routes == ("198.18.20.0/24", "::/0")
        assert again.approved_routes == ("::/0",)
    finally:
        store.dispose()
