"""An adapter from today's MagicSock to the path layer's agreed API (temporary).

The path layer (weftnet.magicsock.conn.MagicSock) is being refactored to this API:

    MagicSock(engine, node_private, spawn); start(); await close()
    set_peer(node: tailcfg.Node, peer, self_endpoints: list[str])
    await relays.update(relay_map)   never raises for a bad region
    await netcheck() -> dict; health() -> list[str]

Until that lands, ``PathLayer`` gives the current class that shape, so the daemon is
written against the final API; when the refactor merges, this module goes away and
the daemon imports MagicSock directly. Nothing here decides paths: ``choose_endpoint``
(the first guess before any pong) moves into the path layer with set_peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from weftnet import controlbox, tailcfg
from weftnet.endpoint import Endpoint, format_endpoint, try_parse_endpoint
from weftnet.magicsock.conn import MagicSock, Relays
from weftnet.node.engine import Engine
from weftnet.relay.upgrade import parse_relay_url
from weftnet.wireguard.device import Peer

log = logging.getLogger("weftd.magicsock")

Spawn = Callable[[str, Callable[[], Awaitable[None]]], None]
NETCHECK_WAIT_S = 2.0  # how long netcheck waits for every STUN server to answer


def choose_endpoint(mine: list[str], theirs: list[str]) -> Endpoint | None:
    """Where to send a peer's packets before path discovery has measured anything: the
    address the server saw (their first endpoint), or a local one when the server saw
    both of us come from the same public address (the same NAT)."""
    if not theirs:
        return None
    their_public = try_parse_endpoint(theirs[0])
    my_public = try_parse_endpoint(mine[0]) if mine else None
    if my_public and their_public and my_public.host == their_public.host:
        for candidate in theirs[1:]:
            if (ep := try_parse_endpoint(candidate)) is not None:
                return ep
    return their_public


class SafeRelays(Relays):
    """Relays whose update skips (and reports) a region it cannot use (defect D1)."""

    unusable: dict[str, str]
    measured: bool

    async def update(self, relay_map: list[tailcfg.RelayRegion]) -> None:
        self.unusable = {}
        good = []
        for region in relay_map:
            try:
                parse_relay_url(region.url)
                controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, region.public_key)
            except ValueError as e:
                log.warning("relay region %s is not usable: %s", region.name, e)
                self.unusable[region.name] = str(e)
                continue
            good.append(region)
        await super().update(good)

    async def measure(self) -> str | None:
        home = await super().measure()
        self.measured = True
        return home


class PathLayer(MagicSock):
    def __init__(self, engine: Engine, node_private: bytes, spawn: Spawn) -> None:
        super().__init__(engine, node_private)
        self.spawn = spawn
        self.relays = SafeRelays(node_private, self._relay_packet, self._peer_gone)
        self.relays.unusable = {}
        self.relays.measured = False
        self._closed = asyncio.Event()

    def start(self) -> None:
        self.spawn("paths", self._supervised_loop)

    async def _supervised_loop(self) -> None:
        tick = asyncio.ensure_future(self._tick_loop())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({tick, closed}, return_when=asyncio.FIRST_COMPLETED)
            if tick.done():
                tick.result()  # its error, for the supervisor
        finally:
            tick.cancel()
            closed.cancel()

    async def close(self) -> None:
        self._closed.set()
        await self.relays.close()

    def set_peer(  # type: ignore[override]
        self, node: tailcfg.Node, peer: Peer, self_endpoints: list[str]
    ) -> None:
        guess = choose_endpoint(self_endpoints, node.endpoints)
        super().set_peer(json.loads(node.model_dump_json()), peer, guess)

    async def netcheck(self) -> dict[str, Any]:
        """Ask every STUN server once more and measure the relays. Earlier answers stay
        until new ones replace them, so the endpoints we publish (and the map stream)
        change only if the network really did (defect D13)."""
        servers = self.stun_servers()
        if servers:
            before = set(self._stun_pending)
            self.send_stun()
            asked = set(self._stun_pending) - before
            deadline = time.monotonic() + NETCHECK_WAIT_S
            while time.monotonic() < deadline and asked & set(self._stun_pending):
                await asyncio.sleep(0.05)
        await self.relays.measure()
        mapped = [format_endpoint(m) for m, _ in self.stun_results.values()]
        return {
            "udp": bool(self.stun_results),
            "public_address": mapped[0] if mapped else None,
            "mapping_varies_by_destination": self.mapping_varies,
            "stun_servers": {
                format_endpoint(s): format_endpoint(m) for s, (m, _) in self.stun_results.items()
            },
            "preferred_relay": self.relays.home,
            "relay_latency_ms": {k: round(v * 1000, 2) for k, v in self.relays.latency.items()},
        }

    def health(self) -> list[str]:
        relays = self.relays
        assert isinstance(relays, SafeRelays)
        out = [f"relay {name} unusable: {why}" for name, why in relays.unusable.items()]
        if relays.measured:
            for name in relays.clients:
                if name not in relays.latency:
                    out.append(f"relay {name} unreachable")
        return out

    def path_of(self, node_id: int) -> tuple[str, str | None, str | None]:
        kind, where, relay = super().path_of(node_id)
        if where is not None:
            with contextlib.suppress(ValueError):  # IPv6 in brackets (D10)
                host, _, port = where.rpartition(":")
                where = format_endpoint((host, int(port)))
        return kind, where, relay
