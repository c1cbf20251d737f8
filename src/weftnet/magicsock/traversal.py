"""Hard-NAT traversal for MagicSock: drives birthday probing and quiet open per peer.

The decisions are in pure modules (weftnet.magicsock.birthday, .quietopen); this is
their I/O glue, kept out of conn.py: it reads our NAT kind (STUN) and the peer's (its
reported endpoints), notices whether traffic wants the path (the WireGuard peer's byte
counters moved within ACTIVE_WINDOW_S), owns the extra sockets (portpool.PortPool)
and sends the probes through MagicSock's disco sender.

A path found from an extra socket is the pseudo-endpoint ``via:<local port>/<ip>``,
port: the path finder pings, trusts and chooses it like any other, and the data plane
sends the peer's WireGuard packets to it through the Bind (``send_via``), so the socket
whose NAT mapping the peer can reach carries the traffic. Nothing can carry a hard
NAT's mapping over to the main socket: the NAT made it for that socket alone.
"""

from __future__ import annotations

import logging
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from weftnet import disco, stun
from weftnet.disco import Ping
from weftnet.endpoint import Endpoint, split_via, via_endpoint
from weftnet.magicsock import birthday, quietopen
from weftnet.magicsock.birthday import (
    BirthdayProber,
    EndAttempt,
    NatKind,
    ProbeFromNewPort,
    ProbeToPort,
)
from weftnet.magicsock.portpool import PortPool
from weftnet.magicsock.quietopen import QuietOpen, Resume, SendLowTtlPing

if TYPE_CHECKING:
    from weftnet.magicsock.conn import MagicSock, PeerPaths

log = logging.getLogger("weftd.magicsock")

ACTIVE_WINDOW_S = 10.0  # traffic wants the path if the peer's byte counters moved this recently
# ... by more than this between two looks (POLL_S or less apart): more than the two
# 32-byte keepalives a new session or a network change sends.
ACTIVE_MIN_BYTES = 96
POLL_S = 1.0  # while a technique may start, look at the counters this often
IPV6_UNICAST_HOPS_DEFAULT = -1  # the kernel's "use the route's hop limit"


@dataclass
class PeerTraversal:
    bd: BirthdayProber
    qo: QuietOpen = field(default_factory=QuietOpen)
    ports: set[int] = field(default_factory=set)  # extra sockets opened for this peer
    disco_key: bytes | None = None  # a restarted peer (new disco key) starts over
    seen_bytes: int = 0
    active_at: float = float("-inf")


