"""The map hub: tells every live map stream what changed, within milliseconds.

Theory of operation: each map stream is a ``Subscription``, a one-slot mailbox holding
the newest ``NetMap`` (a slow stream skips straight to the latest state; nothing piles
up). Anything that changes what a node could see - a commit published by the service
on its ``ChangeFeed``, a stream coming or going (online state), a key reaching its
expiry time - marks the hub dirty. One task rebuilds: it loads one snapshot of the
database (in a worker thread), wraps it with the online set and the time into a
``NetMap`` (reusing what the previous one built for records that did not change), and
offers it to the mailboxes of the nodes whose view it may change (``NetMap.affected``:
a node coming online wakes its peers' streams, not all of them); each stream turns it
into its own delta (``netmap.delta``) against the view it holds. Changes that arrive
while a rebuild runs are coalesced into the next one, which starts no sooner than the
last one took (so rebuilds take at most about half the CPU under a stream of changes).

A ticker (every ``tick_s``) marks the hub dirty when the earliest key expiry has
passed, and deletes ephemeral nodes whose streams have all been gone for
``ephemeral_grace_s`` (also ephemeral nodes that never came back after a restart). At
its first tick and then every ``purge_every_s`` it deletes the pending interactive
logins past their expiry, so their rows go even when no new login comes to do it.

Relays ride on the same path. Standalone relays register in ``relays`` (a
``RelayRegistry``; the ticker drops those not refreshed in time); a change there marks
the hub dirty like any other, and the rebuilt NetMap carries the new relay map to every
stream. After every rebuild the hub calls its watchers with the new NetMap: the embedded
relay's watcher cuts clients whose node key the map no longer admits (deleted, expired,
replaced by a re-login), so a revocation reaches the relay as fast as a map delta.
Relay admission (``admits``) waits for a NetMap built after it was asked, so it sees
every change published before the relay asked, and any later change reaches the
watchers after it.

Online state lives in this process. Several replicas on one PostgreSQL
(``replicas.py``) carry the ``ChangeFeed`` over LISTEN/NOTIFY into ``notify_threadsafe``,
and share online state in the database: ``online`` is this replica's streams plus
``online_elsewhere()``, and ``on_local_online`` callbacks hear when this replica's own
set changes. Their tasks run alongside the hub's (``run_alongside``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio.to_thread

from weftnet import tailcfg
from weftnet.asyncwait import wait_within
from weftnet.control.domain.netmap import NetMap
from weftnet.control.domain.relays import RelayRegistry
from weftnet.control.service import ControlService
from weftnet.control.store.sql import redact_error

log = logging.getLogger(__name__)

DEFAULT_KEEPALIVE_S = 15.0  # a stream with nothing to say sends a keepalive this often
# ... and this often for a node that may serve routes: with the listening socket's
# TCP_USER_TIMEOUT (app.TCP_USER_TIMEOUT_S), a silently dead router's stream breaks
# within about 13 s, it goes offline and the election moves its prefixes.
DEFAULT_ROUTER_KEEPALIVE_S = 3.0
DEFAULT_EPHEMERAL_GRACE_S = 10.0  # an ephemeral node offline this long is deleted
DEFAULT_TICK_S = 0.1  # how often expiry times and ephemeral deadlines are checked
REBUILD_RETRY_S = 1.0  # after a failed snapshot (database unreachable), try again
# After a rebuild the next waits as long as this one took (at most MAX_REBUILD_REST_S):
# under a stream of changes (thousands of nodes registering) rebuilds, O(nodes) each,
# take at most about half the CPU and the requests making the changes get the rest.
MAX_REBUILD_REST_S = 1.0
STOP_S = 10.0  # at shutdown, how long the hub's tasks get to end
STOP_RECANCEL_S = 0.5  # ... cancelled again this often while they have not
DEFAULT_PURGE_EVERY_S = 300.0  # expired pending-login rows are deleted this often


class StreamClosed(Exception):
    """The hub is shutting down: end the stream."""


class Subscription:
    """One live map stream's mailbox: the newest NetMap it has not seen yet.

    It takes only NetMaps built from a snapshot read after the stream started
    (``since``): an older rebuild still running might not know the node yet.
    """

    def __init__(self, node_id: int, since: int) -> None:
        self.node_id = node_id
        self.since = since
        self._latest: NetMap | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._offered_changed_at: float | None = None
        # When (monotonic) the first change in the NetMap ``next`` returned last was
        # published: the map push latency (metrics) is measured from there.
        self.changed_at: float | None = None
        self.offered = False  # it took a NetMap: later ones need not wake it unless they matter

    def offer(self, netmap: NetMap, generation: int, changed_at: float | None = None) -> None:
        if generation < self.since:
            return
        self.offered = True
        if self._latest is None:  # else the NetMap it replaces had the earlier change
            self._offered_changed_at = changed_at
        self._latest = netmap
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self, timeout_s: float | None) -> NetMap | None:
        """The next NetMap; None when ``timeout_s`` passed first. StreamClosed at shutdown."""
        if not self._ready.is_set():
            try:
                await wait_within(self._ready.wait(), timeout_s)
            except TimeoutError:
                return None
        if self._closed:
            raise StreamClosed
        self._ready.clear()
        netmap, self._latest = self._latest, None
        self.changed_at = self._offered_changed_at
        return netmap


class Hub:
    def __init__(
        self,
        service: ControlService,
        *,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        router_keepalive_s: float = DEFAULT_ROUTER_KEEPALIVE_S,
        ephemeral_grace_s: float = DEFAULT_EPHEMERAL_GRACE_S,
        tick_s: float = DEFAULT_TICK_S,
        purge_every_s: float = DEFAULT_PURGE_EVERY_S,
        clock: Callable[[], float] = time.time,
        policy_clock: Callable[[], float] | None = None,
    ) -> None:
        self.service = service
        self.keepalive_s = keepalive_s
        self.router_keepalive_s = router_keepalive_s
        self.ephemeral_grace_s = ephemeral_grace_s
        self.tick_s = tick_s
        self.purge_every_s = purge_every_s
        self.clock = clock
        # The wall clock policy schedules are judged by (``clock`` unless given): a lab
        # server moves it to test schedules; keys and requests keep ``clock``.
        self.policy_clock = policy_clock or clock
        self.current: NetMap | None = None  # the newest NetMap built
        self.generation = 0  # bumped on every change; long-polls wait for it to move
        self.current_generation = -1  # the generation ``current`` was built at
        self.relays = RelayRegistry()  # standalone relays (the relay map after our own)
        self.closed = False
        self.on_close: list[Callable[[], None]] = []  # called once, at shutdown
        self._built = asyncio.Event()  # set (and replaced) after every rebuild
        self._watchers: list[Callable[[NetMap], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = asyncio.Event()
        self._changed_event = asyncio.Event()
        self._subs: set[Subscription] = set()
        self._streams: dict[int, int] = {}  # node id -> live streams
        self._ephemeral_deadlines: dict[int, float] = {}  # node id -> delete at
        self._purge_at = float("-inf")  # when expired pending logins are next deleted
        self._changed_at: float | None = None  # the first change not in a rebuild yet
        self._tasks: set[asyncio.Task[Any]] = set()
        # Several replicas (replicas.py): the nodes online on the others, who to tell
        # when a node's first stream here starts or its last ends, and their tasks.
        self.online_elsewhere: Callable[[], frozenset[int]] = frozenset
        self.on_local_online: list[Callable[[], None]] = []
        # Called with (name, region) after a relay registered or refreshed here, and
        # (name, None) after one was removed: replicas share the registrations.
        self.relay_watchers: list[Callable[[str, tailcfg.RelayRegion | None], None]] = []
        self._companions: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._rebuild_forever())
        self._spawn(self._tick_forever())
        for companion in self._companions:
            self._spawn(companion())
        self._mark_changed()

    def run_alongside(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``factory()`` from ``start`` until ``stop`` (it handles its own errors)."""
        self._companions.append(factory)

    def close(self) -> None:
        """End every stream and long-poll (server shutdown). Call on the hub's loop."""
        if not self.closed:
            for callback in self.on_close:
                callback()
        self.closed = True
        for sub in list(self._subs):
            sub.close()
        self._changed_event.set()
        self._built.set()

    def end_streams(self) -> int:
        """End every live map stream (how many); the hub keeps serving: their nodes
        reconnect, maybe to another replica. Call on the hub's loop."""
        subs = list(self._subs)
        for sub in subs:
            sub.close()
        return len(subs)

    def close_threadsafe(self) -> None:
        self._call_soon(self.close)

    async def stop(self) -> None:
        """Close, and cancel the hub's tasks until they end (a task that took its
        cancellation for something else is cancelled again), for at most STOP_S."""
        self.close()
        pending = set(self._tasks)
        deadline_at = time.monotonic() + STOP_S
        while pending and time.monotonic() < deadline_at:
            for task in pending:
                task.cancel()
            done, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("a hub task failed as it stopped: %r", task.exception())
        for task in pending:
            log.warning("hub task %s did not stop within %g s", task.get_name(), STOP_S)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(fn)

    # -- change notification ----------------------------------------------------------

    def notify_threadsafe(self) -> None:
        """Something changed (the ChangeFeed subscriber; any thread)."""
        self._call_soon(self._mark_changed)

    def _mark_changed(self) -> None:
        if self._changed_at is None:
            self._changed_at = time.monotonic()
        self.generation += 1
        self._dirty.set()
        self._changed_event.set()

    async def wait_for_change(self, since: int, timeout_s: float) -> None:
        """Return once ``generation`` has moved past ``since``, at shutdown, or at timeout."""
        deadline_at = time.monotonic() + timeout_s
        while self.generation == since and not self.closed:
            remaining_s = deadline_at - time.monotonic()
            if remaining_s <= 0:
                return
            self._changed_event.clear()
            with contextlib.suppress(TimeoutError):
                await wait_within(self._changed_event.wait(), remaining_s)

    def keepalive_for(self, node_id: int) -> float:
        """How often a quiet stream of ``node_id`` sends a keepalive."""
        netmap = self.current
        if netmap is not None and netmap.serves_routes(node_id):
            return min(self.keepalive_s, self.router_keepalive_s)
        return self.keepalive_s

    def policy_now(self) -> float:
        return self.policy_clock()

    # -- relays -----------------------------------------------------------------------

    def watch(self, callback: Callable[[NetMap], None]) -> None:
        """Call ``callback(netmap)`` on the hub's loop after every rebuild."""
        self._watchers.append(callback)

    def register_relay(self, region: tailcfg.RelayRegion) -> bool:
        """A standalone relay registered or refreshed (on the hub's loop); True if new.

        OverflowError when the registry is full."""
        changed = self.relays.register(region, self.clock())
        if changed:
            log.info("relay region %s: %s (%s)", region.name, region.url, region.public_key)
            self._mark_changed()
        for watcher in self.relay_watchers:
            watcher(region.name, region)
        return changed

    def remove_relay(self, name: str) -> bool:
        removed = self.relays.remove(name)
        if removed:
            self._mark_changed()
            for watcher in self.relay_watchers:
                watcher(name, None)
        return removed

    async def netmap_since(self, generation: int) -> NetMap | None:
        """The first NetMap built from a snapshot read at ``generation`` or later (so it
        includes every change published before); None once the hub is closed."""
        while self.current_generation < generation and not self.closed:
            await self._built.wait()
        return None if self.closed else self.current

    async def admits(self, node_key: str) -> bool:
        """Whether a relay may take ``node_key`` ("nodekey:<hex>") now."""
        netmap = await self.netmap_since(self.generation)
        return netmap is not None and netmap.admits(node_key, self.clock())

    # -- streams ----------------------------------------------------------------------

    def connect(self, node_id: int) -> Subscription:
        """A map stream for ``node_id`` starts; its first NetMap comes after this change."""
        self._mark_changed()
        sub = Subscription(node_id, since=self.generation)
        if self.closed:
            sub.close()
            return sub
        self._subs.add(sub)
        self._streams[node_id] = self._streams.get(node_id, 0) + 1
        self._ephemeral_deadlines.pop(node_id, None)
        if self._streams[node_id] == 1:
            self._local_online_changed()
        return sub

    def disconnect(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        left = self._streams.get(sub.node_id, 1) - 1
        if left > 0:
            self._streams[sub.node_id] = left
            return
        self._streams.pop(sub.node_id, None)
        self._local_online_changed()
        node = self.current.nodes.get(sub.node_id) if self.current else None
        if node is not None and node.ephemeral:
            self._ephemeral_deadlines[sub.node_id] = self.clock() + self.ephemeral_grace_s
        self._mark_changed()  # offline now
        if not self.closed:
            self._spawn(self._record_last_seen(sub.node_id))

    def online(self) -> frozenset[int]:
        """Nodes with a live map stream, here or on another replica."""
        return frozenset(self._streams) | self.online_elsewhere()

    def local_online(self) -> frozenset[int]:
        """Nodes with a live map stream on this replica."""
        return frozenset(self._streams)

    def stream_count(self) -> int:
        """Live map streams (a node may hold several)."""
        return len(self._subs)

    def _local_online_changed(self) -> None:
        for callback in self.on_local_online:
            callback()

    async def _record_last_seen(self, node_id: int) -> None:
        try:
            await anyio.to_thread.run_sync(self.service.node_disconnected, node_id, self.clock())
        except Exception as e:  # the database is away: one line, as for the map's read
            log.warning("could not record when node %d went offline: %s", node_id, redact_error(e))
        self._mark_changed()

    # -- background tasks -------------------------------------------------------------

    async def _rebuild_forever(self) -> None:
        while True:
            await self._dirty.wait()
            started = time.monotonic()
            self._dirty.clear()
            generation = self.generation  # this snapshot includes every change up to here
            changed_at, self._changed_at = self._changed_at, None
            try:
                snapshot = await anyio.to_thread.run_sync(self.service.snapshot)
            except Exception as e:
                log.warning("could not read the network map from the database: %s", redact_error(e))
                if changed_at is not None:  # still to be built: the next rebuild's
                    self._changed_at = min(changed_at, self._changed_at or changed_at)
                await asyncio.sleep(REBUILD_RETRY_S)
                self._dirty.set()
                continue
            now = self.clock()
            previous = self.current
            netmap = NetMap(
                snapshot.nodes,
                snapshot.users,
                self.online(),
                now,
                snapshot.dns_config.domain
                if snapshot.dns_config is not None
                else self.service.settings.dns_domain,
                self.relays.regions(),
                snapshot.policy,
                self.policy_now(),
                snapshot.dns_config,
                # The last election: a primary keeps its prefixes while it stands.
                self.current.primaries if self.current is not None else None,
                previous=previous,  # what did not change is reused, not rebuilt
            )
            self.current = netmap
            self.current_generation = generation
            self._track_ephemeral(netmap, now)
            for watcher in list(self._watchers):
                try:
                    watcher(netmap)
                except Exception:
                    log.exception("a network map watcher failed")
            built, self._built = self._built, asyncio.Event()
            built.set()
            affected = netmap.affected(previous)  # None: every stream
            for sub in list(self._subs):
                if affected is None or sub.node_id in affected or not sub.offered:
                    sub.offer(netmap, generation, changed_at)
            await asyncio.sleep(min(MAX_REBUILD_REST_S, time.monotonic() - started))

    def _track_ephemeral(self, netmap: NetMap, now: float) -> None:
        """Every offline ephemeral node has a deletion deadline; online ones have none."""
        for node_id in list(self._ephemeral_deadlines):
            if node_id not in netmap.nodes or node_id in netmap.online:
                del self._ephemeral_deadlines[node_id]
        for node in netmap.nodes.values():
            if node.ephemeral and node.id not in netmap.online:
                self._ephemeral_deadlines.setdefault(node.id, now + self.ephemeral_grace_s)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            netmap = self.current
            expiry_at = netmap.next_expiry_at if netmap is not None else None
            edge_at = netmap.next_policy_edge_at if netmap is not None else None
            policy_now = self.policy_now()
            if (
                (expiry_at is not None and now >= expiry_at)
                or (edge_at is not None and policy_now >= edge_at)
                # The wall clock stepped back (NTP, an admin): the edges known are no
                # longer the next ones, so judge the schedules again.
                or (netmap is not None and policy_now < netmap.policy_now)
            ):
                self._mark_changed()
            if self.relays.expire(now):
                log.info("a relay region was not refreshed in time: removed from the relay map")
                self._mark_changed()
            online = self.online()
            due = [
                node_id
                for node_id, at in self._ephemeral_deadlines.items()
                if at <= now and node_id not in online
            ]
            for node_id in due:
                del self._ephemeral_deadlines[node_id]
                try:
                    if await anyio.to_thread.run_sync(self.service.delete_ephemeral, node_id):
                        log.info("deleted ephemeral node %d: offline for its grace period", node_id)
                except Exception:
                    log.exception("could not delete ephemeral node %d", node_id)
            # (or the wall clock stepped back past the last purge)
            if now >= self._purge_at or now < self._purge_at - self.purge_every_s:
                self._purge_at = now + self.purge_every_s
                await self._purge_expired_logins(now)

    async def _purge_expired_logins(self, now: float) -> None:
        try:
            purged = await anyio.to_thread.run_sync(self.service.purge_expired_logins, now)
        except Exception as e:
            log.warning("could not delete expired pending logins: %s", redact_error(e))
            return
        if purged:
            log.info("deleted %d expired pending login(s)", purged)
