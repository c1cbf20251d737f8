"""Birthday probing: a direct path between a node behind a hard NAT and one behind an easy NAT.

Theory of operation (after the "birthday paradox" section of Tailscale's "How NAT
traversal works", which describes the technique but does not ship it):

A *hard* NAT (endpoint-dependent mapping; netcheck sees different mapped ports from two
STUN servers) gives each destination its own public port, so the port a STUN server saw
is useless to a peer. An *easy* NAT (endpoint-independent mapping) shows one port to
everyone, but its filter only lets in packets from ip:ports it has sent to. Plain hole
punching between the two fails: the easy side cannot guess the port the hard NAT picked
for it. Birthday probing makes many guesses on both sides at once:

- the hard side opens HARD_SIDE_PORTS extra UDP sockets and sends one disco ping from
  each to the easy side's reported public endpoint: the hard NAT makes that many
  mappings, at ports unknown to anyone;
- the easy side sends EASY_SIDE_PROBES disco pings from its one socket to random
  distinct ports on the hard side's reported public IP: each opens its filter for
  replies from that ip:port.

If one of the easy side's ports is one of the hard NAT's new mappings, a ping gets
through (whichever arrives second finds the way open) and the ordinary disco ping/pong
exchange verifies the path (disco is authenticated: a stray answer is never adopted).
With n mappings among R = 64512 possible ports (1024..65535) and m guesses,
P(hit) = 1 - (1 - n/R)^m ~ 1 - exp(-n*m/R): with n = 450 and m = 500, 97 %.

A role (from both sides' NAT kinds) must hold ROLE_SETTLE_S before the first attempt.
Budgets: at most HARD_SIDE_PORTS + EASY_SIDE_PROBES = 950 probe packets per attempt for
the pair, at most PROBE_RATE_PPS a second from each side, an attempt only while there
is traffic for the peer (``active``) and no direct path, ATTEMPT_WINDOW_S to find a hit,
then ``backoff_after``: FIRST_RETRY_S before the second attempt (two chances within
10 s), BACKOFF_S doubling after that, and at most MAX_ATTEMPTS. The easy side
probes only the IP the peer reported, the hard side only the endpoint the peer reported.
Two hard NATs never probe: there both sides' ports are unknown and the chance per
attempt is about n*m/R^2, under 1 %.

How weftd drives it (one per peer; nothing here does I/O, reads a clock or draws
random numbers: ``randrange`` is injected)::

    prober.update(role=..., target=..., active=..., direct=..., now=now)
    for action in prober.timers(now):      # when now >= prober.next_timer_at(now)
        ProbeFromNewPort(dst) -> open an extra socket, send a disco ping from it to dst
        ProbeToPort(dst)      -> send a disco ping from the main socket to dst
        EndAttempt()          -> close the extra sockets that found nothing
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from weftnet.endpoint import Endpoint

__all__ = [
    "ATTEMPT_WINDOW_S",
    "BACKOFF_S",
    "EASY_SIDE_PROBES",
    "FIRST_RETRY_S",
    "HARD_SIDE_PORTS",
    "MAX_ATTEMPTS",
    "MAX_BACKOFF_S",
    "MIN_PORT",
    "PORT_RANGE",
    "PROBE_RATE_PPS",
    "ROLE_SETTLE_S",
    "Action",
    "BirthdayProber",
    "EndAttempt",
    "NatKind",
    "ProbeFromNewPort",
    "ProbeToPort",
    "Role",
    "backoff_after",
    "hit_probability",
    "nat_kind_of_endpoints",
    "role_for",
]

NatKind = Literal["easy", "hard", "unknown"]
Role = Literal["hard-side", "easy-side"]

# 450 x 500 guesses over 64512 ports: 1 - exp(-3.49) = 97 % per attempt; 950 packets.
HARD_SIDE_PORTS = 450  # extra sockets (and pings) the hard side opens per attempt
EASY_SIDE_PROBES = 500  # random destination ports the easy side pings per attempt
PROBE_RATE_PPS = 500.0  # probe packets a second from one side (a burst of ~1 s)
ATTEMPT_WINDOW_S = 4.0  # an attempt waits this long for a hit (the burst takes ~1 s)
# The second attempt follows the first this soon, so a 3 % miss gets its second chance
# within 10 s (two attempts: 99.9 %); after that BACKOFF_S, doubling.
FIRST_RETRY_S = 0.5
BACKOFF_S = 30.0  # wait this long after the second failed attempt, doubling each time
MAX_BACKOFF_S = 240.0  # the wait never grows past this
MAX_ATTEMPTS = 4  # then stop until the peer's endpoints or NAT kinds change
# A node publishes its first STUN answer before the second arrives, so for a moment a
# hard peer looks easy: a role must hold this long before an attempt starts.
ROLE_SETTLE_S = 2.0
MIN_PORT = 1024  # NATs map unprivileged sources to 1024..65535 (Linux, RFC 4787 REQ-3)
PORT_RANGE = 65536 - MIN_PORT  # 64512 ports a hard NAT may pick from


def backoff_after(attempt: int) -> float:
    """The wait after failed attempt number ``attempt`` (1-based) before the next."""
    if attempt <= 1:
        return FIRST_RETRY_S
    return min(BACKOFF_S * 2 ** (attempt - 2), MAX_BACKOFF_S)


def hit_probability(ports: int, probes: int, port_range: int = PORT_RANGE) -> float:
    """The chance that ``probes`` distinct random guesses hit one of ``ports`` random ports."""
    miss = 1.0
    for i in range(min(probes, port_range)):
        miss *= max(0.0, 1 - ports / (port_range - i))
    return 1 - miss


def nat_kind_of_endpoints(endpoints: Iterable[Endpoint]) -> NatKind:
    """A peer's NAT kind from the endpoints it reports: the STUN-mapped ones come first,
    one per STUN server that answered, so two ports on one IP mean "mapping varies by
    destination" (hard). One port per IP is easy (or no NAT); no endpoint: unknown."""
    ports: dict[str, set[int]] = {}
    for ep in endpoints:
        ports.setdefault(ep.host, set()).add(ep.port)
    if not ports:
        return "unknown"
    return "hard" if any(len(p) > 1 for p in ports.values()) else "easy"


