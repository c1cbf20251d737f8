"""Path choice for one peer: which endpoint to send to, and whom to ping when.

Theory of operation (after Tailscale's wgengine/magicsock/endpoint.go; the disco
messages are in weftnet.disco, the ideas of RFC 8445 ICE without its negotiation):

A peer has *candidate endpoints*: the ones the coordination server lists in the map
(``set_endpoints``), the ones the peer sends us in a call-me-maybe through the relay
(``on_call_me_maybe``; each one replaces the last), and the source addresses its pings
arrive from (``on_ping_received``: "peer-reflexive", the address a NAT mapped it to
towards *us*, which may differ from what STUN servers see). Every candidate is pinged
with a disco ping; a pong proves the path works both ways and measures its latency.

- A direct endpoint is *trusted* for TRUST_UDP_ADDR_S after its last pong. The path in
  use (``best_path``) is a trusted endpoint if there is one, else the peer's home relay
  region, else nothing. Direct always beats the relay, whatever the latencies.
- Among trusted endpoints the one with the lowest latency (of its latest pong) wins,
  with hysteresis: the endpoint in use is replaced only by one whose latency is below
  SWITCH_LATENCY_RATIO of its own, or when it stops being trusted.
- While direct, the endpoint in use gets a heartbeat ping every HEARTBEAT_INTERVAL_S
  (three tries per trust window), and the others a ping every UPGRADE_INTERVAL_S, in case
  a better path has opened. While not direct, every candidate is pinged every
  REPROBE_INTERVAL_S and, if there is a relay, a call-me-maybe goes to the peer through
  it every CALL_ME_MAYBE_INTERVAL_S so that it pings us at the same moment: each side's
  outbound ping opens its own NAT for the other side's ping.
- Pings are bounded: at least MIN_PING_SPACING_S apart per endpoint whatever asks for
  them, at most MAX_PINGS_IN_FLIGHT unanswered per endpoint (a ping is given up after
  PING_TIMEOUT_S and a late pong for it ignored), at most MAX_CANDIDATES endpoints.

How weftd drives it (one object per peer, aioquic-style; nothing here does I/O, reads a
clock or draws random numbers)::

    for action in pf.timers(now):        # when now >= pf.next_timer_at(now)
        SendPing(ep)       -> txid = random 12 bytes; send a disco Ping to ep;
                              pf.on_ping_sent(ep, txid, now)
        SendCallMeMaybe()  -> send CallMeMaybe(our endpoints) through the relay
    disco Ping from src    -> answer Pong(txid, src) to src; pf.on_ping_received(src, now)
    disco Pong from src    -> pf.on_pong(pong.txid, src, now)
    disco CallMeMaybe      -> pf.on_call_me_maybe(cmm.endpoints)
    each packet to send    -> pf.best_path(now)

``timers`` returns each ping once: it records the ping as sent when it hands it out, so
a send that fails is retried on the normal schedule, not in a busy loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from weftnet.disco.messages import canonical_endpoint as _canonical_ip_endpoint
from weftnet.endpoint import VIA_PREFIX, Endpoint, split_via, via_endpoint
from weftnet.wireguard.errors import ProtocolError

__all__ = [
    "CALL_ME_MAYBE_INTERVAL_S",
    "HEARTBEAT_INTERVAL_S",
    "MAX_CANDIDATES",
    "MAX_PINGS_IN_FLIGHT",
    "MIN_PING_SPACING_S",
    "PEER_REFLEXIVE_TTL_S",
    "PING_TIMEOUT_S",
    "REPROBE_INTERVAL_S",
    "SWITCH_LATENCY_RATIO",
    "TRUST_UDP_ADDR_S",
    "UPGRADE_INTERVAL_S",
    "Action",
    "EndpointStatus",
    "Path",
    "Pathfinder",
    "SendCallMeMaybe",
    "SendPing",
]

# Tailscale trusts for 6.5 s with 3 s heartbeats; issue 5 wants blocked UDP on the relay
# within 5 s, and the worst case (blocked just after a pong) takes the whole window.
TRUST_UDP_ADDR_S = 4.5  # a direct endpoint is used this long after its last pong
# Three heartbeats per window: one lost pong costs nothing (unless the RTT also grows 1.5 s).
HEARTBEAT_INTERVAL_S = 1.5  # ping the endpoint in use this often
REPROBE_INTERVAL_S = 5.0  # with no trusted endpoint, ping every candidate this often
CALL_ME_MAYBE_INTERVAL_S = 5.0  # with no trusted endpoint, ask the peer (via relay) this often
UPGRADE_INTERVAL_S = 60.0  # while direct, look for a better endpoint this often
PING_TIMEOUT_S = 5.0  # a ping unanswered this long is lost; its late pong is ignored
MIN_PING_SPACING_S = 1.0  # never ping one endpoint more often than this
MAX_PINGS_IN_FLIGHT = 4  # unanswered pings remembered per endpoint
SWITCH_LATENCY_RATIO = 2 / 3  # move off a trusted endpoint only for one this much faster
MAX_CANDIDATES = 64  # endpoints remembered per peer; more are ignored
PEER_REFLEXIVE_TTL_S = 60.0  # forget an address a ping came from after this, unless in use


def canonical_endpoint(ep: tuple[str, int]) -> Endpoint:
    """An ip:port, or a via pseudo-endpoint (a path from an extra birthday-probing
    socket, weftnet.endpoint.via_endpoint), in canonical form; ProtocolError otherwise."""
    if ep[0].startswith(VIA_PREFIX):
        try:
            local, remote = split_via(ep)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        return via_endpoint(local, remote)
    return _canonical_ip_endpoint(ep)


Source = Literal["map", "call-me-maybe", "ping", "wireguard"]
Reason = Literal["discovery", "heartbeat", "upgrade", "call-me-maybe", "reply"]
Path = tuple[Literal["direct"], Endpoint] | tuple[Literal["relay"], str] | tuple[Literal["none"]]


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a disco ping to ``endpoint`` now, then report it with ``on_ping_sent``.

    ``reason`` is for logs: "discovery" (first or periodic probe without a direct path),
    "heartbeat" (the endpoint in use), "upgrade" (looking for a better one while
    direct), "call-me-maybe" or "reply" (the peer asked, or pinged us from there).
    """

    endpoint: Endpoint
    reason: Reason


