"""Path choice with a fake clock: direct found, lost, regained; hysteresis; bounds.

Most scenarios run a small event simulation: the path finder's timers fire at exactly
``next_timer_at``, pings to an endpoint come back after that endpoint's round-trip time
(or never, if it is blocked), and every change of ``best_path`` is recorded with the
time it happened, so the tests can assert exact switch times.
"""

from __future__ import annotations

import heapq
import itertools

import pytest
from pytest import approx

from weftlab.fakes import FakeClock
from weftnet.magicsock import pathfinder as pfm
from weftnet.magicsock.pathfinder import EndpointStatus, Path, Pathfinder, SendCallMeMaybe, SendPing
from weftnet.wireguard.errors import ProtocolError

T0 = 1000.0
A = ("198.18.1.1", 41641)
B = ("198.18.2.2", 41641)
C = ("2001:db8::3", 41641)
RELAY = ("relay", "fra")


class Sim:
    """One path finder, a fake clock and a network of per-endpoint round-trip times."""

    def __init__(self, pf: Pathfinder, rtt: dict[tuple[str, int], float | None]) -> None:
        self.pf = pf
        self.clock = FakeClock(T0)
        self.rtt = rtt  # endpoint -> RTT in seconds, None: the path is blocked
        self.pongs: list[tuple[float, int, bytes, tuple[str, int]]] = []  # a heap
        self.txids = itertools.count(1)
        self.pings: list[tuple[float, SendPing]] = []
        self.call_me_maybes: list[float] = []
        self.changes: list[tuple[float, Path]] = [(T0, pf.best_path(T0))]

    @property
    def now(self) -> float:
        return self.clock.now

    def path(self) -> Path:
        return self.pf.best_path(self.now)

    def _note_path(self) -> None:
        path = self.pf.best_path(self.now)
        if path != self.changes[-1][1]:
            self.changes.append((self.now, path))

    def run_until(self, end: float) -> None:
        for _ in range(100_000):
            timer_at = self.pf.next_timer_at(self.now)
            pong_at = self.pongs[0][0] if self.pongs else None
            upcoming = [t for t in (timer_at, pong_at) if t is not None]
            if not upcoming or min(upcoming) > end:
                self.clock.now = end
                self._note_path()
                return
            self.clock.now = max(self.now, min(upcoming))
            while self.pongs and self.pongs[0][0] <= self.now:
                _, _, txid, src = heapq.heappop(self.pongs)
                self.pf.on_pong(txid, src, self.now)
                self._note_path()
            for action in self.pf.timers(self.now):
                self._send(action)
            self._note_path()
        raise AssertionError("the path finder keeps asking to be called: a busy loop")

    def _send(self, action: pfm.Action) -> None:
        if isinstance(action, SendCallMeMaybe):
            self.call_me_maybes.append(self.now)
            return
        n = next(self.txids)
        txid = n.to_bytes(12, "big")
        self.pings.append((self.now, action))
        self.pf.on_ping_sent(action.endpoint, txid, self.now)
        rtt = self.rtt.get(action.endpoint)
        if rtt is not None:
            heapq.heappush(self.pongs, (self.now + rtt, n, txid, action.endpoint))

    def pings_to(self, ep: tuple[str, int], since: float = 0.0) -> list[tuple[float, str]]:
        return [(at, a.reason) for at, a in self.pings if a.endpoint == ep and at >= since]


def _sim(rtt: dict[tuple[str, int], float | None], relay: str | None = "fra") -> Sim:
    pf = Pathfinder(relay)
    pf.set_endpoints(list(rtt))
    return Sim(pf, rtt)


def test_starts_on_the_relay_and_asks_both_ways_at_once() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A, B])
    assert pf.best_path(T0) == RELAY
    assert pf.next_timer_at(T0) == T0
    assert pf.timers(T0) == [
        SendPing(A, "discovery"),
        SendPing(B, "discovery"),
        SendCallMeMaybe(),
    ]
    assert pf.timers(T0) == []  # each ping handed out once
    assert pf.next_timer_at(T0) == T0 + pfm.REPROBE_INTERVAL_S


def test_direct_path_found() -> None:
    sim = _sim({A: 0.030, B: None})
    sim.run_until(T0 + 1)
    assert sim.changes == [(T0, RELAY), (approx(T0 + 0.030), ("direct", A))]


def test_without_relay_or_direct_there_is_no_path() -> None:
    sim = _sim({A: None}, relay=None)
    sim.run_until(T0 + 20)
    assert sim.path() == ("none",)
    assert sim.call_me_maybes == []  # nothing to send it through
    assert [at for at, _ in sim.pings_to(A)] == [T0, T0 + 5, T0 + 10, T0 + 15, T0 + 20]