class Traversal:
    """Birthday probing and quiet open for every peer of one MagicSock."""

    def __init__(self, ms: MagicSock) -> None:
        self._ms = ms
        self._random = random.SystemRandom()
        self.pool = PortPool(self._datagram)
        self.peers: dict[int, PeerTraversal] = {}
        self.probe_packets = 0  # birthday probes sent, all peers

    @property
    def nat_kind(self) -> NatKind:
        varies = self._ms.mapping_varies
        return "unknown" if varies is None else "hard" if varies else "easy"

    def close(self) -> None:
        self.pool.close_all()

    def remove_peer(self, node_id: int) -> None:
        pt = self.peers.pop(node_id, None)
        if pt is not None:
            for port in pt.ports:
                self.pool.close(port)

    def _state(self, pp: PeerPaths) -> PeerTraversal:
        pt = self.peers.get(pp.node_id)
        if pt is None or pt.disco_key != pp.disco_key:
            if pt is not None:
                self.remove_peer(pp.node_id)
            pt = PeerTraversal(
                BirthdayProber(self._random.randrange),
                disco_key=pp.disco_key,
                seen_bytes=pp.peer.rx_bytes + pp.peer.tx_bytes,  # what came before is no traffic
            )
            self.peers[pp.node_id] = pt
        return pt

    # -- driven from MagicSock's timer loop -------------------------------------------

    def before_timers(self, pp: PeerPaths, now: float) -> tuple[bool, float | None]:
        """Run what is due for ``pp``; (ordinary direct pings suppressed now, deadline)."""
        pt = self._state(pp)
        total = pp.peer.rx_bytes + pp.peer.tx_bytes
        if total - pt.seen_bytes > ACTIVE_MIN_BYTES:
            pt.seen_bytes, pt.active_at = total, now
        elif now >= pt.active_at + ACTIVE_WINDOW_S:
            pt.seen_bytes = total  # a trickle (keepalives) never adds up to traffic
        active = now < pt.active_at + ACTIVE_WINDOW_S
        direct = pp.pf.best_path(now)[0] == "direct"
        mine, eps = self.nat_kind, pp.endpoints
        theirs = birthday.nat_kind_of_endpoints(eps)
        role = birthday.role_for(mine, theirs)
        pt.bd.update(
            role=role, target=birthday.target_for(role, eps), active=active, direct=direct,
            now=now,
        )  # fmt: skip
        pt.qo.update(
            applies=mine == theirs == "easy",
            keeper=self._ms.engine.device.identity.public_key < pp.node_key,
            target=eps[0] if eps else None,
            active=active,
            direct=direct,
            now=now,
        )
        for b in pt.bd.timers(now):
            self._birthday_action(pp, pt, b, now)
        rounds = pt.qo.rounds
        for q in pt.qo.timers(now):
            if isinstance(q, SendLowTtlPing):
                self._send_low_ttl_ping(pp, q.endpoint)
            elif isinstance(q, Resume):
                pp.pf.ping_soon()
        if pt.qo.rounds != rounds:
            log.info(
                "peer %s: no direct path between two easy NATs; quiet open round %d (%s)",
                pp.name, pt.qo.rounds, pt.qo.status()["role"],
            )  # fmt: skip
        if not pt.bd.running and pt.ports:
            self._close_unused(pp, pt)
        deadlines = [
            t for t in (pt.bd.next_timer_at(now), pt.qo.next_timer_at(now)) if t is not None
        ]
        if not direct and (role is not None or mine == theirs == "easy"):
            deadlines.append(now + POLL_S)  # notice traffic starting
        return pt.qo.suppressed(now), min(deadlines) if deadlines else None

    def on_direct_ping(self, pp: PeerPaths, now: float) -> None:
        self._state(pp).qo.on_direct_ping(now)

    def status(self, node_id: int) -> dict[str, object] | None:
        pt = self.peers.get(node_id)
        if pt is None:
            return None
        return {
            "birthday": pt.bd.status(),
            "quiet_open": pt.qo.status(),
            "extra_ports": len(pt.ports),
        }

    # -- sending --------------------------------------------------------------------

    def send_via(self, ep: Endpoint, data: bytes) -> None:
        """A datagram for the pseudo-endpoint ``ep``, out of the extra socket it names."""
        port, remote = split_via(ep)
        self.pool.sendto(port, data, remote)

    def send_via_batch(self, ep: Endpoint, data: bytes, seg: int) -> None:
        """Datagrams back to back (each ``seg`` bytes but the last) for ``ep``, in one send."""
        port, remote = split_via(ep)
        self.pool.promote(port)
        self.pool.sendto_batch(port, data, seg, remote)

    def _birthday_action(
        self,
        pp: PeerPaths,
        pt: PeerTraversal,
        action: ProbeFromNewPort | ProbeToPort | EndAttempt,
        now: float,
    ) -> None:
        if isinstance(action, ProbeFromNewPort):
            port = self.pool.open()
            if port is None:
                return
            pt.ports.add(port)
            self._ms._ping(pp, via_endpoint(port, action.endpoint), now)
            self.probe_packets += 1
        elif isinstance(action, ProbeToPort):
            self._ms._ping(pp, action.endpoint, now)
            self.probe_packets += 1
        else:
            log.info(
                "peer %s: birthday attempt %d ended (%d probes), path %s",
                pp.name, pt.bd.attempts, pt.bd.packets_sent, pp.pf.best_path(now)[0],
            )  # fmt: skip

    def _close_unused(self, pp: PeerPaths, pt: PeerTraversal) -> None:
        """Close the extra sockets no candidate path of the peer uses."""
        used = {split_via(s.endpoint)[0] for s in pp.pf.endpoint_status() if s.endpoint.is_via}
        for port in pt.ports - used:
            self.pool.close(port)
        pt.ports &= used

    def _send_low_ttl_ping(self, pp: PeerPaths, dst: Endpoint) -> None:
        """A disco ping with a TTL that ends at our own NAT (quietopen): conntrack there
        refreshes our mapping, and the packet never reaches the peer's router."""
        if pp.disco_key is None:
            return
        ms = self._ms
        raw = disco.seal(
            Ping(self._random.randbytes(disco.TXID_SIZE), ms.engine.device.identity.public_key),
            ms.disco_private,
            pp.disco_key,
            self._random.randbytes(24),
        )
        sock = ms.engine.dp.sock
        v6 = sock.family == socket.AF_INET6
        try:
            old_ttl = sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, quietopen.LOW_TTL)
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, quietopen.LOW_TTL)
            try:
                ms.engine.dp.send_raw(raw, dst)
            finally:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, old_ttl)
                if v6:
                    sock.setsockopt(
                        socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, IPV6_UNICAST_HOPS_DEFAULT
                    )
        except OSError as e:
            log.debug("low-TTL ping to %s failed: %s", dst, e)

    # -- receiving ------------------------------------------------------------------

    def _datagram(self, port: int, data: bytes, seg: int, src: Endpoint) -> None:
        """A datagram on an extra socket: disco, or the peer's WireGuard; or a GRO read
        of several (only WireGuard data comes in runs of equal datagrams)."""
        via = via_endpoint(port, src)
        try:
            if seg < len(data):
                self._ms.engine.dp.receive_from_pseudo(data, via, seg)
            elif disco.is_disco(data):
                self._ms.disco_from(data, via)
            elif not stun.is_stun(data):
                self.pool.promote(port)  # WireGuard on it: it is a path now
                self._ms.engine.dp.receive_from_pseudo(data, via)
        except Exception:  # one bad datagram never stops the reader
            log.exception("datagram on extra port %d from %s", port, src)
