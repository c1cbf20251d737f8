"""A node's relays: one connection per region of the relay map, the home one the fastest.

Theory of operation: the relay map lists relays; those with the same ``mesh`` serve one
region together (docs/relay-protocol.md, "Mesh"), any other is a region of its own. The
node keeps one RelayClient per region, connected to one relay of it: the relays of a
region are tried in an order of its own (rendezvous hashing of the node key and the
relay name: the nodes of a tailnet spread over a region's relays, and each node's order
stays put as relays come and go), and the client moves to the next one whenever its
relay drops or fails, and at once when its relay leaves the map. The mesh carries a
packet to whichever relay of the region its destination is on, so a peer need only
know its region (``Node.home_relay``), which a relay going away does not change.

The home region is the one whose relay answers PING fastest (``measure``); packets for
a peer go through the peer's home region, else ours.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from weftnet import controlbox, tailcfg
from weftnet.relay.client import RelayClient, RelayTarget
from weftnet.relay.upgrade import parse_relay_url
from weftnet.wireguard import crypto

log = logging.getLogger("weftd.magicsock")

PING_TIMEOUT_S = 3.0  # a relay that does not answer a ping in this time is unusable
Spawn = Callable[[str, Callable[[], Awaitable[None]]], None]


@dataclass
class Relays:
    """One RelayClient per region of the relay map; the home one is the fastest.

    ``update`` never raises: a relay it cannot use (a malformed key or URL) is left out
    and described in ``problems``; the others work. https:// relays are verified with
    ``tls_context`` (default: the system's CAs)."""

    node_private: bytes
    on_packet: Any
    on_peer_gone: Any = None
    on_change: Callable[[], None] = lambda: None
    spawn: Spawn | None = None  # the supervisor, for each client's connection loop
    tls_context: ssl.SSLContext | None = None  # for https:// relays
    on_batch: Any = None  # (region, src key, datagrams, seg): a batch, GRO layout
    regions: dict[str, tailcfg.RelayRegion] = field(default_factory=dict)  # by relay name
    clients: dict[str, RelayClient] = field(default_factory=dict)  # by region
    latency: dict[str, float] = field(default_factory=dict)  # by region
    problems: dict[str, str] = field(default_factory=dict)  # relay name -> why not used
    unreachable: set[str] = field(default_factory=set)  # regions the last measure missed
    home: str | None = None

    async def update(self, relay_map: list[tailcfg.RelayRegion]) -> None:
        self.regions = {r.name: r for r in relay_map}
        groups: dict[str, list[RelayTarget]] = {}
        before, self.problems = self.problems, {}
        for entry in relay_map:
            problem = region_problem(entry)
            if problem is None:
                key = controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, entry.public_key)
                groups.setdefault(entry.region, []).append(RelayTarget(entry.name, entry.url, key))
            else:
                self.problems[entry.name] = problem
        for region in [r for r in self.clients if r not in groups]:
            client = self.clients.pop(region)
            try:
                await client.close()
            except Exception:  # a client that fails to close is gone all the same
                log.exception("closing relay client %s", region)
            self.latency.pop(region, None)
        self.unreachable &= set(groups)
        for region, targets in groups.items():
            try:
                self._use(region, self._ordered(targets))
            except Exception as e:  # never out of here: the map loop calls this
                log.exception("relay region %s", region)
                self.problems[region] = f"relay region {region}: not used ({e})"
        for name, problem in self.problems.items():
            if before.get(name) != problem:  # said once, not on every map
                log.warning("%s", problem)
        if self.home not in self.clients:
            self.home = next(iter(self.clients), None)
        self.on_change()

    def _ordered(self, targets: list[RelayTarget]) -> list[RelayTarget]:
        """The region's relays in this node's order (rendezvous hashing)."""
        me = crypto.public_key(self.node_private)
        return sorted(targets, key=lambda t: hashlib.blake2s(me + t.name.encode()).digest())

    def _use(self, region: str, targets: list[RelayTarget]) -> None:
        client = self.clients.get(region)
        if client is not None:
            client.set_targets(targets)  # stays on its relay if that one is still listed
            return
        client = RelayClient(
            targets[0].url,
            self.node_private,
            self._deliver(region),
            server_key=targets[0].server_key,
            on_peer_gone=self.on_peer_gone,
            on_batch=self._deliver_batch(region) if self.on_batch is not None else None,
            tls_context=self.tls_context,
        )
        client.set_targets(targets)
        self.clients[region] = client
        client.start(self.spawn, f"relay {region}")

    def _deliver(self, region: str) -> Callable[[bytes, bytes], None]:
        def deliver(src: bytes, data: bytes) -> None:
            self.on_packet(region, src, data)

        return deliver

    def _deliver_batch(self, region: str) -> Callable[[bytes, bytes, int], None]:
        def deliver(src: bytes, data: bytes, seg: int) -> None:
            self.on_batch(region, src, data, seg)

        return deliver

    def servers(self) -> dict[str, str]:
        """Region -> the relay of it this node uses now."""
        return {region: c.target.name for region, c in self.clients.items()}

    async def measure(self) -> str | None:
        """Ping every region; the lowest latency becomes home. Returns the home region."""

        async def one(name: str, c: RelayClient) -> None:
            try:
                if await c.wait_connected(PING_TIMEOUT_S):
                    self.latency[name] = await c.ping(PING_TIMEOUT_S)
                    self.unreachable.discard(name)
                    return
            except (TimeoutError, OSError, ConnectionError) as e:
                log.debug("relay %s ping failed: %s", name, e)
            self.latency.pop(name, None)
            self.unreachable.add(name)

        await asyncio.gather(*(one(n, c) for n, c in self.clients.items()))
        if self.latency:
            best = min(self.latency, key=lambda n: self.latency[n])
            if best != self.home:
                self.home = best
            for name, c in self.clients.items():
                c.note_preferred(name == self.home)
        self.on_change()
        return self.home

    def send(self, region: str | None, dst_key: bytes, data: bytes) -> bool:
        client = self.clients.get(region or "") or self.clients.get(self.home or "")
        return client.send(dst_key, data) if client is not None else False

    def send_batch(self, region: str | None, dst_key: bytes, data: bytes, seg: int) -> int:
        """Datagrams back to back, each ``seg`` bytes but the last; how many were queued."""
        client = self.clients.get(region or "") or self.clients.get(self.home or "")
        return client.send_batch(dst_key, data, seg) if client is not None else 0

    def health(self) -> list[str]:
        out = [self.problems[name] for name in sorted(self.problems)]
        out += [f"relay region {name}: unreachable" for name in sorted(self.unreachable)]
        return out

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()
        self.clients.clear()


def region_problem(region: tailcfg.RelayRegion) -> str | None:
    """Why a node cannot use this relay, in words; None if it can."""
    name = region.name
    try:
        parse_relay_url(region.url)
    except ValueError as e:
        return f"relay region {name}: {e}; not used"
    try:
        controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, region.public_key)
    except ValueError:
        return f"relay region {name}: malformed relay key; not used"
    return None
