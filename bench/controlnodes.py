"""bench.controlload's worker: many simulated nodes in one process, one asyncio loop.

Theory of operation
-------------------
A worker drives its share of the nodes through the product's node-side protocol code:
``ControlClient`` (sealed registration, the sealed map stream, frame by frame) and
``MapSession`` (each frame folded into a network map, as weftd does). There is no TUN,
no WireGuard and no disk state: each node's keys live in a ``NodeState`` that is never
saved, and all of a worker's nodes share one ``httpx.AsyncClient`` (one connection per
open stream). The server's key is fetched once and given to every client: the bench
trusts its own loopback server.

The parent drives the worker over a pipe, one command at a time (``Command``):

* ``register``: register every node (at most ``concurrency`` at once), each reporting an
  endpoint in 198.18.0.0/15, then open its map stream; answers when every stream has its
  full map, or at the deadline;
* ``watch``: from now on, note when each stream first receives a frame that shows the
  given ``Mark`` (a port in its packet filter, a peer, a peer's endpoint);
* ``collect``: when each stream saw the mark (CLOCK_MONOTONIC, comparable across the
  processes of one host) and the size of that frame, once all saw it or at the deadline;
* ``stop``: close every stream, answer the byte counts, exit.

Every wait has a deadline; a worker never outlives its parent's pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx
from nacl.public import PrivateKey

from weftnet import controlbox, tailcfg
from weftnet.node.controlclient import ControlClient, ControlError, backoff_delays
from weftnet.node.main import loop_factory
from weftnet.node.mapsession import MapSession
from weftnet.node.mapstream import LOGOUT_KINDS, refusal_kind
from weftnet.node.state import NodeState
from weftnet.wireguard import crypto

CONNECT_TIMEOUT_S = 60.0  # a loaded server accepts late; the bench's deadlines still hold
READ_TIMEOUT_S = 120.0  # longer than the server's keepalive interval
REGISTER_ATTEMPTS = 3  # a registration refused as server_error (busy database) is retried
STREAM_ATTEMPTS = 10  # a map stream refused or broken is reopened, with weftd's backoff


@dataclass(frozen=True)
class Mark:
    """What a stream must show: ``port`` in its packet filter, the peer with node key
    ``node_key`` in its map, or that peer with ``endpoint`` among its endpoints."""

    port: int | None = None
    node_key: str | None = None
    endpoint: str | None = None

    def seen_in(self, resp: tailcfg.MapResponse) -> bool:
        if self.port is not None:
            return resp.packet_filter is not None and any(
                r.ports.first == self.port for rule in resp.packet_filter for r in rule.dst_ports
            )
        peers = [*(resp.peers or ()), *resp.peers_changed]
        return any(
            p.node_key == self.node_key and (self.endpoint is None or self.endpoint in p.endpoints)
            for p in peers
        )


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    server_key: str  # mkey:..., as GET /key offers it
    nodes: list[tuple[int, str]]  # (index, auth key) for each node of this worker
    concurrency: int = 16


@dataclass
class SimNode:
    index: int
    client: ControlClient
    session: MapSession = field(default_factory=MapSession)
    registered_at: float | None = None
    full_bytes: int | None = None  # the first frame of the stream
    delta_bytes: int = 0  # every later frame but keepalives
    deltas: int = 0
    seen: dict[Mark, tuple[float, int]] = field(default_factory=dict)  # when, frame bytes
    error: str | None = None
    got_full: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    def __init__(self, spec: WorkerSpec, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.http = http
        server_key = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, spec.server_key)
        self.nodes = [SimNode(i, self._client(server_key)) for i, _key in spec.nodes]
        self.keys = dict(spec.nodes)
        self.marks: list[Mark] = []
        self.changed = asyncio.Event()  # a stream saw a mark
        self.tasks: list[asyncio.Task[None]] = []

    def _client(self, server_key: bytes) -> ControlClient:
        return memory_client(self.spec.url, server_key, self.http)

    async def register(self, deadline_s: float) -> dict[str, Any]:
        gate = asyncio.Semaphore(self.spec.concurrency)
        for node in self.nodes:
            self.tasks.append(asyncio.create_task(self._run_node(node, gate)))
        deadline_at = time.monotonic() + deadline_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(n.got_full.wait() for n in self.nodes)),
                max(0.0, deadline_at - time.monotonic()),
            )
        times = [n.registered_at for n in self.nodes if n.registered_at is not None]
        return {
            "registered": len(times),
            "first_at": min(times, default=None),
            "last_at": max(times, default=None),
            "streams": sum(n.got_full.is_set() for n in self.nodes),
            "errors": [n.error for n in self.nodes if n.error][:3],
        }

    async def _run_node(self, node: SimNode, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                await self._register(node)
            except ControlError as e:
                node.error = f"register: {e}"
                return
        # As weftd does: a refusal that is not a logout, or a broken stream, is retried
        # with backoff (a busy database answers server_error).
        delays = backoff_delays()
        for _attempt in range(STREAM_ATTEMPTS):
            try:
                kind = await self._follow(node)
            except ControlError as e:
                node.error, kind = f"map stream: {e}", "broken"
            if kind in LOGOUT_KINDS:
                return
            await asyncio.sleep(next(delays))

    async def _register(self, node: SimNode) -> None:
        for _attempt in range(REGISTER_ATTEMPTS):
            resp = await node.client.register(
                auth_key=self.keys[node.index], hostname=f"sim-{node.index}"
            )
            if resp.machine_authorized:
                node.registered_at = time.monotonic()
                return
            if resp.error_kind != tailcfg.ERROR_SERVER:
                break
        raise ControlError(f"not authorized: {resp.error or resp.auth_url}")

    async def _follow(self, node: SimNode) -> str:
        """Follow one map stream until it ends: the refusal's kind, or "ended"."""
        endpoint = f"198.18.{node.index // 250 % 256}.{node.index % 250 + 1}:41641"
        stream = node.client.map_stream([endpoint], f"sim-{node.index}")
        try:
            async for resp in stream:
                if resp.error:
                    node.error = f"refused: {resp.error}"
                    return refusal_kind(resp)
                node.error = None
                if resp.keepalive:
                    continue
                size = node.client.frame_bytes
                node.session.apply(resp)
                if node.full_bytes is None:
                    node.full_bytes = size
                    node.got_full.set()
                else:
                    node.delta_bytes += size
                    node.deltas += 1
                now = time.monotonic()
                for mark in self.marks:
                    if mark not in node.seen and mark.seen_in(resp):
                        node.seen[mark] = (now, size)
                        self.changed.set()
        finally:
            await stream.aclose()
        return "ended"

    async def collect(self, mark: Mark, deadline_s: float) -> dict[str, Any]:
        live = [n for n in self.nodes if n.got_full.is_set()]
        deadline_at = time.monotonic() + deadline_s
        while any(mark not in n.seen for n in live):
            remaining_s = deadline_at - time.monotonic()
            if remaining_s <= 0:
                break
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining_s)
        seen = [n.seen[mark] for n in live if mark in n.seen]
        return {
            "times": [t for t, _size in seen],
            "bytes": [size for _t, size in seen],
            "missing": len(live) - len(seen),
        }

    async def stop(self) -> dict[str, Any]:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        full = [n.full_bytes for n in self.nodes if n.full_bytes is not None]
        return {
            "full_bytes": full,
            "delta_bytes": sum(n.delta_bytes for n in self.nodes),
            "deltas": sum(n.deltas for n in self.nodes),
            "peers": [len(n.session.netmap.peers) for n in self.nodes],
        }