def test_direct_lost_falls_back_to_relay_when_trust_expires() -> None:
    sim = _sim({A: 0.030})
    sim.run_until(T0 + 10)
    assert sim.path() == ("direct", A)
    sim.rtt[A] = None  # direct UDP blocked from now on
    blocked_at = sim.now
    last_pong_at = max(at for at, _ in sim.pings_to(A) if at < blocked_at) + 0.030
    sim.run_until(T0 + 30)
    fell_back_at, path = sim.changes[2]
    assert path == RELAY
    assert fell_back_at == pytest.approx(last_pong_at + pfm.TRUST_UDP_ADDR_S)
    assert fell_back_at - blocked_at <= pfm.TRUST_UDP_ADDR_S < 5.0  # issue 5: within 5 s
    assert len(sim.changes) == 3


def test_falls_back_exactly_at_the_trust_deadline() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A])
    pf.timers(T0)
    pf.on_ping_sent(A, b"p" * 12, T0)
    assert pf.on_pong(b"p" * 12, A, T0 + 0.010) == pytest.approx(0.010)
    deadline = T0 + 0.010 + pfm.TRUST_UDP_ADDR_S
    assert pf.best_path(deadline - 1e-6) == ("direct", A)
    assert pf.best_path(deadline) == RELAY
    # With no heartbeat answered, the deadline is among the timers asked for.
    pf.timers(T0 + 4.0)
    assert pf.next_timer_at(T0 + 4.4) == pytest.approx(deadline)


def test_heartbeats_keep_a_direct_path_and_only_it() -> None:
    sim = _sim({A: 0.010, B: 0.050})
    sim.run_until(T0 + 30)
    assert sim.changes == [(T0, RELAY), (approx(T0 + 0.010), ("direct", A))]
    beats = sim.pings_to(A, since=T0 + 0.5)
    assert {reason for _, reason in beats} == {"heartbeat"}
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(beats)]
    assert gaps == pytest.approx([pfm.HEARTBEAT_INTERVAL_S] * len(gaps))
    # B, answered once at the start, is left alone until the upgrade probe.
    assert sim.pings_to(B, since=T0 + 0.5) == []
    sim.run_until(T0 + pfm.UPGRADE_INTERVAL_S)
    assert sim.pings_to(B, since=T0 + 0.5) == [(T0 + pfm.UPGRADE_INTERVAL_S, "upgrade")]
    assert sim.call_me_maybes == [T0]  # none once direct


def test_on_relay_it_reprobes_and_recovers_to_direct() -> None:
    sim = _sim({A: None})
    sim.run_until(T0 + 12)
    assert sim.path() == RELAY
    assert [at for at, _ in sim.pings_to(A)] == [T0, T0 + 5, T0 + 10]
    assert sim.call_me_maybes == [T0, T0 + 5, T0 + 10]
    sim.rtt[A] = 0.020  # unblocked
    sim.run_until(T0 + 20)
    assert sim.changes[-1] == (approx(T0 + 15.020), ("direct", A))
    assert sim.call_me_maybes == [T0, T0 + 5, T0 + 10, T0 + 15]


def test_blocked_then_unblocked_goes_relay_then_direct_again() -> None:
    sim = _sim({A: 0.020})
    sim.run_until(T0 + 5)
    sim.rtt[A] = None
    sim.run_until(T0 + 20)
    sim.rtt[A] = 0.020
    sim.run_until(T0 + 40)
    kinds = [path[0] for _, path in sim.changes]
    assert kinds == ["relay", "direct", "relay", "direct"]
    back_at = sim.changes[-1][0]
    assert back_at - (T0 + 20) <= pfm.REPROBE_INTERVAL_S + 0.020


def test_two_candidates_picks_the_lower_latency() -> None:
    sim = _sim({A: 0.080, B: 0.010})
    sim.run_until(T0 + 10)
    assert sim.path() == ("direct", B)
    assert sim.changes == [(T0, RELAY), (approx(T0 + 0.010), ("direct", B))]


def test_a_much_faster_path_answering_later_takes_over() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A, B])
    pf.timers(T0)
    pf.on_ping_sent(A, b"a" * 12, T0)
    pf.on_ping_sent(B, b"b" * 12, T0 + 0.100)  # sent later, so it answers later
    pf.on_pong(b"a" * 12, A, T0 + 0.120)  # 120 ms
    assert pf.best_path(T0 + 0.120) == ("direct", A)
    pf.on_pong(b"b" * 12, B, T0 + 0.130)  # 30 ms < 2/3 x 120 ms
    assert pf.best_path(T0 + 0.130) == ("direct", B)


