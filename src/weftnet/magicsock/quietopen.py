"""Quiet open: hole punching between two easy NATs that are bare Linux routers.

Theory of operation. A Linux router that masquerades but has no firewall on its own
input (``nft``: only ``masquerade`` in a postrouting chain) treats an unsolicited UDP
packet to its public address as traffic for itself: conntrack creates an entry for it
(remote ip:port -> router ip:port) and confirms it when the packet is delivered
locally (nothing listens; an ICMP port unreachable goes back). That entry *poisons*
the tuple: when the node behind the router later sends from the same inside port to
that remote, masquerade wants the same public port, finds the reply tuple taken, and
picks a random one instead (nf_nat_used_tuple; RFC 4787 calls the result "address
and port-dependent mapping" for that one destination). So in ordinary hole punching,
A's first ping to B's public ip:port arrives before B's own ping has left (whoever
pings first always wins that race on a fast link), is swallowed by B's router and
poisons the tuple; B's ping then leaves from a new port that A's router has never
sent to, and is swallowed and poisons A's router in turn. Each side now looks like a
hard NAT to the other, every further ping refreshes the poison, and the pair stays on
the relay (the entries are refreshed by every packet, so they never time out).

The fix needs one side's mapping to exist before the other side's first packet
arrives, without a packet of its own reaching the far router. Conntrack refreshes an
entry when a packet for it enters the router (prerouting), even if the router then
drops it for an expired TTL; a packet with TTL 1 from the node (its NAT being the
first hop) thus keeps its own mapping alive without ever leaving its router.

Only one side's mapping is worth keeping: the side whose first ping left before the
other's arrived (call it F) got its own port; the other (S) got a random one. Neither
side can tell which it is (the far router swallows every ping), so the rounds take
turns:

1. Both sides easy (STUN), traffic for the peer, never a direct path, still none after
   STUCK_AFTER_S: the pair assumes poisoned tuples.
2. A round: both go *quiet* toward each other for QUIET_S (longer than Linux's 30 s
   timeout for unreplied UDP), except that this round's *keeper* sends a TTL-1 ping to
   the peer's public endpoint every KEEPALIVE_S: its own mapping stays, every entry the
   other side's packets made expires, and so does the other side's own mapping.
3. Then the *caller* pings again, for KEEPER_WAIT_S: its port is preserved (no poison
   left). If the keeper is F, the ping matches the keeper's live mapping and gets
   through, and the ordinary ping/pong exchange makes the path direct. The keeper stays
   quiet (TTL-1 only) until the caller's ping has reached it, so that its own pings
   cannot poison the caller's router again.
4. Not direct after KEEPER_WAIT_S: the keeper was S. The caller's new mapping has its
   own port, so it is now the F side: the next round starts at once with the roles
   swapped (the caller keeps, the keeper falls silent), and succeeds.

The first round's keeper is the side with the smaller node key, so both agree without
talking; the round's roles alternate after that. At most MAX_ROUNDS rounds, then the
relay.

Nothing here does I/O or reads a clock; weftd drives it::

    qo.update(applies=..., keeper=..., active=..., direct=..., now=now)
    qo.suppressed(now)           -> drop ordinary direct pings to the peer now
    for action in qo.timers(now):
        SendLowTtlPing(ep)       -> a disco ping to ep with IP TTL LOW_TTL
        Resume()                 -> ping the peer's endpoints now
    disco ping arrives direct    -> qo.on_direct_ping(now)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weftnet.endpoint import Endpoint

__all__ = [
    "KEEPALIVE_S",
    "KEEPER_WAIT_S",
    "LOW_TTL",
    "MAX_ROUNDS",
    "QUIET_S",
    "STUCK_AFTER_S",
    "Action",
    "QuietOpen",
    "Resume",
    "SendLowTtlPing",
]

STUCK_AFTER_S = 6.0  # both easy, traffic, no direct path this long: assume poisoned tuples
QUIET_S = 35.0  # longer than Linux's nf_conntrack_udp_timeout (30 s): poison expires
KEEPALIVE_S = 8.0  # the keeper's TTL-1 pings keep its own mapping (30 s) alive
KEEPER_WAIT_S = 6.0  # after QUIET_S the caller pings, the keeper waits, this long
LOW_TTL = 1  # dies at the first router (our NAT) after conntrack has refreshed the entry
MAX_ROUNDS = 4  # quiet rounds (roles alternate) before the pair is left on the relay

# quiet: both silent (the keeper's TTL-1 pings aside); waiting: the keeper, silent,
# waits for the caller's ping; calling: the caller pings.
State = Literal["idle", "quiet", "waiting", "calling"]


@dataclass(frozen=True, slots=True)
class SendLowTtlPing:
    """Send a disco ping to ``endpoint`` with IP TTL LOW_TTL (it never leaves our NAT)."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Resume:
    """The quiet period is over for the caller: ping the peer's endpoints now."""