def role_for(mine: NatKind, theirs: NatKind) -> Role | None:
    """What this side does in a birthday attempt, or None: only a hard <-> easy pair probes."""
    if mine == "hard" and theirs == "easy":
        return "hard-side"
    if mine == "easy" and theirs == "hard":
        return "easy-side"
    return None


def target_for(role: Role | None, endpoints: list[Endpoint]) -> Endpoint | None:
    """Where probes go, from the peer's reported endpoints (public, IPv4 only): the easy
    peer's mapped endpoint (the first), or the hard peer's public IP (port unused)."""
    for ep in endpoints:
        try:
            ip = ipaddress.ip_address(ep.host)
        except ValueError:
            continue
        if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_multicast:
            continue
        if role == "hard-side":
            return ep
        if role == "easy-side":
            return Endpoint(ep.host, 0)
    return None


@dataclass(frozen=True, slots=True)
class ProbeFromNewPort:
    """Open one more extra socket and send a disco ping from it to ``endpoint``."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class ProbeToPort:
    """Send a disco ping from the main socket to ``endpoint`` (a guessed port)."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class EndAttempt:
    """The attempt is over: close the extra sockets that no path uses."""


Action = ProbeFromNewPort | ProbeToPort | EndAttempt


class BirthdayProber:
    """Birthday probing toward one peer. Not thread-safe; see the module docstring."""

    def __init__(self, randrange: Callable[[int, int], int]) -> None:
        self._randrange = randrange  # randrange(a, b): a <= x < b, injected
        self._role: Role | None = None
        self._target: Endpoint | None = None
        self._active = False
        self._direct = False
        self.attempts = 0  # attempts started since the last reset
        self.packets_sent = 0  # probe packets in the current (or last) attempt
        self.total_packets = 0  # probe packets ever
        self.hits = 0  # attempts after which the peer went direct
        self._started_at: float | None = None  # the running attempt's start
        self._next_attempt_at = float("-inf")
        self._ports: list[int] = []  # the easy side's guesses, drawn at attempt start

    # --- inputs -------------------------------------------------------------------

    def update(
        self,
        *,
        role: Role | None,
        target: Endpoint | None,
        active: bool,
        direct: bool,
        now: float,
    ) -> None:
        """The latest facts: our role, where probes go, whether traffic wants the path,
        whether a direct path is in use. A new role or target starts over (new budget)."""
        if (role, target) != (self._role, self._target):
            self._role, self._target = role, target
            self.attempts = 0
            self._next_attempt_at = now + ROLE_SETTLE_S
            self._started_at = None
        if direct and not self._direct and self._started_at is not None:
            self.hits += 1
            self.attempts = 0  # found: the budget starts over if the path is lost later
            self._next_attempt_at = now + BACKOFF_S
        self._active, self._direct = active, direct

    # --- timers -------------------------------------------------------------------

    def timers(self, now: float) -> list[Action]:
        """What to send now. Call when ``now >= next_timer_at(now)``; extra calls are fine."""
        actions: list[Action] = []
        if self._started_at is not None:
            if self._direct or now >= self._started_at + ATTEMPT_WINDOW_S:
                self._started_at = None
                actions.append(EndAttempt())
            else:
                actions.extend(self._due_probes(now))
            return actions
        if self._can_start(now):
            self._start(now)
            actions.extend(self._due_probes(now))
        return actions

    def next_timer_at(self, now: float) -> float | None:
        """When ``timers`` next has something to do; None: never (until an input changes)."""
        if self._started_at is not None:
            end_at = self._started_at + ATTEMPT_WINDOW_S
            if self._direct:
                return now
            if self._active and self.packets_sent < self._budget():
                sent_by = self._started_at + (self.packets_sent + 1) / PROBE_RATE_PPS
                return max(now, min(sent_by, end_at))
            return max(now, end_at)
        if self._role is None or self._target is None or not self._active or self._direct:
            return None
        if self.attempts >= MAX_ATTEMPTS:
            return None
        return max(now, self._next_attempt_at)

    # --- outputs ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started_at is not None

    @property
    def role(self) -> Role | None:
        return self._role

    def status(self) -> dict[str, object]:
        """For ``weft status --json``."""
        return {
            "role": self._role,
            "running": self.running,
            "attempts": self.attempts,
            "packets_sent": self.packets_sent,
            "total_packets": self.total_packets,
            "hits": self.hits,
            "given_up": self._role is not None
            and self.attempts >= MAX_ATTEMPTS
            and not self.running,
        }

    # --- the rules ----------------------------------------------------------------

    def _budget(self) -> int:
        return HARD_SIDE_PORTS if self._role == "hard-side" else EASY_SIDE_PROBES

    def _can_start(self, now: float) -> bool:
        return (
            self._role is not None
            and self._target is not None
            and self._active
            and not self._direct
            and self.attempts < MAX_ATTEMPTS
            and now >= self._next_attempt_at
        )

    def _start(self, now: float) -> None:
        self._started_at = now
        self.attempts += 1
        self.packets_sent = 0
        self._next_attempt_at = now + ATTEMPT_WINDOW_S + backoff_after(self.attempts)
        if self._role == "easy-side":
            self._ports = self._draw_ports(EASY_SIDE_PROBES)

    def _draw_ports(self, count: int) -> list[int]:
        """``count`` distinct random ports in MIN_PORT..65535 (a partial shuffle)."""
        chosen: dict[int, int] = {}  # sparse Fisher-Yates over the port range
        out = []
        for i in range(count):
            j = self._randrange(i, PORT_RANGE)
            out.append(MIN_PORT + chosen.get(j, j))
            chosen[j] = chosen.get(i, i)
        return out

    def _due_probes(self, now: float) -> list[Action]:
        if not self._active or self._started_at is None or self._target is None:
            return []  # paused: no traffic for the peer any more
        allowed = int((now - self._started_at) * PROBE_RATE_PPS) + 1
        count = min(allowed, self._budget()) - self.packets_sent
        out: list[Action] = []
        for _ in range(max(0, count)):
            if self._role == "hard-side":
                out.append(ProbeFromNewPort(self._target))
            else:
                out.append(ProbeToPort(Endpoint(self._target.host, self._ports[self.packets_sent])))
            self.packets_sent += 1
            self.total_packets += 1
        return out