@dataclass(frozen=True, slots=True)
class SendCallMeMaybe:
    """Send the peer a CallMeMaybe with our own endpoints, through its relay."""


Action = SendPing | SendCallMeMaybe


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One candidate as ``weft status`` shows it."""

    endpoint: Endpoint
    sources: frozenset[str]
    latency_s: float | None  # of its latest pong; None if it never answered
    trusted_until_at: float | None  # None if it never answered


class _Candidate:
    __slots__ = (
        "in_flight",
        "last_ping_at",
        "last_pong_at",
        "latency_s",
        "seen_at",
        "sources",
        "wanted",
    )

    def __init__(self) -> None:
        self.sources: set[Source] = set()
        self.last_ping_at: float | None = None
        self.wanted: Reason | None = None  # a ping was asked for outside the schedule
        self.in_flight: dict[bytes, float] = {}  # txid -> sent at
        self.last_pong_at: float | None = None
        self.latency_s: float | None = None
        self.seen_at = 0.0  # last ping received from it (source "ping")

    def trusted(self, now: float) -> bool:
        return self.last_pong_at is not None and now < self.last_pong_at + TRUST_UDP_ADDR_S


class Pathfinder:
    """The path state of one peer. Not thread-safe; see the module docstring."""

    def __init__(self, relay_region: str | None = None) -> None:
        self._relay = relay_region
        self._candidates: dict[Endpoint, _Candidate] = {}
        self._current: Endpoint | None = None  # the endpoint in use, if it is trusted
        self._call_me_maybe_at: float | None = None  # last one handed out

    # --- inputs -------------------------------------------------------------------

    def set_relay(self, region: str | None) -> None:
        """The peer's home relay region (from the map), or None if it has none."""
        self._relay = region

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """The peer's endpoints from the map; replaces the previous map endpoints.

        Raises ProtocolError (a ValueError) for an endpoint that is not ip:port.
        """
        self._replace_source("map", endpoints)

    def on_call_me_maybe(self, endpoints: Iterable[Endpoint]) -> None:
        """The peer asked us to ping it at ``endpoints`` (replacing its last such list)."""
        for ep in self._replace_source("call-me-maybe", endpoints):
            self._candidates[ep].wanted = "call-me-maybe"

    def on_ping_received(self, src: Endpoint, now: float) -> None:
        """The peer pinged us from ``src``: a candidate too, and pinged back soon."""
        src = canonical_endpoint(src)
        c = self._candidates.get(src)
        if c is None:
            if len(self._candidates) >= MAX_CANDIDATES:
                return
            c = self._candidates[src] = _Candidate()
        c.sources.add("ping")
        c.seen_at = now
        if not c.trusted(now):
            c.wanted = "reply"

    def ping_soon(self) -> None:
        """Ping every candidate as soon as the spacing allows (a quiet period ended)."""
        for c in self._candidates.values():
            c.wanted = c.wanted or "discovery"

    def on_ping_sent(self, endpoint: Endpoint, txid: bytes, now: float) -> None:
        """A ping with ``txid`` went to ``endpoint`` (ignored unless it is a candidate)."""
        c = self._candidates.get(canonical_endpoint(endpoint))
        if c is None:
            return
        if len(c.in_flight) >= MAX_PINGS_IN_FLIGHT:
            del c.in_flight[min(c.in_flight, key=c.in_flight.__getitem__)]
        c.in_flight[txid] = now
        c.last_ping_at = now
        c.wanted = None

    def on_pong(self, txid: bytes, src: Endpoint, now: float) -> float | None:
        """A pong for ``txid`` came from ``src``; its round-trip time, if it counted.

        It counts if it answers a ping we still wait for, and comes from the endpoint
        that ping went to: that proves the path both ways. It may change the path.
        """
        src = canonical_endpoint(src)
        for ep, c in self._candidates.items():
            sent_at = c.in_flight.pop(txid, None)
            if sent_at is None:
                continue
            if ep != src or now >= sent_at + PING_TIMEOUT_S:
                return None
            c.last_pong_at = now
            c.latency_s = now - sent_at
            self._current = self._choose(now)
            return c.latency_s
        return None

    def on_authenticated(self, src: Endpoint, now: float) -> None:
        """An authenticated WireGuard packet arrived straight from ``src``.

        The peer is sending from there (it roamed, or its NAT gave it a new mapping), so
        replies to ``src`` pass its NAT: use it at once, as WireGuard's own roaming does,
        instead of waiting for the old path's trust to run out. It is trusted from now,
        with the old path's latency as its estimate until a pong measures it.
        """
        src = canonical_endpoint(src)
        if src == self._current:
            return
        c = self._candidates.get(src)
        if c is None:
            if len(self._candidates) >= MAX_CANDIDATES:
                return
            c = self._candidates[src] = _Candidate()
        held = self._candidates.get(self._current) if self._current is not None else None
        c.sources.add("wireguard")
        c.seen_at = now
        c.last_pong_at = now
        if c.latency_s is None:
            c.latency_s = held.latency_s if held is not None else None
        if c.latency_s is None:
            c.latency_s = PING_TIMEOUT_S  # unmeasured: any measured path may beat it
        c.wanted = "reply"  # measure it soon
        if held is not None:
            held.last_pong_at = None  # the peer left it; probed again like any candidate
        self._current = src

    # --- timers -------------------------------------------------------------------

    def timers(self, now: float) -> list[Action]:
        """What to send now. Call when ``now >= next_timer_at(now)``; extra calls are fine."""
        self._expire(now)
        self._current = self._choose(now)
        direct = self._current is not None
        actions: list[Action] = []
        for ep, c in self._candidates.items():
            due_at, reason = self._ping_due(ep, c, self._current)
            if due_at <= now:
                actions.append(SendPing(ep, reason))
                c.last_ping_at = now
                c.wanted = None
        cmm_at = self._call_me_maybe_due_at(direct)
        if cmm_at is not None and cmm_at <= now:
            actions.append(SendCallMeMaybe())
            self._call_me_maybe_at = now
        return actions

    def next_timer_at(self, now: float) -> float | None:
        """When ``timers`` next has something to do (or the path changes); None: never."""
        current = self._choose(now)
        direct = current is not None
        deadlines: list[float] = []
        for ep, c in self._candidates.items():
            deadlines.append(self._ping_due(ep, c, current)[0])
        cmm_at = self._call_me_maybe_due_at(direct)
        if cmm_at is not None:
            deadlines.append(cmm_at)
        if current is not None:
            last_pong_at = self._candidates[current].last_pong_at
            assert last_pong_at is not None  # trusted endpoints have answered
            deadlines.append(last_pong_at + TRUST_UDP_ADDR_S)
        return max(min(deadlines), now) if deadlines else None

    # --- outputs ------------------------------------------------------------------

    def best_path(self, now: float) -> Path:
        """Where the peer's packets go now: a trusted endpoint, else its relay."""
        current = self._choose(now)
        if current is not None:
            return ("direct", current)
        if self._relay is not None:
            return ("relay", self._relay)
        return ("none",)

    def endpoint_status(self) -> list[EndpointStatus]:
        """Every candidate, in the order they were learned."""
        return [
            EndpointStatus(
                ep,
                frozenset(c.sources),
                c.latency_s,
                None if c.last_pong_at is None else c.last_pong_at + TRUST_UDP_ADDR_S,
            )
            for ep, c in self._candidates.items()
        ]

    # --- the rules ----------------------------------------------------------------

    def _choose(self, now: float) -> Endpoint | None:
        """The endpoint to use at ``now``: lowest latency among the trusted, with hysteresis."""
        best: Endpoint | None = None
        best_latency = 0.0
        for ep, c in self._candidates.items():
            if (
                c.trusted(now)
                and c.latency_s is not None
                and (best is None or c.latency_s < best_latency)
            ):
                best, best_latency = ep, c.latency_s
        current = self._current
        if best is None or current is None or current == best:
            return best
        held = self._candidates.get(current)
        if held is None or not held.trusted(now) or held.latency_s is None:
            return best
        return best if best_latency < held.latency_s * SWITCH_LATENCY_RATIO else current

    def _ping_due(
        self, ep: Endpoint, c: _Candidate, current: Endpoint | None
    ) -> tuple[float, Reason]:
        """When ``ep`` should next be pinged, and why (``current``: the endpoint in use)."""
        due_at: float
        reason: Reason
        if c.last_ping_at is None:
            due_at, reason = float("-inf"), c.wanted or "discovery"
        elif c.wanted is not None:
            due_at, reason = c.last_ping_at + MIN_PING_SPACING_S, c.wanted
        elif ep == current:
            due_at, reason = c.last_ping_at + HEARTBEAT_INTERVAL_S, "heartbeat"
        elif current is not None:
            due_at, reason = c.last_ping_at + UPGRADE_INTERVAL_S, "upgrade"
        else:
            due_at, reason = c.last_ping_at + REPROBE_INTERVAL_S, "discovery"
        if len(c.in_flight) >= MAX_PINGS_IN_FLIGHT:
            # No room to remember another txid until the oldest ping times out.
            due_at = max(due_at, min(c.in_flight.values()) + PING_TIMEOUT_S)
        return due_at, reason

    def _call_me_maybe_due_at(self, direct: bool) -> float | None:
        if direct or self._relay is None:
            return None
        if self._call_me_maybe_at is None:
            return float("-inf")
        return self._call_me_maybe_at + CALL_ME_MAYBE_INTERVAL_S

    def _replace_source(self, source: Source, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
        """Make ``endpoints`` exactly the candidates from ``source``; the ones kept."""
        wanted = list(dict.fromkeys(canonical_endpoint(ep) for ep in endpoints))
        listed = set(wanted)
        for ep, c in self._candidates.items():
            if ep not in listed:
                c.sources.discard(source)
        self._drop_orphans()  # first, to make room for the new ones
        kept: list[Endpoint] = []
        for ep in wanted:
            if ep not in self._candidates:
                if len(self._candidates) >= MAX_CANDIDATES:
                    continue
                self._candidates[ep] = _Candidate()
            self._candidates[ep].sources.add(source)
            kept.append(ep)
        return kept

    def _expire(self, now: float) -> None:
        for c in self._candidates.values():
            for txid in [t for t, at in c.in_flight.items() if now >= at + PING_TIMEOUT_S]:
                del c.in_flight[txid]
            if now >= c.seen_at + PEER_REFLEXIVE_TTL_S:
                c.sources.discard("ping")
                c.sources.discard("wireguard")
        self._drop_orphans(now)

    def _drop_orphans(self, now: float | None = None) -> None:
        """Forget candidates nothing vouches for any more, except the one in use."""
        for ep in [ep for ep, c in self._candidates.items() if not c.sources]:
            c = self._candidates[ep]
            in_use = ep == self._current and (now is None or c.trusted(now))
            if not in_use:
                del self._candidates[ep]
