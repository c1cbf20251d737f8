"""Path picking: relays, disco, and one path finder per peer (after Tailscale's magicsock).

Every peer is reached either directly (an ip:port found by disco pings) or through its
home relay. Until a direct path answers, packets go through the relay, so the first
packet never waits for NAT traversal; once pongs come back, the path finder moves the
peer to the direct endpoint, and back to the relay when pongs stop (see
weftnet.magicsock.pathfinder). The choice is written into the WireGuard peer's endpoint, where
the data plane reads it: a relay path is the pseudo-endpoint ("relay:<region>", 0).

Disco packets share the WireGuard UDP socket (told apart by their magic) and also
travel through relays (ping via relay is how a peer learns to call us back).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from weftnet import controlbox, disco, stun, tailcfg
from weftnet.disco import CallMeMaybe, Packet, Ping, Pong
from weftnet.magicsock.pathfinder import Pathfinder, SendCallMeMaybe, SendPing
from weftnet.node.datapath import RELAY_PREFIX, DataPlane
from weftnet.node.engine import Engine
from weftnet.relay.client import RelayClient
from weftnet.wireguard.device import Endpoint, Peer
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.handshake import State as HandshakeState

log = logging.getLogger("weftd.magicsock")

TICK_S = 0.25  # how often path finders' timers run and endpoints are re-chosen
STUN_INTERVAL_S = 20.0  # re-learn our public mapping this often (NATs forget)
STUN_RETRY_S = 2.0  # ask again this soon while no STUN server has answered
HOME_REPROBE_S = 60.0  # re-measure relay latencies this often
PING_TIMEOUT_S = 3.0  # a relay that does not answer a ping in this time is unusable
PEER_GONE_RETRY_S = 1.0  # retry a handshake the relay could not deliver this soon
RELAY_PONG_SRC = ("0.0.0.0", 0)  # a pong sent through a relay has no address to report


@dataclass
class PeerPaths:
    node_id: int
    node_key: bytes
    disco_key: bytes | None
    home_relay: str | None
    pf: Pathfinder
    peer: Peer
    path: tuple[Any, ...] = ("none",)
    guess: Endpoint | None = None  # the map's endpoint guess, used with no relay


@dataclass
class Relays:
    """One RelayClient per region of the relay map; the home one is the fastest."""

    node_private: bytes
    on_packet: Any
    on_peer_gone: Any = None
    regions: dict[str, tailcfg.RelayRegion] = field(default_factory=dict)
    clients: dict[str, RelayClient] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    home: str | None = None

    async def update(self, relay_map: list[tailcfg.RelayRegion]) -> None:
        wanted = {r.name: r for r in relay_map}
        for name in list(self.clients):
            if name not in wanted or wanted[name] != self.regions.get(name):
                await self.clients.pop(name).close()
                self.latency.pop(name, None)
        self.regions = wanted
        for name, region in wanted.items():
            if name in self.clients:
                continue
            try:
                key = controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, region.public_key)
            except ValueError:
                log.warning("relay region %s has a malformed key; not used", name)
                continue
            client = RelayClient(
                region.url,
                self.node_private,
                self._deliver(name),
                server_key=key,
                on_peer_gone=self.on_peer_gone,
            )
            client.start()
            self.clients[name] = client
        if self.home not in self.clients:
            self.home = next(iter(self.clients), None)

    def _deliver(self, region: str) -> Callable[[bytes, bytes], None]:
        def deliver(src: bytes, data: bytes) -> None:
            self.on_packet(region, src, data)

        return deliver

    async def measure(self) -> str | None:
        """Ping every region; the lowest latency becomes home. Returns the home region."""

        async def one(name: str, c: RelayClient) -> None:
            try:
                if await c.wait_connected(PING_TIMEOUT_S):
                    self.latency[name] = await c.ping(PING_TIMEOUT_S)
            except (TimeoutError, OSError, ConnectionError) as e:
                log.debug("relay %s ping failed: %s", name, e)
                self.latency.pop(name, None)

        await asyncio.gather(*(one(n, c) for n, c in self.clients.items()))
        if self.latency:
            best = min(self.latency, key=lambda n: self.latency[n])
            if best != self.home:
                self.home = best
            for name, c in self.clients.items():
                c.note_preferred(name == self.home)
        return self.home

    def send(self, region: str | None, dst_key: bytes, data: bytes) -> bool:
        client = self.clients.get(region or "") or self.clients.get(self.home or "")
        return client.send(dst_key, data) if client is not None else False

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()
        self.clients.clear()


class MagicSock:
    def __init__(self, engine: Engine, node_private: bytes) -> None:
        self.engine = engine
        self.dp: DataPlane = engine.dp
        self.disco_private = os.urandom(32)
        self.disco_public = disco.public_key(self.disco_private)
        self.relays = Relays(node_private, self._relay_packet, self._peer_gone)
        self.peers: dict[int, PeerPaths] = {}
        self._by_disco: dict[bytes, PeerPaths] = {}
        self._by_node_key: dict[bytes, PeerPaths] = {}
        self.local_endpoints: list[Endpoint] = []
        self.stun_results: dict[Endpoint, tuple[Endpoint, float]] = {}  # server: mapped, RTT
        self._stun_pending: dict[bytes, tuple[Endpoint, float]] = {}
        self._last_stun = float("-inf")
        self.published_endpoints: list[Endpoint] = []
        self._ping_waiters: dict[bytes, tuple[asyncio.Future[tuple[str, str, float]], float]] = {}
        self.endpoints_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[str | None] | None = None
        self.dp.roaming = False
        self.dp.relay_send = self._relay_send
        self.dp.on_disco = self._udp_disco
        self.dp.on_authenticated = self._authenticated

    @property
    def disco_key_text(self) -> str:
        return controlbox.key_to_text(tailcfg.DISCO_KEY_PREFIX, self.disco_public)

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.relays.close()

    # -- the map ----------------------------------------------------------------------

    def set_peer(self, node: dict[str, Any], peer: Peer, guess: Endpoint | None) -> None:
        """Add or update a peer from the map."""
        pp = self.peers.get(node["id"])
        dk = None
        if node.get("disco_key"):
            with contextlib.suppress(ValueError):
                dk = controlbox.key_from_text(tailcfg.DISCO_KEY_PREFIX, node["disco_key"])
        if pp is None or pp.peer is not peer:
            pp = PeerPaths(node["id"], peer.public_key, dk, None, Pathfinder(), peer)
            self.peers[node["id"]] = pp
            self._by_node_key[peer.public_key] = pp
        if pp.disco_key != dk:
            if pp.disco_key is not None:
                self._by_disco.pop(pp.disco_key, None)
            pp.disco_key = dk
        if dk is not None:
            self._by_disco[dk] = pp
        pp.home_relay = node.get("home_relay")
        pp.pf.set_relay(pp.home_relay or self.relays.home)
        pp.guess = guess
        eps = []
        for text in node.get("endpoints") or []:
            ep = _parse(text)
            if ep is not None:
                eps.append(ep)
        pp.pf.set_endpoints(eps)
        self._choose(pp, time.monotonic())

    def remove_peer(self, node_id: int) -> None:
        pp = self.peers.pop(node_id, None)
        if pp is None:
            return
        self._by_node_key.pop(pp.node_key, None)
        if pp.disco_key is not None:
            self._by_disco.pop(pp.disco_key, None)

    # -- sending ----------------------------------------------------------------------

    def _relay_send(self, peer: Peer, region: str, data: bytes) -> None:
        self.relays.send(region, peer.public_key, data)

    def _send_disco(self, pp: PeerPaths, msg: disco.Message, dst: Endpoint | None) -> None:
        if pp.disco_key is None:
            return
        raw = disco.seal(msg, self.disco_private, pp.disco_key, os.urandom(24))
        if dst is None:
            self.relays.send(pp.home_relay, pp.node_key, raw)
            return
        self.dp.send_raw(raw, dst)

    # -- receiving --------------------------------------------------------------------

    def _relay_packet(self, region: str, src_key: bytes, data: bytes) -> None:
        if disco.is_disco(data):
            self._disco(data, None)
        else:
            self.dp.receive_from_relay(data, src_key, region)

    def _authenticated(self, peer: Peer, src: Endpoint) -> None:
        """WireGuard data from a new direct source: the peer moved; follow it."""
        pp = self._by_node_key.get(peer.public_key)
        if pp is None:
            return
        now = time.monotonic()
        pp.pf.on_authenticated(src, now)
        self._choose(pp, now)

    def network_changed(self, local_endpoints: list[Endpoint]) -> None:
        """Our addresses or routes changed (netlink): learn the new public address, tell
        the server and ping every peer at once, so their NATs open to our new source."""
        if local_endpoints == self.local_endpoints:
            return
        log.info("network changed: local endpoints %s", local_endpoints)
        self.local_endpoints = local_endpoints
        self.stun_results.clear()
        self.send_stun()
        self.endpoints_changed.set()
        me = self.engine.device.identity.public_key
        now = time.monotonic()
        for pp in self.peers.values():
            path = pp.pf.best_path(now)
            if path[0] == "direct":
                txid = os.urandom(12)
                self._send_disco(pp, Ping(txid, me), path[1])
                pp.pf.on_ping_sent(path[1], txid, now)
            # WireGuard itself speaks from the new source too: the peer follows at once.
            self.dp.send_transmits(self.engine.device.send_keepalive(pp.peer, now))

    def _peer_gone(self, node_key: bytes, reason: int) -> None:
        """The relay had nowhere to deliver to this peer (it has not connected yet): a
        handshake we sent there is lost, so try again in a second, not after 5 s."""
        pp = self._by_node_key.get(node_key)
        if pp is None or pp.peer.current is not None:
            return
        if pp.peer.handshake.state is HandshakeState.INITIATION_CREATED:
            soon = time.monotonic() + PEER_GONE_RETRY_S
            at = pp.peer.retransmit_handshake_at
            if at is None or at > soon:
                pp.peer.retransmit_handshake_at = soon
                self.engine.rearm()

    def _udp_disco(self, data: bytes, src: Endpoint | None) -> None:
        if disco.is_disco(data):
            self._disco(data, src)
        elif src is not None and stun.is_stun(data):
            self._stun_response(data)

    # -- STUN: our public address, from the WireGuard socket itself -------------------

    def stun_servers(self) -> list[Endpoint]:
        out = []
        for region in self.relays.regions.values():
            if not region.stun_port:
                continue
            host = urlsplit(region.url).hostname
            if host:
                with contextlib.suppress(ValueError):
                    out.append((str(ipaddress.ip_address(host)), region.stun_port))
        return out

    def send_stun(self) -> None:
        now = time.monotonic()
        for server in self.stun_servers():
            txid = os.urandom(12)
            self._stun_pending[txid] = (server, now)
            self.dp.send_raw(stun.binding_request(txid, "weftnet"), server)
        self._last_stun = now

    def _stun_response(self, data: bytes) -> None:
        try:
            txid, mapped = stun.parse_response(data)
        except ProtocolError:
            return
        pending = self._stun_pending.pop(txid, None)
        if pending is None:
            return
        server, sent_at = pending
        self.stun_results[server] = (mapped, time.monotonic() - sent_at)
        self._publish_endpoints()

    @property
    def mapping_varies(self) -> bool | None:
        """True behind an endpoint-dependent ("hard") NAT; None with under two answers."""
        seen = {m for m, _ in self.stun_results.values()}
        if len(self.stun_results) < 2:
            return None
        return len(seen) > 1

    def endpoints(self) -> list[Endpoint]:
        """What peers should try: STUN-mapped addresses, then local ones."""
        mapped = [m for m, _ in self.stun_results.values()]
        return list(dict.fromkeys([*mapped, *self.local_endpoints]))

    def _publish_endpoints(self) -> None:
        eps = self.endpoints()
        if eps != self.published_endpoints:
            self.published_endpoints = eps
            self.endpoints_changed.set()

    def _disco(self, data: bytes, src: Endpoint | None) -> None:
        try:
            packet = Packet.unpack(data)
            pp = self._by_disco.get(packet.sender)
            if pp is None:
                return  # not a peer of ours: not even opened
            msg = disco.open_packet(packet, self.disco_private)
        except ProtocolError:
            self.dp.counters.drop_malformed += 1
            return
        now = time.monotonic()
        if isinstance(msg, Ping):
            if msg.node_key != pp.node_key:
                return
            if src is not None:
                self._send_disco(pp, Pong(msg.txid, src), src)
                pp.pf.on_ping_received(src, now)
            else:
                # Through the relay: answer there (no address to report), and tell the
                # peer where to find us directly.
                self._send_disco(pp, Pong(msg.txid, RELAY_PONG_SRC), None)
                self._send_disco(pp, CallMeMaybe(tuple(self.endpoints())), None)
        elif isinstance(msg, Pong):
            waiter = self._ping_waiters.pop(msg.txid, None)
            if waiter is not None and not waiter[0].done():
                via: tuple[str, str] = (
                    ("relay", pp.home_relay or self.relays.home or "?")
                    if src is None
                    else ("direct", f"{src[0]}:{src[1]}")
                )
                waiter[0].set_result((*via, now - waiter[1]))
            if src is not None:
                pp.pf.on_pong(msg.txid, src, now)
                self._choose(pp, now)
        elif isinstance(msg, CallMeMaybe):
            pp.pf.on_call_me_maybe(msg.endpoints)

    # -- timers -----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        last_probe = float("-inf")
        while True:
            now = time.monotonic()
            if now - last_probe > HOME_REPROBE_S and self.relays.clients:
                last_probe = now
                self._probe = asyncio.create_task(self.relays.measure())
            wait = STUN_INTERVAL_S if self.stun_results else STUN_RETRY_S
            if now - self._last_stun > wait and self.stun_servers():
                self.send_stun()
            for pp in list(self.peers.values()):
                for action in pp.pf.timers(now):
                    if isinstance(action, SendPing):
                        txid = os.urandom(12)
                        self._send_disco(pp, Ping(txid, self.engine.device.identity.public_key),
                                         action.endpoint)  # fmt: skip
                        pp.pf.on_ping_sent(action.endpoint, txid, now)
                    elif isinstance(action, SendCallMeMaybe):
                        self._send_disco(pp, CallMeMaybe(tuple(self.endpoints())), None)
                if pp.home_relay is None:
                    pp.pf.set_relay(self.relays.home)
                self._choose(pp, now)
            await asyncio.sleep(TICK_S)

    def _choose(self, pp: PeerPaths, now: float) -> None:
        path = pp.pf.best_path(now)
        if path[0] == "direct":
            ep: Endpoint | None = path[1]
        elif path[0] == "relay":
            ep = (RELAY_PREFIX + path[1], 0)
        else:
            ep = pp.guess
        if path != pp.path:
            log.info("peer %d: path %s", pp.node_id, path)
            pp.path = path
        if ep is not None and pp.peer.endpoint != ep:
            pp.peer.endpoint = ep

    async def ping(self, node_id: int, timeout_s: float) -> tuple[str, str, float] | None:
        """A disco ping over the relay and every candidate endpoint at once: the first
        pong's (path kind, where, seconds), or None on timeout."""
        pp = self.peers.get(node_id)
        if pp is None or pp.disco_key is None:
            return None
        txid = os.urandom(12)
        now = time.monotonic()
        fut: asyncio.Future[tuple[str, str, float]] = asyncio.get_running_loop().create_future()
        self._ping_waiters[txid] = (fut, now)
        me = self.engine.device.identity.public_key
        self._send_disco(pp, Ping(txid, me), None)
        for status in pp.pf.endpoint_status():
            self._send_disco(pp, Ping(txid, me), status.endpoint)
            pp.pf.on_ping_sent(status.endpoint, txid, now)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._ping_waiters.pop(txid, None)

    def path_of(self, node_id: int) -> tuple[str, str | None, str | None]:
        """(path kind, endpoint text, relay region) for `weft status`."""
        pp = self.peers.get(node_id)
        if pp is None:
            return "none", None, None
        path = pp.pf.best_path(time.monotonic())
        if path[0] == "direct":
            return "direct", f"{path[1][0]}:{path[1][1]}", None
        if path[0] == "relay":
            return "relay", None, path[1]
        return "none", None, None


def _parse(text: str) -> Endpoint | None:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        return disco.canonical_endpoint((host, int(port)))
    except (ValueError, ProtocolError):
        return None
