"""Several ``weft-control serve`` replicas on one PostgreSQL: the running part.

Theory of operation (the shared rows and notices are ``store.replicas``): ``change_feed``
gives the service its feed - in-process on SQLite; on PostgreSQL a ``NotifyFeed`` that
also NOTIFYs the other replicas after each commit. ``attach`` joins the hub to the
group with two tasks that run alongside it, each retrying with backoff on its own:

- the listener holds a dedicated connection with LISTEN. A change notice from another
  replica marks the hub dirty; a presence notice wakes the presence task. Whenever it
  (re)connects it marks the hub dirty and wakes the presence task: notices sent while
  it was not listening are lost, so everything is read again.
- the presence task, every ``heartbeat_s`` and whenever woken (this replica's online
  set changed, another replica's did), runs one ``sync``: heartbeat, our online set's
  change, and the nodes online on the other live replicas, which the hub's ``online``
  adds to its own. The same sync writes the standalone relay registrations (and
  removals) this replica took and reads everyone's: each replica's relay map lists
  every relay registered with any replica and refreshed in time. A replica killed with SIGKILL stops its heartbeat; after ``lease_s``
  the others count its nodes offline (those that came back on another replica stay
  online). Every ``resync_s`` it also marks the hub dirty, so a notice lost in a
  database failover is caught up. A replica that cannot sync for longer than the
  lease ends its map streams: the others already count its nodes offline, and the
  nodes move to a replica that reaches the database (a node's map request fails here
  until it comes back).

``change_feed`` also refuses to start a replica whose server key differs from a live
one's (nodes pin one key), and ``shared_replay_check`` gives the node API the replay
guard the replicas share (a sealed request accepted by one is refused by the others).

No consensus of our own: PostgreSQL's transactions, unique constraints and conditional
updates keep addresses, names and single-use keys unique (``service.core``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from weftnet import tailcfg
from weftnet.asyncwait import wait_within
from weftnet.control.domain import relays
from weftnet.control.domain.records import CallbackFeed
from weftnet.control.server.hub import Hub
from weftnet.control.store.replicas import (
    KIND_CHANGE,
    NotifyFeed,
    ReplicaStore,
    parse_notice,
)
from weftnet.control.store.sql import SqlStore, redact_error

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # a replica refreshes its heartbeat this often ...
LEASE_S = 5.0  # ... and counts as dead (its nodes offline) when it is this old
RESYNC_S = 30.0  # every replica rebuilds its maps at least this often
RETRY_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # a broken connection is retried after these


class ReplicaKeyMismatch(Exception):
    """A live replica on the database has another server key."""


def change_feed(store: SqlStore, server_key: str) -> CallbackFeed:
    """The service's change feed: on PostgreSQL it reaches every replica.

    ReplicaKeyMismatch when a live replica uses another server key: nodes pin one key,
    so replicas must share ``server.key``."""
    if store.dialect != "postgresql":
        return CallbackFeed()
    replica_store = ReplicaStore(store, server_key)
    others = replica_store.other_server_keys(LEASE_S)
    if others:
        other = others[0]
        raise ReplicaKeyMismatch(
            f"replica {other['id']} (host {other['host']}, pid {other['pid']}) on this database"
            f" uses the server key {other['server_key']}, this one {server_key}: replicas must"
            " share one server key (nodes pin it); copy DATA_DIR/server.key from a running"
            " replica"
        )
    return NotifyFeed(replica_store)


class Replicas:
    """This replica's part in the group (see the module's docstring)."""

    def __init__(
        self,
        store: ReplicaStore,
        hub: Hub,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        lease_s: float = LEASE_S,
        resync_s: float = RESYNC_S,
    ) -> None:
        self.store = store
        self.hub = hub
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.resync_s = resync_s
        self.elsewhere: frozenset[int] = frozenset()  # online on other live replicas
        self._written: frozenset[int] | None = None  # our presence rows; None: unknown
        self._wake = asyncio.Event()
        # Relay registrations taken here, still to write (name -> region; None: removed).
        self._relay_writes: dict[str, dict[str, Any] | None] = {}
        self._shared_relays: set[str] = set()  # the names the last sync read
        self._applying = False  # applying what the database says: do not write it back

    def attach(self) -> None:
        self.hub.online_elsewhere = lambda: self.elsewhere
        self.hub.on_local_online.append(self._wake.set)
        self.hub.relay_watchers.append(self._relay_changed)
        self.hub.run_alongside(self.listen_forever)
        self.hub.run_alongside(self.sync_forever)

    # -- the listener -----------------------------------------------------------------

    async def listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                async for payload in self.store.notifications(self._listening):
                    failures = 0
                    self._heard(payload)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "replica %s: listening for the other replicas failed: %s",
                    self.store.replica_id,
                    redact_error(e),
                )
            await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
            failures += 1

    def _listening(self) -> None:
        self.hub.notify_threadsafe()  # notices may have been missed: read everything
        self._wake.set()

    def _heard(self, payload: str) -> None:
        parsed = parse_notice(payload)
        if parsed is None or parsed[1] == self.store.replica_id:
            return
        if parsed[0] == KIND_CHANGE:
            self.hub.notify_threadsafe()
        else:
            self._wake.set()

    # -- heartbeat and presence -------------------------------------------------------

    async def sync_forever(self) -> None:
        loop = asyncio.get_running_loop()
        resync_at = synced_at = loop.time()
        resync_at += self.resync_s
        failures = 0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await wait_within(self._wake.wait(), self.heartbeat_s)
                self._wake.clear()
                try:
                    await self._sync_once()
                except Exception as e:
                    self._sync_failed(e, loop.time() - synced_at)
                    await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
                    failures += 1
                    continue
                failures, synced_at = 0, loop.time()
                if synced_at >= resync_at:
                    resync_at = synced_at + self.resync_s
                    self.hub.notify_threadsafe()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(anyio.to_thread.run_sync(self.store.leave))

    def _sync_failed(self, e: Exception, down_s: float) -> None:
        log.warning(
            "replica %s: could not sync online state: %s", self.store.replica_id, redact_error(e)
        )
        self._written = None  # unknown now: write everything next time
        if down_s > self.lease_s and self.hub.end_streams():
            log.warning(
                "replica %s: no database for %.1f s: ended the map streams here so their"
                " nodes move to another replica",
                self.store.replica_id,
                down_s,
            )

    def _relay_changed(self, name: str, region: tailcfg.RelayRegion | None) -> None:
        if not self._applying:
            self._relay_writes[name] = region.model_dump(mode="json") if region else None
            self._wake.set()

    async def _sync_once(self) -> None:
        local = self.hub.local_online()
        written = self._written
        if written is None:  # first sync, or after a failure: write the whole set
            added, removed = local, frozenset[int]()
        else:
            added, removed = local - written, written - local
        relay_writes, self._relay_writes = self._relay_writes, {}
        try:
            synced = await anyio.to_thread.run_sync(
                lambda: self.store.sync(
                    added,
                    removed,
                    self.lease_s,
                    replace=written is None,
                    relays=relay_writes,
                    relay_ttl_s=relays.REGION_TTL_S,
                )
            )
        except Exception:
            self._relay_writes = relay_writes | self._relay_writes  # newer ones win
            raise
        self._written = local
        self._apply_relays(synced.relays)
        if not synced.alive and written is not None:
            log.warning(
                "replica %s: the others had judged this replica dead (no heartbeat for %.0f s):"
                " rejoined",
                self.store.replica_id,
                self.lease_s,
            )
            self._written = None
            self._wake.set()  # write our whole online set again
        if synced.expired:
            log.info("removed %d replica(s) whose heartbeat stopped", synced.expired)
        if synced.elsewhere != self.elsewhere:
            self.elsewhere = synced.elsewhere
            self.hub.notify_threadsafe()

    def _apply_relays(self, rows: tuple[dict[str, Any], ...]) -> None:
        """Every relay registered with any replica (refreshed in time) is in our relay
        map; one that left the database (removed, or not refreshed) leaves it."""
        shared: dict[str, tailcfg.RelayRegion] = {}
        for row in rows:
            try:
                region = tailcfg.RelayRegion.model_validate(row)
            except ValueError as e:
                log.warning("a shared relay registration is malformed: %s", e)
                continue
            shared[region.name] = region
        self._applying = True
        try:
            for region in shared.values():
                try:
                    self.hub.register_relay(region)
                except (OverflowError, ValueError) as e:
                    log.warning("relay region %s from another replica: %s", region.name, e)
            for name in self._shared_relays - shared.keys():
                self.hub.remove_relay(name)
        finally:
            self._applying = False
        self._shared_relays = set(shared)


def shared_replay_check(feed: CallbackFeed) -> Callable[[bytes, float], bool] | None:
    """``first_use(nonce, expires_at)`` of the replay guard replicas share (None on
    SQLite: the process's own guard is the whole guard)."""
    return feed.replicas.first_use if isinstance(feed, NotifyFeed) else None


def attach(hub: Hub, feed: CallbackFeed) -> Replicas | None:
    """Join ``hub`` to the replicas on the feed's database (None on SQLite)."""
    if not isinstance(feed, NotifyFeed):
        return None
    replicas = Replicas(feed.replicas, hub)
    replicas.attach()
    log.info("replica %s: sharing maps and online state with the others", feed.replicas.replica_id)
    return replicas
