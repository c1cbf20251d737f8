"""Birthday probing and quiet open through modelled NATs: success rates over seeded trials.

Two nodes behind NATs from weftlab.natmodel (mapping, port allocation, filtering,
timeouts, bare-Linux input), a fake clock and an event queue. Each node drives the real
pure pieces as weftd does: a Pathfinder (ping/pong, trust), a BirthdayProber and a
QuietOpen per peer; disco messages are plain tuples here (their crypto is tested
elsewhere), so a trial with a thousand probes runs in milliseconds. Every trial has
fresh NATs, fresh random ports and a random start offset between the two nodes (the
map reaches them at slightly different times), from its seed.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from weftlab.natmodel import BARE_LINUX, EASY, HARD, Nat, NatBehaviour
from weftnet.endpoint import Endpoint, split_via, via_endpoint
from weftnet.magicsock import birthday, quietopen
from weftnet.magicsock.birthday import (
    BirthdayProber,
    EndAttempt,
    ProbeFromNewPort,
    ProbeToPort,
    nat_kind_of_endpoints,
    role_for,
    target_for,
)
from weftnet.magicsock.pathfinder import Pathfinder, SendCallMeMaybe, SendPing
from weftnet.magicsock.quietopen import QuietOpen, Resume, SendLowTtlPing

LINK_S = 0.010  # one-way delay between the two NATs
RELAY_S = 0.040  # one-way delay through the relay (call-me-maybe)
START_JITTER_S = 0.3  # the map reaches the second node up to this much later
PORT = 41641
STUN_SERVERS = [("198.19.0.1", 3478), ("198.19.0.2", 3478)]
STUN_INTERVAL_S = 20.0
TRIALS = 200
Msg = tuple[str, bytes]  # ("ping" | "pong", txid)


class Sim:
    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, Callable[[], None]]] = []
        self.seq = itertools.count()
        self.nats: dict[str, Nat] = {}

    def at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), fn))

    def run_until(self, end: float, nodes: list[Node], stop: Callable[[], bool]) -> None:
        for _ in range(1_000_000):
            if stop():
                return
            deadlines = [self.queue[0][0]] if self.queue else []
            deadlines += [t for n in nodes if (t := n.next_timer_at()) is not None]
            if not deadlines or min(deadlines) > end:
                self.now = end
                return
            self.now = max(self.now, min(deadlines))
            while self.queue and self.queue[0][0] <= self.now:
                heapq.heappop(self.queue)[2]()
            for n in nodes:
                if (t := n.next_timer_at()) is not None and t <= self.now:
                    n.timers()
        raise AssertionError("simulation does not advance")


@dataclass(eq=False)
class Node:
    sim: Sim
    name: str
    ip: str
    nat: Nat
    techniques: frozenset[str]
    started_at: float
    peer: Node | None = None
    pf: Pathfinder = field(default_factory=lambda: Pathfinder("sim"))
    bd: BirthdayProber = field(init=False)
    qo: QuietOpen = field(default_factory=QuietOpen)
    extra: set[int] = field(default_factory=set)
    mapped: list[Endpoint] = field(default_factory=list)
    stun_at: float = float("-inf")
    probes_per_attempt: list[int] = field(default_factory=list)
    probes_after: dict[float, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bd = BirthdayProber(self.sim.rng.randrange)
        self.key = self.sim.rng.random()  # the node key's order decides the first keeper
        self.sim.nats[self.nat.public_ip] = self.nat

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(dict.fromkeys([*self.mapped, Endpoint(self.ip, PORT)]))

    @property
    def kind(self) -> birthday.NatKind:
        return "hard" if len(set(self.mapped)) > 1 else "easy"

    def stun(self) -> None:
        self.mapped = []
        for server in STUN_SERVERS:
            pub = self.nat.outbound((self.ip, PORT), server, self.sim.now)
            assert pub is not None
            self.mapped.append(Endpoint(*pub))
        self.stun_at = self.sim.now

    # --- the network ----------------------------------------------------------------

    def send(self, port: int, dst: Endpoint, msg: Msg, ttl: int = 64) -> None:
        pub = self.nat.outbound((self.ip, port), dst, self.sim.now, ttl)
        if pub is not None:
            self.sim.at(LINK_S, lambda: self.sim_deliver(pub, dst, msg))

    def sim_deliver(self, src: tuple[str, int], dst: Endpoint, msg: Msg) -> None:
        nat = self.sim.nats.get(dst[0])
        assert self.peer is not None
        if nat is None or nat is not self.peer.nat:
            return  # an address that is no NAT of the pair: nowhere
        inside = nat.inbound(dst[1], src, self.sim.now)
        if inside is not None:
            self.peer.receive(inside[1], Endpoint(*src), msg)

    def receive(self, port: int, src: Endpoint, msg: Msg) -> None:
        if port != PORT and port not in self.extra:
            return  # a socket we closed
        path = src if port == PORT else via_endpoint(port, src)
        kind, txid = msg
        if kind == "ping":
            self.send(port, src, ("pong", txid))
            self.pf.on_ping_received(path, self.sim.now)
            self.qo.on_direct_ping(self.sim.now)
        else:
            self.pf.on_pong(txid, path, self.sim.now)

    def ping(self, dst: Endpoint, ttl: int = 64) -> bytes:
        txid = self.sim.rng.randbytes(12)
        if dst.is_via:
            port, remote = split_via(dst)
            if port in self.extra:
                self.send(port, remote, ("ping", txid), ttl)
        else:
            self.send(PORT, dst, ("ping", txid), ttl)
        return txid

    # --- timers, as magicsock drives them ----------------------------------------------

    @property
    def direct(self) -> bool:
        return self.pf.best_path(self.sim.now)[0] == "direct"

    def next_timer_at(self) -> float | None:
        now = self.sim.now
        if now < self.started_at:
            return self.started_at
        at = [self.stun_at + STUN_INTERVAL_S]
        at += [t for t in (self.pf.next_timer_at(now), self.bd.next_timer_at(now)) if t is not None]
        if (t := self.qo.next_timer_at(now)) is not None:
            at.append(t)
        return min(at)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a node lives for one trial
    def plan(
        self, theirs_eps: tuple[Endpoint, ...]
    ) -> tuple[birthday.NatKind, birthday.Role | None, Endpoint | None]:
        theirs = nat_kind_of_endpoints(theirs_eps)
        role = role_for(self.kind, theirs) if "birthday" in self.techniques else None
        return theirs, role, target_for(role, list(theirs_eps))

    def timers(self) -> None:
        now, peer = self.sim.now, self.peer
        assert peer is not None
        if now < self.started_at:
            return
        if now >= self.stun_at + STUN_INTERVAL_S:
            self.stun()
            self.pf.set_endpoints(peer.endpoints)
        theirs, role, target = self.plan(tuple(peer.endpoints))
        was_running = self.bd.running
        self.bd.update(
            role=role, target=target, active=True,
            direct=self.direct, now=now,
        )  # fmt: skip
        self.qo.update(
            applies="quiet" in self.techniques and self.kind == theirs == "easy",
            keeper=self.key < peer.key, target=peer.endpoints[0], active=True,
            direct=self.direct, now=now,
        )  # fmt: skip
        quiet = self.qo.suppressed(now)
        for action in self.pf.timers(now):
            if isinstance(action, SendPing):
                if not quiet:
                    self.pf.on_ping_sent(action.endpoint, self.ping(action.endpoint), now)
            elif isinstance(action, SendCallMeMaybe):
                eps = self.endpoints
                self.sim.at(RELAY_S, lambda eps=eps: peer.pf.on_call_me_maybe(eps))  # type: ignore[misc]
        for b in self.bd.timers(now):
            if isinstance(b, ProbeFromNewPort):
                port = self.sim.rng.randrange(32768, 61000)  # the OS's ephemeral range
                self.extra.add(port)
                self.ping(via_endpoint(port, b.endpoint))
            elif isinstance(b, ProbeToPort):
                self.ping(b.endpoint)
            elif isinstance(b, EndAttempt):
                used = {
                    split_via(s.endpoint)[0] for s in self.pf.endpoint_status() if s.endpoint.is_via
                }
                self.extra &= used
        if was_running and not self.bd.running:
            self.probes_per_attempt.append(self.bd.packets_sent)
        for q in self.qo.timers(now):
            if isinstance(q, SendLowTtlPing):
                self.ping(q.endpoint, ttl=quietopen.LOW_TTL)
            elif isinstance(q, Resume):
                self.pf.ping_soon()


@dataclass
class Trial:
    direct_after_s: float | None
    probes: int  # birthday probe packets, both sides
    max_per_attempt: int  # the most probe packets one attempt of the pair sent
    attempts: int
    a: Node
    b: Node


def trial(
    seed: int, nat_a: NatBehaviour, nat_b: NatBehaviour, techniques: set[str], run_s: float
) -> Trial:
    sim = Sim(seed)
    a_nat = Nat("198.18.1.1", nat_a, random.Random(sim.rng.random()))
    b_nat = Nat("198.18.2.1", nat_b, random.Random(sim.rng.random()))
    jitter = sim.rng.uniform(0, START_JITTER_S)
    tech = frozenset(techniques)
    a = Node(sim, "a", "10.0.1.2", a_nat, tech, 0.0)
    b = Node(sim, "b", "10.0.2.2", b_nat, tech, jitter)
    a.peer, b.peer = b, a
    for n in (a, b):
        n.stun()
    for n, other in ((a, b), (b, a)):
        n.pf.set_endpoints(other.endpoints)
    direct_at: list[float] = []

    def both_direct() -> bool:
        if a.direct and b.direct and not direct_at:
            direct_at.append(sim.now)
        return bool(direct_at)

    sim.run_until(run_s, [a, b], both_direct)
    # The pair's attempts run side by side: attempt i of a with attempt i of b.
    sides = [a.probes_per_attempt + ([a.bd.packets_sent] if a.bd.running else []),
             b.probes_per_attempt + ([b.bd.packets_sent] if b.bd.running else [])]  # fmt: skip
    pairs = list(itertools.zip_longest(*sides, fillvalue=0))
    return Trial(
        direct_at[0] if direct_at else None,
        a.bd.total_packets + b.bd.total_packets,
        max((x + y for x, y in pairs), default=0),
        max(a.bd.attempts, b.bd.attempts),
        a,
        b,
    )


def success_rate(nat_a: NatBehaviour, nat_b: NatBehaviour, techniques: set[str], within_s: float,
                 run_s: float | None = None, n: int = TRIALS) -> tuple[float, list[Trial]]:  # fmt: skip
    trials = [trial(seed, nat_a, nat_b, techniques, run_s or within_s) for seed in range(n)]
    ok = sum(1 for t in trials if t.direct_after_s is not None and t.direct_after_s <= within_s)
    return ok / len(trials), trials


ADM_SEQ = NatBehaviour("ADM", "sequential", "ADF")
EDM_SEQ = NatBehaviour("EDM", "sequential", "EDF")
EIM_EIF = NatBehaviour("EIM", "random", "EIF")


def test_plain_hole_punching_rates() -> None:
    """Without the new techniques: easy pairs connect, easy <-> hard and bare Linux do not."""
    easy, _ = success_rate(EASY, EASY, set(), within_s=10)
    easy_adm, _ = success_rate(EASY, ADM_SEQ, set(), within_s=10)
    full_cone_hard, _ = success_rate(EIM_EIF, HARD, set(), within_s=10)
    easy_hard, _ = success_rate(EASY, HARD, set(), within_s=10)
    bare, _ = success_rate(BARE_LINUX, BARE_LINUX, set(), within_s=60)
    print(f"\nplain: easy-easy {easy:.0%}, easy-ADM {easy_adm:.0%}, fullcone-hard "
          f"{full_cone_hard:.0%}, easy-hard {easy_hard:.0%}, bare-bare {bare:.0%}")  # fmt: skip
    assert easy == 1.0 and full_cone_hard == 1.0
    assert easy_hard == 0.0 and easy_adm == 0.0  # a new port per remote IP is hard too
    assert bare < 0.3  # only when the first pings cross on the wire


def test_birthday_easy_hard_goes_direct_within_10_s() -> None:
    rate, trials = success_rate(EASY, HARD, {"birthday"}, within_s=10, run_s=60)
    rate_rev, trials_rev = success_rate(HARD, EASY, {"birthday"}, within_s=10)
    times = sorted(t.direct_after_s for t in trials if t.direct_after_s is not None)
    budget = max(t.max_per_attempt for t in trials + trials_rev)
    print(f"\nbirthday easy-hard: {rate:.1%} / {rate_rev:.1%} direct within 10 s; median "
          f"{times[len(times) // 2]:.2f} s; at most {budget} probe packets per attempt; "
          f"predicted {birthday.hit_probability(birthday.HARD_SIDE_PORTS, birthday.EASY_SIDE_PROBES):.1%}")  # fmt: skip
    assert rate >= 0.9 and rate_rev >= 0.9
    assert budget < 1000
    # Over a minute the backoff allows a second attempt: nearly every pair gets there.
    later = sum(t.direct_after_s is not None for t in trials) / len(trials)
    print(f"birthday easy-hard within 60 s: {later:.1%}")
    assert later >= 0.99


@pytest.mark.parametrize("other", [EDM_SEQ, NatBehaviour("ADM", "random", "EDF")])
def test_birthday_other_hard_kinds(other: NatBehaviour) -> None:
    """Sequential ports and address-dependent mapping: also probed, also found."""
    rate, _ = success_rate(EASY, other, {"birthday"}, within_s=10, n=100)
    print(f"\nbirthday easy-{other}: {rate:.1%}")
    assert rate >= 0.9


def test_hard_hard_never_probes_and_stays_on_the_relay() -> None:
    rate, trials = success_rate(HARD, HARD, {"birthday", "quiet"}, within_s=120)
    assert rate == 0.0
    assert all(t.probes == 0 for t in trials)
    t = trials[0]
    assert t.a.pf.best_path(t.a.sim.now) == ("relay", "sim")


def test_birthday_gives_up_after_max_attempts_and_backs_off() -> None:
    """A peer that never answers (its NAT drops everything): MAX_ATTEMPTS attempts,
    spaced by the doubling backoff, then nothing more."""
    sim = Sim(7)
    bd = BirthdayProber(sim.rng.randrange)
    target = Endpoint("198.18.2.1", 0)
    starts, sent = [], 0
    now = 0.0
    while now < 3600:
        bd.update(role="easy-side", target=target, active=True, direct=False, now=now)
        before = bd.attempts
        sent += sum(1 for x in bd.timers(now) if isinstance(x, ProbeToPort))
        if bd.attempts != before:
            starts.append(now)
        at = bd.next_timer_at(now)
        if at is None:
            break
        now = max(at, now + 1e-3)
    assert len(starts) == birthday.MAX_ATTEMPTS
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx(
        [birthday.ATTEMPT_WINDOW_S + birthday.backoff_after(i + 1) for i in range(len(gaps))],
        abs=0.01,
    )
    assert gaps[0] < 5 and gaps[1] >= birthday.BACKOFF_S  # a quick second chance, then back off
    assert sent == birthday.MAX_ATTEMPTS * birthday.EASY_SIDE_PROBES
    assert bd.next_timer_at(now) is None  # given up: no more timers, no more packets


def test_birthday_rate_limit_and_no_probes_without_traffic() -> None:
    bd = BirthdayProber(random.Random(1).randrange)
    target = Endpoint("198.18.2.1", 41641)
    t0 = birthday.ROLE_SETTLE_S
    bd.update(role="hard-side", target=target, active=False, direct=False, now=0.0)
    assert bd.timers(0.0) == [] and bd.next_timer_at(0.0) is None
    bd.update(role="hard-side", target=target, active=True, direct=False, now=0.0)
    assert bd.timers(0.0) == [] and bd.next_timer_at(0.0) == t0  # the role settles first
    first = bd.timers(t0)
    assert len(first) == 1 and first[0] == ProbeFromNewPort(target)
    assert len(bd.timers(t0 + 0.1)) == int(0.1 * birthday.PROBE_RATE_PPS)  # bounded rate
    bd.update(role="hard-side", target=target, active=False, direct=False, now=t0 + 0.2)
    assert bd.timers(t0 + 0.5) == []  # traffic stopped: the attempt pauses
    bd.update(role="hard-side", target=target, active=True, direct=True, now=t0 + 0.6)
    assert bd.timers(t0 + 0.6) == [EndAttempt()]  # found: stop at once
    assert bd.status()["hits"] == 1


def test_easy_side_probes_only_the_reported_ip_distinct_ports() -> None:
    bd = BirthdayProber(random.Random(3).randrange)
    target = target_for("easy-side", [Endpoint("198.18.2.1", 5000), Endpoint("198.18.2.1", 6000)])
    assert target == Endpoint("198.18.2.1", 0)
    bd.update(role="easy-side", target=target, active=True, direct=False, now=0.0)
    probes = [x for t in range(0, 600) for x in bd.timers(t / 100)]
    ports = [p.endpoint.port for p in probes if isinstance(p, ProbeToPort)]
    assert {p.endpoint.host for p in probes if isinstance(p, ProbeToPort)} == {"198.18.2.1"}
    assert len(ports) == len(set(ports)) == birthday.EASY_SIDE_PROBES
    assert all(birthday.MIN_PORT <= p <= 65535 for p in ports)


def test_bare_linux_quiet_open_goes_direct() -> None:
    """Whichever side pinged first (a starts first; the first keeper is the smaller key)."""
    rate, trials = success_rate(BARE_LINUX, BARE_LINUX, {"birthday", "quiet"}, within_s=100)
    times = sorted(t.direct_after_s for t in trials if t.direct_after_s is not None)
    poisoned = sum(t.a.nat.poisoned + t.b.nat.poisoned > 0 for t in trials)
    late_keeper = [t for t in trials if t.b.key < t.a.key]
    second_round = sum(t.a.qo.rounds == 2 for t in trials)
    print(f"\nbare Linux with quiet open: {rate:.1%} direct within 100 s (median "
          f"{times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s); {poisoned} of {len(trials)} "
          f"trials had poisoned tuples; {len(late_keeper)} began with the later side keeping, "
          f"{second_round} needed a second round")  # fmt: skip
    assert rate >= 0.99
    assert 0.3 < len(late_keeper) / len(trials) < 0.7  # both orders are covered
    assert all(t.direct_after_s is not None for t in late_keeper)
    # Ordinary easy NATs (with an input firewall) are not slowed down by it.
    easy, trials = success_rate(EASY, EASY, {"birthday", "quiet"}, within_s=2)
    assert easy == 1.0


def test_nat_kind_of_endpoints() -> None:
    assert nat_kind_of_endpoints([]) == "unknown"
    assert nat_kind_of_endpoints([Endpoint("198.18.2.1", 5), Endpoint("10.0.0.2", 5)]) == "easy"
    assert nat_kind_of_endpoints([Endpoint("198.18.2.1", 5), Endpoint("198.18.2.1", 6)]) == "hard"
    assert role_for("hard", "hard") is None and role_for("easy", "easy") is None
    assert role_for("unknown", "hard") is None
    assert role_for("hard", "easy") == "hard-side" and role_for("easy", "hard") == "easy-side"


def test_quiet_open_keeper_and_caller_timeline() -> None:
    """Stuck for STUCK_AFTER_S, both quiet for QUIET_S (the keeper sends TTL-1 pings), then
    the caller resumes; the keeper stays quiet until the caller's ping arrives."""
    target = Endpoint("198.18.2.1", 41641)
    keeper, caller = QuietOpen(), QuietOpen()
    for qo, is_keeper in ((keeper, True), (caller, False)):
        qo.update(applies=True, keeper=is_keeper, target=target, active=True, direct=False, now=0)
        assert not qo.suppressed(0) and qo.next_timer_at(0) == quietopen.STUCK_AFTER_S
    t = quietopen.STUCK_AFTER_S
    assert keeper.timers(t) == [SendLowTtlPing(target)] and caller.timers(t) == []
    assert keeper.suppressed(t) and caller.suppressed(t)
    assert keeper.next_timer_at(t) == t + quietopen.KEEPALIVE_S
    lows = sum(len(keeper.timers(t + k)) for k in range(1, int(quietopen.QUIET_S)))
    assert lows == int(quietopen.QUIET_S // quietopen.KEEPALIVE_S)
    end = t + quietopen.QUIET_S
    assert caller.timers(end) == [Resume()] and not caller.suppressed(end)
    keeper.timers(end)
    assert keeper.suppressed(end + 1)  # waits for the caller's ping
    keeper.on_direct_ping(end + 1)
    assert not keeper.suppressed(end + 1)


def test_quiet_open_swaps_roles_when_a_round_fails() -> None:
    """The keeper's own mapping was the random-port one: the caller's ping never arrives,
    and the next round starts at once with the roles swapped."""
    target = Endpoint("198.18.2.1", 41641)
    first, second = QuietOpen(), QuietOpen()
    for qo, is_keeper in ((first, True), (second, False)):
        qo.update(applies=True, keeper=is_keeper, target=target, active=True, direct=False, now=0)
    t = quietopen.STUCK_AFTER_S
    first.timers(t), second.timers(t)
    end = t + quietopen.QUIET_S
    first.timers(end)
    assert second.timers(end) == [Resume()] and not second.suppressed(end)
    assert first.status()["role"] == "keeper" and second.status()["role"] == "caller"
    swap = end + quietopen.KEEPER_WAIT_S
    assert first.timers(swap) == [] and second.timers(swap) == [SendLowTtlPing(target)]
    assert first.suppressed(swap) and second.suppressed(swap) and first.rounds == 2
    assert first.status()["role"] == "caller" and second.status()["role"] == "keeper"
    end2 = swap + quietopen.QUIET_S
    assert first.timers(end2) == [Resume()]
    # After MAX_ROUNDS failed rounds the pair stays on the relay and pings as before.
    at = end2
    while first.rounds < quietopen.MAX_ROUNDS or first.suppressed(at) or first.status()["role"]:
        at += 1
        first.timers(at)
        assert at < 1000
    assert first.next_timer_at(at) is None and first.timers(at + 1000) == []


def test_quiet_open_never_for_a_pair_that_was_direct() -> None:
    qo = QuietOpen()
    target = Endpoint("198.18.2.1", 41641)
    qo.update(applies=True, keeper=True, target=target, active=True, direct=True, now=0)
    qo.update(applies=True, keeper=True, target=target, active=True, direct=False, now=10)
    assert qo.next_timer_at(10) is None and qo.timers(100) == [] and not qo.suppressed(100)


def test_via_endpoints() -> None:
    ep = via_endpoint(40000, Endpoint("198.18.2.1", 41641))
    assert ep.is_via and not ep.is_relay and str(ep) == "via:40000/198.18.2.1:41641"
    assert split_via(ep) == (40000, Endpoint("198.18.2.1", 41641))
    for bad in (
        Endpoint("via:0/198.18.2.1", 1),
        Endpoint("via:x/1.2.3.4", 1),
        Endpoint("1.2.3.4", 1),
    ):
        with pytest.raises(ValueError):
            split_via(bad)
    pf = Pathfinder("r")
    pf.on_ping_received(ep, 0.0)  # a path from an extra socket is a candidate like any
    assert [s.endpoint for s in pf.endpoint_status()] == [ep]