def test_hysteresis_keeps_the_current_path_unless_clearly_better() -> None:
    sim = _sim({A: 0.030, B: None})
    sim.run_until(T0 + 1)
    assert sim.path() == ("direct", A)
    sim.rtt[B] = 0.025  # a bit faster, not clearly: stay on A
    sim.run_until(T0 + pfm.UPGRADE_INTERVAL_S + 1)
    assert sim.path() == ("direct", A)
    assert [r for _, r in sim.pings_to(B, since=T0 + 1)] == ["upgrade"]
    sim.rtt[B] = 0.019  # below 2/3 x 30 ms = 20 ms: switch
    sim.run_until(T0 + 2 * pfm.UPGRADE_INTERVAL_S + 1)
    assert sim.changes[-1] == (approx(T0 + 2 * pfm.UPGRADE_INTERVAL_S + 0.019), ("direct", B))


def test_hysteresis_prevents_flapping_between_similar_paths() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A, B])
    now = T0
    pf.timers(now)
    chosen = []
    # Both answer every round, their latencies crossing back and forth by 20 %.
    for i in range(20):
        fast, slow = (A, B) if i % 2 else (B, A)
        pf.on_ping_sent(fast, b"f" + i.to_bytes(11, "big"), now)
        pf.on_ping_sent(slow, b"s" + i.to_bytes(11, "big"), now)
        pf.on_pong(b"f" + i.to_bytes(11, "big"), fast, now + 0.040)
        chosen.append(pf.best_path(now + 0.040))
        pf.on_pong(b"s" + i.to_bytes(11, "big"), slow, now + 0.050)
        chosen.append(pf.best_path(now + 0.050))
        now += 1.0
    assert chosen == [("direct", B)] * len(chosen)


def test_current_path_losing_trust_switches_to_another_trusted_one_not_relay() -> None:
    sim = _sim({A: 0.010, B: 0.030})
    sim.run_until(T0 + 1)
    assert sim.path() == ("direct", A)
    sim.rtt[A] = None
    sim.run_until(T0 + 2)
    sim.pf.on_call_me_maybe([B])  # the peer asks for B: pinged now, trusted past A's end
    sim.run_until(T0 + 10)
    a_lost_at = T0 + 0.010 + pfm.TRUST_UDP_ADDR_S
    assert sim.changes == [
        (T0, RELAY),
        (approx(T0 + 0.010), ("direct", A)),
        (approx(a_lost_at), ("direct", B)),
    ]


def test_a_pong_from_elsewhere_or_too_late_or_unknown_does_not_count() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A, B])
    pf.timers(T0)
    pf.on_ping_sent(A, b"1" * 12, T0)
    pf.on_ping_sent(B, b"2" * 12, T0)
    assert pf.on_pong(b"1" * 12, B, T0 + 0.01) is None  # wrong source
    assert pf.on_pong(b"1" * 12, A, T0 + 0.02) is None  # consumed already
    assert pf.on_pong(b"2" * 12, B, T0 + pfm.PING_TIMEOUT_S) is None  # too late
    assert pf.on_pong(b"3" * 12, A, T0 + 0.01) is None  # never sent
    assert pf.best_path(T0 + 5) == RELAY


def test_call_me_maybe_pings_its_endpoints_now_and_replaces_the_last_list() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A])
    assert pf.timers(T0) == [SendPing(A, "discovery"), SendCallMeMaybe()]
    pf.on_call_me_maybe([A, B])
    # A was pinged at T0: it may be again after the minimum spacing; B, new, at once.
    assert pf.next_timer_at(T0 + 0.2) == T0 + 0.2
    assert pf.timers(T0 + 0.2) == [SendPing(B, "call-me-maybe")]
    assert pf.next_timer_at(T0 + 0.2) == T0 + pfm.MIN_PING_SPACING_S
    assert pf.timers(T0 + 1.0) == [SendPing(A, "call-me-maybe")]
    pf.on_call_me_maybe([C])
    endpoints = [s.endpoint for s in pf.endpoint_status()]
    assert endpoints == [A, C]  # B came only from the last call-me-maybe


def test_repeated_call_me_maybes_cannot_make_pings_faster_than_the_spacing() -> None:
    pf = Pathfinder("fra")
    sent = []
    for i in range(200):  # one every 10 ms for 2 s
        now = T0 + i * 0.010
        pf.on_call_me_maybe([A])
        for action in pf.timers(now):
            if isinstance(action, SendPing):
                sent.append(now)
                pf.on_ping_sent(action.endpoint, i.to_bytes(12, "big"), now)
    assert len(sent) == 2
    assert sent[1] - sent[0] >= pfm.MIN_PING_SPACING_S


