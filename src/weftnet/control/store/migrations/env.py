"""Alembic environment: runs on the connection ``SqlStore.migrate()`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from weftnet.control.store.models import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line, with sqlalchemy.url set
        url = config.get_main_option("sqlalchemy.url")
        assert url, "set sqlalchemy.url in alembic.ini"
        with create_engine(url).begin() as conn:
            _migrate(conn)
    else:
        _migrate(connection)


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