Action = SendLowTtlPing | Resume


class QuietOpen:
    """The quiet-open retry toward one peer. Not thread-safe; see the module docstring."""

    def __init__(self) -> None:
        self._state: State = "idle"
        self._applies = False
        self._keeper = False
        self._target: Endpoint | None = None
        self._ever_direct = False
        self._stuck_since: float | None = None
        self._until = 0.0  # end of the current state
        self._keepalive_at = 0.0
        self.rounds = 0

    def update(
        self,
        *,
        applies: bool,
        keeper: bool,
        target: Endpoint | None,
        active: bool,
        direct: bool,
        now: float,
    ) -> None:
        """``applies``: both sides' NATs are easy; ``keeper``: our node key is the
        smaller; ``target``: the peer's public endpoint; ``active``: traffic wants the
        path; ``direct``: a direct path is in use."""
        if target != self._target:  # the peer moved: a fresh start
            self._ever_direct, self.rounds, self._state = False, 0, "idle"
        self._applies, self._keeper, self._target = applies, keeper, target
        if direct:
            self._ever_direct = True
            self._state, self._stuck_since = "idle", None
            return
        if self._state != "idle":
            return
        if not (applies and active and target is not None) or self._ever_direct:
            self._stuck_since = None
        elif self._stuck_since is None:
            self._stuck_since = now

    @property
    def keeps(self) -> bool:
        """Whether we are this round's keeper: the smaller key in odd rounds."""
        return self._keeper == (self.rounds % 2 == 1)

    def on_direct_ping(self, now: float) -> None:
        """A disco ping from the peer arrived straight (not through the relay): the hole
        is open, ordinary pings and pongs take over."""
        if self._state != "idle":
            self._state, self._stuck_since = "idle", now

    def suppressed(self, now: float) -> bool:
        """Whether ordinary direct pings to the peer must not be sent now."""
        return self._state in ("quiet", "waiting")

    def _start_round(self, now: float) -> None:
        self.rounds += 1
        self._state, self._until, self._keepalive_at = "quiet", now + QUIET_S, now

    def timers(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if (
            self._state == "idle"
            and self._stuck_since is not None
            and now >= self._stuck_since + STUCK_AFTER_S
            and self.rounds < MAX_ROUNDS
        ):
            self._start_round(now)
        if self._state == "quiet" and now >= self._until:
            if self.keeps:
                self._state, self._until = "waiting", now + KEEPER_WAIT_S
            else:
                self._state, self._until = "calling", now + KEEPER_WAIT_S
                actions.append(Resume())
        if self._state in ("waiting", "calling") and now >= self._until:
            if self.rounds < MAX_ROUNDS:
                self._start_round(now)  # the keeper's port was the random one: swap
            else:
                self._state, self._stuck_since = "idle", now
        if self._state in ("quiet", "waiting") and self.keeps and now >= self._keepalive_at:
            if self._target is not None:
                actions.append(SendLowTtlPing(self._target))
            self._keepalive_at = now + KEEPALIVE_S
        return actions

    def next_timer_at(self, now: float) -> float | None:
        if self._state == "idle":
            if self._stuck_since is None or self.rounds >= MAX_ROUNDS:
                return None
            return max(now, self._stuck_since + STUCK_AFTER_S)
        at = self._until
        if self._state != "calling" and self.keeps:
            at = min(at, self._keepalive_at)
        return max(now, at)

    def status(self) -> dict[str, object]:
        return {
            "state": self._state,
            "role": None if self._state == "idle" else "keeper" if self.keeps else "caller",
            "rounds": self.rounds,
            "applies": self._applies,
        }