def memory_client(url: str, server_key: bytes, http: httpx.AsyncClient) -> ControlClient:
    """A node's ControlClient with new keys held in memory only (its NodeState is never
    saved), on a shared ``http`` client, trusting ``server_key`` (the bench's own)."""
    state = NodeState(
        directory=None,  # type: ignore[arg-type]  # never saved: keys in memory only
        machine_private=bytes(PrivateKey.generate()),
        node_private=crypto.clamp(bytes(PrivateKey.generate())),
    )
    client = ControlClient(state, url, http=http)
    client.server_key = server_key
    return client


def raise_open_files() -> int:
    """The soft open-file limit raised to the hard one; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _serve(conn: Connection, spec: WorkerSpec) -> None:
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        worker = Worker(spec, http)
        while True:
            try:
                command, arg = await loop.run_in_executor(None, conn.recv)
            except EOFError:  # the parent is gone
                await worker.stop()
                return
            if command == "register":
                conn.send(await worker.register(arg))
                # This process holds thousands of nodes' maps, where a weftd holds one: keep
                # them out of the collector's full passes, a cost no real node has.
                gc.freeze()
            elif command == "watch":
                worker.marks.append(arg)
                conn.send(True)
            elif command == "collect":
                mark, deadline_s = arg
                conn.send(await worker.collect(mark, deadline_s))
            elif command == "stop":
                conn.send(await worker.stop())
                return
            else:
                raise ValueError(f"unknown command {command!r}")


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """A worker process's entry point (multiprocessing)."""
    raise_open_files()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop, as weftd
            runner.run(_serve(conn, spec))
    finally:
        conn.close()