def test_unanswered_pings_in_flight_are_bounded() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A])
    for i in range(10):  # the caller pinging on its own (weft ping), never answered
        pf.on_ping_sent(A, bytes([i]) * 12, T0 + i * 0.1)
    assert pf.on_pong(bytes([0]) * 12, A, T0 + 1.0) is None  # forgotten: oldest dropped
    assert pf.on_pong(bytes([9]) * 12, A, T0 + 1.0) == pytest.approx(0.1)


def test_ping_from_the_peer_adds_a_candidate_and_pings_it_back() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([A])
    pf.timers(T0)
    mapped = ("::ffff:198.18.9.9", 50000)  # as an IPv6 socket reports it
    pf.on_ping_received(mapped, T0 + 0.5)
    assert pf.timers(T0 + 0.5) == [SendPing(("198.18.9.9", 50000), "reply")]
    status = {s.endpoint: s for s in pf.endpoint_status()}
    assert status[("198.18.9.9", 50000)].sources == frozenset({"ping"})
    # Forgotten after its time to live, unless it is the path in use.
    pf.timers(T0 + 0.5 + pfm.PEER_REFLEXIVE_TTL_S)
    assert [s.endpoint for s in pf.endpoint_status()] == [A]


def test_the_path_in_use_outlives_its_removal_from_the_map_while_trusted() -> None:
    sim = _sim({A: 0.010, B: 0.050})
    sim.run_until(T0 + 1)
    sim.pf.set_endpoints([B])
    sim.run_until(T0 + 30)
    assert sim.path() == ("direct", A)  # still answering: keep it
    sim.rtt[A] = None
    sim.run_until(T0 + 60)
    assert sim.path() == ("direct", B)
    assert [s.endpoint for s in sim.pf.endpoint_status()] == [B]


def test_candidates_are_bounded() -> None:
    pf = Pathfinder("fra")
    pf.set_endpoints([("198.18.0.1", p) for p in range(1, 100)])
    assert len(pf.endpoint_status()) == pfm.MAX_CANDIDATES
    pf.on_ping_received(("198.18.0.2", 1), T0)
    assert len(pf.endpoint_status()) == pfm.MAX_CANDIDATES
    pf.set_endpoints([])
    pf.on_call_me_maybe([("198.18.0.3", p) for p in range(1, 100)])
    assert len(pf.endpoint_status()) == pfm.MAX_CANDIDATES


def test_status_and_relay_changes() -> None:
    pf = Pathfinder()
    assert pf.best_path(T0) == ("none",)
    pf.set_relay("nyc")
    assert pf.best_path(T0) == ("relay", "nyc")
    pf.set_endpoints([A, A, ("::ffff:198.18.1.1", 41641)])  # duplicates collapse
    pf.timers(T0)
    pf.on_ping_sent(A, b"x" * 12, T0)
    pf.on_pong(b"x" * 12, A, T0 + 0.02)
    [status] = pf.endpoint_status()
    assert status == EndpointStatus(
        A, frozenset({"map"}), status.latency_s, T0 + 0.02 + pfm.TRUST_UDP_ADDR_S
    )
    assert status.latency_s == approx(0.02)
    with pytest.raises(ProtocolError):
        pf.set_endpoints([("not an address", 1)])


def test_next_timer_never_lies_behind_after_timers() -> None:
    """After timers(now), the next deadline is in the future: no busy loop."""
    sim = _sim({A: 0.010, B: None, C: 0.200})
    clock = sim.clock
    for step in range(2000):
        clock.now = T0 + step * 0.05
        sim.run_until(clock.now)
        next_at = sim.pf.next_timer_at(clock.now)
        assert next_at is None or next_at > clock.now


def test_authenticated_packet_from_a_new_source_is_used_at_once() -> None:
    from weftnet.magicsock.pathfinder import Pathfinder

    pf = Pathfinder("default")
    old, new = ("198.18.0.9", 41641), ("198.18.0.7", 2000)
    pf.set_endpoints([old])
    pf.on_ping_sent(old, b"t" * 12, 100.0)
    assert pf.on_pong(b"t" * 12, old, 100.01) is not None
    assert pf.best_path(100.02) == ("direct", old)
    # The peer moved: its WireGuard packets now come from `new`.
    pf.on_authenticated(new, 101.0)
    assert pf.best_path(101.0) == ("direct", new)
    assert pf.best_path(101.0 + 4.0) == ("direct", new)  # trusted like a pong
    # Without pongs it expires like any path, back to the relay.
    assert pf.best_path(101.0 + 10.0) == ("relay", "default")
