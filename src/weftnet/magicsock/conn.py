"""Path picking: relays, disco, and one path finder per peer (after Tailscale's magicsock).

Every peer is reached either directly (an ip:port found by disco pings) or through its
home relay. Until a direct path answers, packets go through the relay, so the first
packet never waits for NAT traversal; once pongs come back, the path finder moves the
peer to the direct endpoint, and back to the relay when pongs stop (see
weftnet.magicsock.pathfinder).

MagicSock is the data plane's ``Bind`` in a tailnet (weftnet.node.datapath; Tailscale's
magicsock is wireguard-go's conn.Bind the same way): it alone writes peers' endpoints
(``_choose``; a relay path is the pseudo-endpoint ``("relay:<region>", 0)``), the data
plane hands it datagrams for relays, disco and STUN packets, and "peer P authenticated
from S". Disco packets share the WireGuard UDP socket (told apart by their magic) and
also travel through relays (ping via relay is how a peer learns to call us back).

One loop drives every timer: it sleeps until the earliest of the path finders'
``next_timer_at``, the next STUN refresh and the next relay re-probe, and is woken early
whenever an input changes them (a pong, a new peer, new relays). An error for one peer
is logged with its traceback and that peer is left alone for a while; the loop goes on.

Peers are input from other members of the tailnet, so nothing they send is trusted: a
malformed or low-order disco key leaves the peer without disco (reported by
``health()``), unusable or surplus advertised endpoints are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from weftnet import controlbox, disco, stun, tailcfg
from weftnet.asyncwait import wait_within
from weftnet.disco import CallMeMaybe, Packet, Ping, Pong
from weftnet.endpoint import (
    RELAY_PREFIX,
    Endpoint,
    format_endpoint,
    is_usable_peer_address,
    split_via,
    try_parse_endpoint,
)
from weftnet.magicsock.pathfinder import Path, Pathfinder, SendCallMeMaybe, SendPing
from weftnet.magicsock.relays import Relays
from weftnet.magicsock.traversal import Traversal
from weftnet.node.engine import Engine
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Peer
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.handshake import State as HandshakeState

log = logging.getLogger("weftd.magicsock")
# Our Binding requests are padded with this SOFTWARE text to 56 bytes: STUN servers
# (ours included) answer only requests at least as long as the answer, which is 52
# bytes for an IPv6 mapped address, so they cannot be used to amplify traffic.
STUN_SOFTWARE = "weftnet path discovery"

STUN_INTERVAL_S = 20.0  # re-learn our public mapping this often (NATs forget)
STUN_RETRY_S = 2.0  # ask again this soon while no STUN server has answered
HOME_REPROBE_S = 60.0  # re-measure relay latencies this often
PEER_GONE_RETRY_S = 1.0  # retry a handshake the relay could not deliver this soon
PEER_ERROR_RETRY_S = 5.0  # a peer whose path finding raised is left alone this long
MIN_WAIT_S = 0.005  # the loop never spins faster than this, whatever a deadline says
MAX_WAIT_S = 30.0  # and wakes at least this often
NETCHECK_WAIT_S = 2.0  # how long netcheck waits for STUN answers
RELAY_PONG_SRC = Endpoint("0.0.0.0", 0)  # a pong sent through a relay has no address

Spawn = Callable[[str, Callable[[], Awaitable[None]]], None]


def first_guess(mine: list[str], theirs: list[str]) -> Endpoint | None:
    """Where to send a peer's packets before path discovery has measured anything, from
    both nodes' map endpoints (first entry: the address the server saw, the rest: local
    addresses). The server-seen one, or a local one when the server saw both of us come
    from the same public address (the same NAT). Unusable addresses are skipped."""
    their = [ep for text in theirs[: tailcfg.MAX_ENDPOINTS] if (ep := try_parse_endpoint(text))]
    if not their:
        return None
    my_public = try_parse_endpoint(mine[0]) if mine else None
    if my_public is not None and my_public.host == their[0].host:
        for ep in their[1:]:
            if is_usable_peer_address(ep):
                return ep
    return their[0] if is_usable_peer_address(their[0]) else None


@dataclass
class PeerPaths:
    node_id: int
    name: str
    node_key: bytes
    disco_key: bytes | None
    home_relay: str | None
    pf: Pathfinder
    peer: Peer
    path: Path = ("none",)
    guess: Endpoint | None = None  # the map's endpoint guess, used with no relay
    problem: str | None = None  # why the peer has no disco (for health)
    error: str | None = None  # the last exception in its path finding (for health)
    retry_at: float = float("-inf")  # after an exception: left alone until then
    endpoints: list[Endpoint] = field(default_factory=list)  # usable ones from the map


class MagicSock:
    """The tailnet's path layer: the data plane's Bind, disco, STUN and relays."""

    def __init__(
        self,
        engine: Engine,
        node_private: bytes,
        spawn: Spawn | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.engine = engine
        self._spawn = spawn or self._spawn_task
        self._tasks: list[asyncio.Task[None]] = []
        self.disco_private = os.urandom(32)
        self.disco_public = disco.public_key(self.disco_private)
        self.relays = Relays(
            node_private,
            self._relay_packet,
            self._peer_gone,
            self._rearm,
            spawn=spawn,
            tls_context=tls_context,
            on_batch=self._relay_batch,
        )
        self.peers: dict[int, PeerPaths] = {}
        self.path_changes: dict[str, int] = {}  # best-path changes, by the new path's kind
        self._by_disco: dict[bytes, PeerPaths] = {}
        self._by_node_key: dict[bytes, PeerPaths] = {}
        self.local_endpoints: list[Endpoint] = []
        self.stun_results: dict[Endpoint, tuple[Endpoint, float]] = {}  # server: mapped, RTT
        self._stun_pending: dict[bytes, tuple[Endpoint, float]] = {}
        self._stun_answered: set[Endpoint] = set()  # servers that answered since send_stun
        self._last_stun = float("-inf")
        self._last_probe = float("-inf")
        self.published_endpoints: list[Endpoint] = []
        self.portmapped: Endpoint | None = None  # the gateway's mapping (weftnet.portmap)
        self._ping_waiters: dict[bytes, tuple[asyncio.Future[tuple[str, str, float]], float]] = {}
        self.endpoints_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._closed = False
        self._probe: asyncio.Task[str | None] | None = None
        self.traversal = Traversal(self)  # birthday probing, quiet open
        engine.set_bind(self)

    @property
    def disco_key_text(self) -> str:
        return controlbox.key_to_text(tailcfg.DISCO_KEY_PREFIX, self.disco_public)

    def start(self) -> None:
        self._spawn("paths", self._run)

    def _spawn_task(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await factory()

        self._tasks.append(asyncio.create_task(run(), name=name))

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        for task in [*self._tasks, self._probe]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()
        self.traversal.close()
        await self.relays.close()
        self.engine.set_bind(None)

    def _rearm(self) -> None:
        """Something changed a deadline: the loop recomputes its sleep."""
        self._wake.set()

    # -- the map ----------------------------------------------------------------------

    def set_peer(self, node: tailcfg.Node, peer: Peer, self_endpoints: list[str]) -> None:
        """Add or update a peer from the map (``self_endpoints``: our own map entry's).

        The path layer alone sets ``peer.endpoint``: first the guess from the map, then
        whatever path discovery finds."""
        pp = self.peers.get(node.id)
        dk, problem = _disco_key(node.disco_key)
        if problem is not None and (pp is None or pp.problem != problem):
            log.warning("peer %s: %s; reached without disco", node.name, problem)
        if pp is None or pp.peer is not peer:
            if pp is not None:
                self.remove_peer(node.id)
            pp = PeerPaths(node.id, node.name, peer.public_key, None, None, Pathfinder(), peer)
            self.peers[node.id] = pp
            self._by_node_key[peer.public_key] = pp
        pp.name = node.given_name or node.name
        pp.problem = problem
        if pp.disco_key != dk:
            if pp.disco_key is not None:
                self._by_disco.pop(pp.disco_key, None)
            pp.disco_key = dk
        if dk is not None:
            self._by_disco[dk] = pp
        pp.home_relay = node.home_relay
        pp.pf.set_relay(pp.home_relay or self.relays.home)
        pp.guess = first_guess(self_endpoints, node.endpoints)
        eps = [
            ep
            for text in node.endpoints[: tailcfg.MAX_ENDPOINTS]
            if (ep := try_parse_endpoint(text)) is not None and is_usable_peer_address(ep)
        ]
        pp.pf.set_endpoints(eps)
        pp.endpoints = eps
        self._choose(pp, time.monotonic())
        self._rearm()

    def remove_peer(self, node_id: int) -> None:
        pp = self.peers.pop(node_id, None)
        self.traversal.remove_peer(node_id)
        if pp is None:
            return
        if self._by_node_key.get(pp.node_key) is pp:
            del self._by_node_key[pp.node_key]
        if pp.disco_key is not None and self._by_disco.get(pp.disco_key) is pp:
            del self._by_disco[pp.disco_key]

    # -- the Bind: what the data plane hands us ---------------------------------------

    def send_to_pseudo(self, peer_key: bytes, ep: Endpoint, data: bytes) -> None:
        if ep.is_via:
            self.traversal.send_via(ep, data)
            return
        self.relays.send(ep[0][len(RELAY_PREFIX) :], peer_key, data)

    def send_to_pseudo_batch(self, peer_key: bytes, ep: Endpoint, data: bytes, seg: int) -> None:
        if ep.is_via:
            self.traversal.send_via_batch(ep, data, seg)
            return
        self.relays.send_batch(ep[0][len(RELAY_PREFIX) :], peer_key, data, seg)

    def receive_other(self, data: bytes, src: Endpoint) -> bool:
        try:
            if disco.is_disco(data):
                self._disco(data, src)
            elif stun.is_stun(data):
                self._stun_response(data)
            else:
                return False
        except Exception:  # one bad datagram never stops the reader's batch
            log.exception("disco/STUN datagram from %s", format_endpoint(src))
        return True

    def authenticated(self, peer: Peer, src: Endpoint) -> None:
        """WireGuard from a new direct source: the peer moved; follow it."""
        if src[0].startswith(RELAY_PREFIX):
            return  # the relay path is chosen by the path finder, not by arrivals
        pp = self._by_node_key.get(peer.public_key)
        if pp is None:
            return
        now = time.monotonic()
        pp.pf.on_authenticated(src, now)
        self._choose(pp, now)
        self._rearm()

    # -- sending ----------------------------------------------------------------------

    def _send_disco(self, pp: PeerPaths, msg: disco.Message, dst: Endpoint | None) -> None:
        if pp.disco_key is None:
            return
        raw = disco.seal(msg, self.disco_private, pp.disco_key, os.urandom(24))
        if dst is None:
            self.relays.send(pp.home_relay, pp.node_key, raw)
        elif dst.is_via:
            self.traversal.send_via(dst, raw)
        else:
            self.engine.dp.send_raw(raw, dst)

    def _ping(self, pp: PeerPaths, dst: Endpoint | None, now: float) -> bytes:
        """A disco ping with a fresh txid to ``dst`` (None: through the relay)."""
        txid = os.urandom(disco.TXID_SIZE)
        self._send_disco(pp, Ping(txid, self.engine.device.identity.public_key), dst)
        if dst is not None:
            pp.pf.on_ping_sent(dst, txid, now)
        return txid

    # -- receiving --------------------------------------------------------------------

    def _relay_packet(self, region: str, src_key: bytes, data: bytes) -> None:
        try:
            if disco.is_disco(data):
                self._disco(data, None)
            else:
                self.engine.dp.receive_from_relay(data, src_key, region)
        except Exception:
            log.exception("datagram from relay region %s", region)

    def _relay_batch(self, region: str, src_key: bytes, data: bytes, seg: int) -> None:
        """A batch through the relay: WireGuard transport messages from the data plane
        (disco always travels alone), handed to the data plane whole."""
        try:
            self.engine.dp.receive_from_relay_batch(data, seg, src_key, region)
        except Exception:
            log.exception("datagrams from relay region %s", region)

    def network_changed(self, local_endpoints: list[Endpoint]) -> None:
        """Our addresses or routes changed (netlink): learn the new public address, tell
        the server and ping every peer at once, so their NATs open to our new source."""
        if local_endpoints == self.local_endpoints:
            return
        log.info(
            "network changed: local endpoints %s",
            ", ".join(format_endpoint(ep) for ep in local_endpoints),
        )
        self.local_endpoints = local_endpoints
        self.stun_results.clear()
        self.send_stun()
        self.endpoints_changed.set()
        now = time.monotonic()
        for pp in list(self.peers.values()):
            try:
                path = pp.pf.best_path(now)
                if path[0] == "direct":
                    self._ping(pp, path[1], now)
                # WireGuard itself speaks from the new source too: the peer follows at once.
                self.engine.dp.send_transmits(self.engine.device.send_keepalive(pp.peer, now))
            except Exception as e:
                self._peer_failed(pp, e, now)
        self._rearm()

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

    # -- STUN: our public address, from the WireGuard socket itself -------------------

    def stun_servers(self) -> list[Endpoint]:
        out = []
        for region in self.relays.regions.values():
            if not region.stun_port or region.name in self.relays.problems:
                continue
            with contextlib.suppress(ValueError):
                host = urlsplit(region.url).hostname
                if host:
                    out.append(Endpoint(str(ipaddress.ip_address(host)), region.stun_port))
        return out

    def send_stun(self) -> None:
        now = time.monotonic()
        self._stun_answered.clear()
        for server in self.stun_servers():
            txid = os.urandom(stun.TXID_SIZE)
            self._stun_pending[txid] = (server, now)
            self.engine.dp.send_raw(stun.binding_request(txid, STUN_SOFTWARE), server)
        while len(self._stun_pending) > 64:  # answers that never came
            del self._stun_pending[next(iter(self._stun_pending))]
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
        self._stun_answered.add(server)
        self._publish_endpoints()
        self._rearm()

    @property
    def mapping_varies(self) -> bool | None:
        """True behind an endpoint-dependent ("hard") NAT; None with under two answers."""
        seen = {m for m, _ in self.stun_results.values()}
        if len(self.stun_results) < 2:
            return None
        return len(seen) > 1

    def endpoints(self) -> list[Endpoint]:
        """What peers should try: the port mapping, STUN-mapped addresses, local ones."""
        mapped = [m for m, _ in self.stun_results.values()]
        portmapped = [self.portmapped] if self.portmapped is not None else []
        return list(dict.fromkeys([*portmapped, *mapped, *self.local_endpoints]))

    def set_portmapped(self, ep: Endpoint | None) -> None:
        """The port mapper's external ip:port (None: no mapping): an endpoint of its own
        kind, first in the list (a hard NAT behaves like a public address through it)."""
        self.portmapped = ep
        self._publish_endpoints()
        self._rearm()

    def _publish_endpoints(self) -> None:
        eps = self.endpoints()
        if eps != self.published_endpoints:
            self.published_endpoints = eps
            self.endpoints_changed.set()

    async def netcheck(self) -> dict[str, Any]:
        """Ask every STUN server again and re-measure the relays (`weft netcheck`).

        The earlier answers stay until new ones replace them, so the published endpoints
        (and the map stream) change only if the public mapping really changed."""
        servers = self.stun_servers()
        if not servers:
            return {"ok": False, "error": "no STUN servers known yet: is this node up?"}
        self.send_stun()
        deadline = time.monotonic() + NETCHECK_WAIT_S
        while time.monotonic() < deadline and not self._stun_answered >= set(servers):
            await asyncio.sleep(0.02)
        await self.relays.measure()
        fresh = {s: r for s, r in self.stun_results.items() if s in self._stun_answered}
        mapped = [format_endpoint(m) for m, _ in fresh.values()]
        seen = {m for m, _ in fresh.values()}
        return {
            "ok": True,
            "result": {
                "udp": bool(fresh),
                "public_address": mapped[0] if mapped else None,
                "mapping_varies_by_destination": len(seen) > 1 if len(fresh) > 1 else None,
                "nat": None if len(fresh) < 2 else "hard" if len(seen) > 1 else "easy",
                "stun_servers": {
                    format_endpoint(s): format_endpoint(m) for s, (m, _) in fresh.items()
                },
                "preferred_relay": self.relays.home,
                "relay_latency_ms": {k: round(v * 1000, 2) for k, v in self.relays.latency.items()},
            },
        }

    # -- disco ------------------------------------------------------------------------

    def disco_from(self, data: bytes, src: Endpoint) -> None:
        """A disco packet that arrived on one of the Bind's own sockets (``src`` via)."""
        self._disco(data, src)

    def _disco(self, data: bytes, src: Endpoint | None) -> None:
        try:
            packet = Packet.unpack(data)
            pp = self._by_disco.get(packet.sender)
            if pp is None:
                return  # not a peer of ours: not even opened
            msg = disco.open_packet(packet, self.disco_private)
        except ProtocolError:
            self.engine.dp.counters.drop_malformed += 1
            return
        now = time.monotonic()
        if isinstance(msg, Ping):
            if msg.node_key != pp.node_key:
                return
            if src is not None:
                seen_as = split_via(src)[1] if src.is_via else src
                self._send_disco(pp, Pong(msg.txid, seen_as), src)
                pp.pf.on_ping_received(src, now)
                self.traversal.on_direct_ping(pp, now)
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
                    else ("direct", format_endpoint(src))
                )
                waiter[0].set_result((*via, now - waiter[1]))
            if src is not None:
                pp.pf.on_pong(msg.txid, src, now)
                self._choose(pp, now)
        elif isinstance(msg, CallMeMaybe):
            usable = [ep for ep in msg.endpoints if is_usable_peer_address(Endpoint(*ep))]
            pp.pf.on_call_me_maybe(usable)
        self._rearm()

    # -- timers -----------------------------------------------------------------------

    async def _run(self) -> None:
        """The one timer loop (returns only once closed: not to be restarted then)."""
        while not self._closed:
            self._wake.clear()
            now = time.monotonic()
            next_at = self._on_timer(now)
            wait = min(max(next_at - time.monotonic(), MIN_WAIT_S), MAX_WAIT_S)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that arrives as the event fires, and the loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _on_timer(self, now: float) -> float:
        """Run what is due at ``now``; the next deadline."""
        deadlines = [now + MAX_WAIT_S]
        if self.relays.clients:
            if now >= self._last_probe + HOME_REPROBE_S and (
                self._probe is None or self._probe.done()
            ):
                self._last_probe = now
                self._probe = asyncio.create_task(self.relays.measure())
            deadlines.append(self._last_probe + HOME_REPROBE_S)
        if self.stun_servers():
            wait = STUN_INTERVAL_S if self.stun_results else STUN_RETRY_S
            if now >= self._last_stun + wait:
                self.send_stun()
            deadlines.append(self._last_stun + wait)
        for pp in list(self.peers.values()):
            if now < pp.retry_at:
                deadlines.append(pp.retry_at)
                continue
            try:
                at = self._peer_timers(pp, now)
            except Exception as e:
                self._peer_failed(pp, e, now)
                deadlines.append(pp.retry_at)
                continue
            if at is not None:
                deadlines.append(at)
        return min(deadlines)

    def _peer_timers(self, pp: PeerPaths, now: float) -> float | None:
        quiet, traversal_at = self.traversal.before_timers(pp, now)
        for action in pp.pf.timers(now):
            if isinstance(action, SendPing):
                if not quiet:  # quiet open: no direct ping may reach the peer's router
                    self._ping(pp, action.endpoint, now)
            elif isinstance(action, SendCallMeMaybe):
                self._send_disco(pp, CallMeMaybe(tuple(self.endpoints())), None)
        if pp.home_relay is None:
            pp.pf.set_relay(self.relays.home)
        self._choose(pp, now)
        pp.error = None
        at = pp.pf.next_timer_at(now)
        return traversal_at if at is None else at if traversal_at is None else min(at, traversal_at)

    def _peer_failed(self, pp: PeerPaths, e: Exception, now: float) -> None:
        log.error(
            "peer %s: path finding failed; retrying in %.0f s",
            pp.name,
            PEER_ERROR_RETRY_S,
            exc_info=e,
        )
        pp.error = f"{type(e).__name__}: {e}"
        pp.retry_at = now + PEER_ERROR_RETRY_S

    def _choose(self, pp: PeerPaths, now: float) -> None:
        """Point the peer's endpoint at its best path: the one writer of peer.endpoint."""
        path = pp.pf.best_path(now)
        if path[0] == "direct":
            ep: Endpoint | None = path[1]
        elif path[0] == "relay":
            ep = Endpoint(RELAY_PREFIX + path[1], 0)
        else:
            ep = pp.guess
        if path != pp.path:
            log.info("peer %s: path %s", pp.name, _path_text(path))
            pp.path = path
            self.path_changes[path[0]] = self.path_changes.get(path[0], 0) + 1
        if ep is not None and pp.peer.endpoint != ep:
            pp.peer.endpoint = ep

    # -- for `weft ping`, `weft status`, health ---------------------------------------

    async def ping(self, node_id: int, timeout_s: float) -> tuple[str, str, float] | None:
        """A disco ping over the relay and every candidate endpoint at once, each with
        its own txid (a path finder counts a pong only from where its txid went): the
        first pong's (path kind, where, seconds), or None on timeout."""
        pp = self.peers.get(node_id)
        if pp is None or pp.disco_key is None:
            return None
        now = time.monotonic()
        fut: asyncio.Future[tuple[str, str, float]] = asyncio.get_running_loop().create_future()
        txids = [self._ping(pp, None, now)]
        txids += [self._ping(pp, s.endpoint, now) for s in pp.pf.endpoint_status()]
        for txid in txids:
            self._ping_waiters[txid] = (fut, now)
        try:
            return await wait_within(fut, timeout_s)
        except TimeoutError:
            return None
        finally:
            for txid in txids:
                self._ping_waiters.pop(txid, None)

    def path_of(self, node_id: int) -> tuple[str, str | None, str | None]:
        """(path kind, endpoint text, relay region) for `weft status`."""
        pp = self.peers.get(node_id)
        if pp is None:
            return "none", None, None
        path = pp.pf.best_path(time.monotonic())
        if path[0] == "direct":
            return "direct", format_endpoint(path[1]), None
        if path[0] == "relay":
            return "relay", None, path[1]
        return "none", None, None

    def traversal_of(self, node_id: int) -> dict[str, object] | None:
        """Birthday probing and quiet open toward the peer, for `weft status --json`."""
        return self.traversal.status(node_id)

    def health(self) -> list[str]:
        """Current problems in words; empty when healthy."""
        out = self.relays.health()
        for pp in sorted(self.peers.values(), key=lambda p: p.node_id):
            if pp.problem is not None:
                out.append(f"peer {pp.name}: {pp.problem}")
            if pp.error is not None:
                out.append(f"peer {pp.name}: path finding failed ({pp.error})")
        return out


def _disco_key(text: str | None) -> tuple[bytes | None, str | None]:
    """A peer's disco key from the map, and why it is not used (None: fine or absent)."""
    if not text:
        return None, None
    try:
        key = controlbox.key_from_text(tailcfg.DISCO_KEY_PREFIX, text)
    except ValueError:
        return None, "malformed disco key"
    if crypto.is_low_order(key):
        return None, "bad disco key (low order)"
    return key, None


def _path_text(path: Path) -> str:
    if path[0] == "direct":
        return f"direct {format_endpoint(path[1])}"
    if path[0] == "relay":
        return f"relay {path[1]}"
    return "none"
