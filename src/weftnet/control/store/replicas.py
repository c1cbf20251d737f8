"""What replicas of the server share through PostgreSQL: change notices, heartbeats and
who is online where (docs/scaling.md).

Theory of operation: several ``weft-control serve`` processes use one PostgreSQL. A
replica that committed a change nodes could see sends ``NOTIFY weft_changes`` right
after the commit (``NotifyFeed``); every replica LISTENs on a dedicated connection
(``ReplicaStore.notifications``) and rebuilds its maps. A notice carries its kind and
the sender's replica id: ``c:<id>`` for a committed change, ``p:<id>`` for a change of
the sender's online set; a replica skips its own.

Online state is rows: ``control_replicas`` has one row per running replica with a
heartbeat taken from the database's clock (so replicas' clocks may disagree), and
``node_presence`` says which nodes have a live map stream on which replica. A replica
whose heartbeat is older than the lease counts as dead: its nodes are offline (unless
online on another replica) and the first replica to notice deletes its rows. Each
``sync`` (one transaction) refreshes our heartbeat, writes the change in our online set
and reads the nodes online on the other live replicas.

PostgreSQL only: with SQLite the server is one process and all of this stays in it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from weftnet.asyncwait import wait_within
from weftnet.control.domain.records import CallbackFeed
from weftnet.control.store import models as m
from weftnet.control.store.sql import SqlStore, redact_error

log = logging.getLogger(__name__)

CHANNEL = "weft_changes"  # the NOTIFY channel every replica listens on
KIND_CHANGE = "c"  # a committed change: rebuild the maps
KIND_PRESENCE = "p"  # the sender's online set changed: read presence again
NONCE_GRACE_S = 60.0  # seen nonces are kept this long past their window (clock margins)
LIVENESS_S = 5.0  # a quiet listening connection is checked this often ...
LIVENESS_TIMEOUT_S = 5.0  # ... and counts as broken when the check takes longer

# The database's clock in unix seconds: every replica judges leases by the same clock.
_DB_NOW = func.extract("epoch", func.clock_timestamp())


def new_replica_id() -> str:
    return os.urandom(8).hex()


def notice(kind: str, replica_id: str) -> str:
    return f"{kind}:{replica_id}"


def parse_notice(payload: str) -> tuple[str, str] | None:
    """(kind, replica id) of a notice; None for anything else on the channel."""
    kind, sep, replica_id = payload.partition(":")
    if not sep or kind not in (KIND_CHANGE, KIND_PRESENCE) or not replica_id:
        return None
    return kind, replica_id


@dataclass(frozen=True, slots=True)
class Synced:
    alive: bool  # False: our row was gone (we were judged dead) and is back now
    elsewhere: frozenset[int]  # nodes online on the other live replicas
    expired: int  # dead replicas whose rows this sync deleted
    relays: tuple[dict[str, Any], ...] = ()  # relay registrations refreshed in time


class ReplicaStore:
    """This replica's rows and notices in the shared database."""

    def __init__(self, store: SqlStore, server_key: str, replica_id: str | None = None) -> None:
        if store.dialect != "postgresql":
            raise ValueError("replicas share a PostgreSQL database, not " + store.dialect)
        self.engine = store.engine
        self.server_key = server_key  # "mkey:<hex>", public
        self.replica_id = replica_id or new_replica_id()

    def other_server_keys(self, lease_s: float) -> list[dict[str, Any]]:
        """The live replicas (heartbeat within the lease) whose server key is not ours."""
        r = m.control_replicas.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(r.id, r.host, r.pid, r.server_key).where(
                    r.server_key != self.server_key, r.heartbeat_at >= _DB_NOW - lease_s
                )
            )
            return [dict(row._mapping) for row in rows]

    # -- notices ----------------------------------------------------------------------

    def notify(self, kind: str) -> None:
        """Tell the other replicas (NOTIFY, committed at once)."""
        with self.engine.connect() as conn:
            _notify(conn, notice(kind, self.replica_id))
            conn.commit()

    async def notifications(self, on_listening: Callable[[], None]) -> AsyncIterator[str]:
        """Each notice's payload, from a dedicated connection, until it breaks (raises).

        ``on_listening`` is called once LISTEN is in force: notices sent before may have
        been missed, so the caller rebuilds everything then."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        conn = await psycopg.AsyncConnection.connect(*cargs, **cparams, autocommit=True)
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            on_listening()
            while True:
                async for n in conn.notifies(timeout=LIVENESS_S):
                    yield n.payload
                # Quiet for a while: make sure the connection still answers.
                await wait_within(conn.execute("SELECT 1"), LIVENESS_TIMEOUT_S)

    # -- the shared replay guard ------------------------------------------------------

    def first_use(self, nonce: bytes, expires_at: float) -> bool:
        """Remember a sealed request's nonce until ``expires_at``; False if some replica
        already accepted it (a replay)."""
        stmt = (
            pg_insert(m.seen_nonces)
            .values(nonce=nonce.hex(), expires_at=expires_at)
            .on_conflict_do_nothing()
            .returning(m.seen_nonces.c.nonce)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).first() is not None

    # -- heartbeat and online state ---------------------------------------------------

    def sync(
        self,
        added: frozenset[int],
        removed: frozenset[int],
        lease_s: float,
        *,
        replace: bool,
        relays: Mapping[str, dict[str, Any] | None] | None = None,
        relay_ttl_s: float = 30.0,
    ) -> Synced:
        """One transaction: heartbeat (or join), write our online set's change and the
        relay registrations this replica took (``relays``: name -> region, None for a
        removal), tell the others at commit, delete dead replicas and stale relays, read
        who is online elsewhere and the relays refreshed within ``relay_ttl_s``.

        ``replace``: ``added`` is our whole online set; any other row of ours goes."""
        me = self.replica_id
        r = m.control_replicas.c
        with self.engine.begin() as conn:
            beat = conn.execute(
                update(m.control_replicas).where(r.id == me).values(heartbeat_at=_DB_NOW)
            )
            alive = beat.rowcount == 1
            if not alive:
                conn.execute(
                    insert(m.control_replicas).values(
                        id=me,
                        host=socket.gethostname()[:255],
                        pid=os.getpid(),
                        server_key=self.server_key,
                        started_at=_DB_NOW,
                        heartbeat_at=_DB_NOW,
                    )
                )
            expired = conn.execute(
                delete(m.control_replicas).where(r.heartbeat_at < _DB_NOW - lease_s, r.id != me)
            ).rowcount
            conn.execute(
                delete(m.seen_nonces).where(m.seen_nonces.c.expires_at < _DB_NOW - NONCE_GRACE_S)
            )
            p = m.node_presence.c
            if replace:
                conn.execute(
                    delete(m.node_presence).where(
                        p.replica_id == me, p.node_id.not_in(sorted(added))
                    )
                )
            elif removed:
                conn.execute(
                    delete(m.node_presence).where(
                        p.replica_id == me, p.node_id.in_(sorted(removed))
                    )
                )
            if added:
                # Only nodes that still exist (one may have been deleted meanwhile).
                conn.execute(
                    text(
                        "INSERT INTO node_presence (replica_id, node_id)"
                        " SELECT :me, id FROM nodes WHERE id IN :ids"
                        " ON CONFLICT DO NOTHING"
                    ).bindparams(bindparam("ids", expanding=True)),
                    {"me": me, "ids": sorted(added)},
                )
            _write_relays(conn, relays or {})
            rr = m.relay_registrations.c
            conn.execute(
                delete(m.relay_registrations).where(rr.refreshed_at < _DB_NOW - relay_ttl_s)
            )
            if added or removed or expired or replace or relays:
                _notify(conn, notice(KIND_PRESENCE, me))  # delivered at commit
            elsewhere = frozenset(
                conn.execute(
                    select(m.node_presence.c.node_id)
                    .distinct()
                    .join(m.control_replicas, r.id == m.node_presence.c.replica_id)
                    .where(r.id != me, r.heartbeat_at >= _DB_NOW - lease_s)
                ).scalars()
            )
            live_relays = tuple(conn.execute(select(rr.region).order_by(rr.name)).scalars())
        return Synced(alive=alive, elsewhere=elsewhere, expired=expired, relays=live_relays)

    def leave(self) -> None:
        """Our row and presence go (a clean shutdown); the others hear at once."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(m.control_replicas).where(m.control_replicas.c.id == self.replica_id)
            )
            _notify(conn, notice(KIND_PRESENCE, self.replica_id))

    def replicas(self) -> list[dict[str, Any]]:
        """Every replica row, with its heartbeat's age by the database's clock."""
        r = m.control_replicas.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(r.id, r.host, r.pid, r.started_at, (_DB_NOW - r.heartbeat_at).label("age"))
            )
            return [dict(row._mapping) for row in rows]


def _write_relays(conn: Connection, relays: Mapping[str, dict[str, Any] | None]) -> None:
    rr = m.relay_registrations.c
    for name, region in sorted(relays.items()):
        if region is None:
            conn.execute(delete(m.relay_registrations).where(rr.name == name))
            continue
        stmt = pg_insert(m.relay_registrations).values(
            name=name, region=region, refreshed_at=_DB_NOW
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[rr.name],
                set_={"region": stmt.excluded.region, "refreshed_at": stmt.excluded.refreshed_at},
            )
        )


def _notify(conn: Connection, payload: str) -> None:
    conn.execute(select(func.pg_notify(CHANNEL, payload)))


class NotifyFeed(CallbackFeed):
    """The change feed of a replica: this process's subscribers, then every other
    replica through NOTIFY. A failed NOTIFY is logged; the others' periodic full
    rebuild (``server.replicas``) catches the change up."""

    def __init__(self, replicas: ReplicaStore) -> None:
        super().__init__()
        self.replicas = replicas

    def publish(self) -> None:
        super().publish()
        try:
            self.replicas.notify(KIND_CHANGE)
        except Exception as e:
            log.warning("could not tell the other replicas about a change: %s", redact_error(e))
