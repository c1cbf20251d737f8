"""Two pure WireGuard devices wired together in memory, driven by a fake clock."""

from __future__ import annotations

import hashlib

import pytest

from weftlab.fakes import FakeClock, SeededEntropy
from weftnet.wireguard import crypto
from weftnet.wireguard.constants import (
    KEEPALIVE_TIMEOUT_S,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME_S,
    REKEY_AFTER_TIME_S,
    REKEY_TIMEOUT_S,
)
from weftnet.wireguard.device import SPEC_CONFIG, Device, DeviceConfig, Transmit
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import MESSAGE_COOKIE_REPLY, MESSAGE_TRANSPORT, message_type

A_EP = ("198.18.0.1", 51820)
B_EP = ("198.18.0.2", 51820)
PING = bytes.fromhex("4500001c00004000400100006440000164400002") + bytes(8)  # 100.64.0.1 -> .2


class Pair:
    """Device a (198.18.0.1) and device b (198.18.0.2), each knowing the other."""

    def __init__(
        self,
        seed: str = "pair",
        clock: FakeClock | None = None,
        config_a: DeviceConfig = SPEC_CONFIG,
        b_under_load: bool | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        ea, eb = SeededEntropy(seed + "a"), SeededEntropy(seed + "b")
        self.a = Device(crypto.generate_private_key(ea), ea, epoch_offset_s=1.7e9, config=config_a)
        load = None if b_under_load is None else (lambda now: b_under_load)
        self.b = Device(crypto.generate_private_key(eb), eb, epoch_offset_s=1.7e9, under_load=load)
        self.pa = self.a.add_peer(self.b.identity.public_key, ["100.64.0.2/32"], endpoint=B_EP)
        self.pb = self.b.add_peer(self.a.identity.public_key, ["100.64.0.1/32"])
        self.wire: list[bytes] = []  # everything sent, in order

    def deliver(self, transmits: list[Transmit], to_b: bool = True, depth: int = 0) -> None:
        """Hand datagrams to the other side, and its answers back, until quiet."""
        now = self.clock()
        for t in transmits:
            self.wire.append(t.data)
            dst, src = (self.b, A_EP) if to_b else (self.a, B_EP)
            if message_type(t.data) == MESSAGE_TRANSPORT:
                continue  # transport data is the caller's to open
            answers, peer = dst.handle_handshake(t.data, src, now)
            if peer is not None:
                peer.endpoint = src  # roaming, as plain WireGuard's endpoint owner does
            if depth < 4:
                self.deliver(answers, not to_b, depth + 1)

    def handshake(self) -> None:
        self.deliver(self.a.send_packets(self.pa, [PING], self.clock()))


def test_handshake_is_reproducible_byte_for_byte() -> None:
    runs = []
    for _ in range(2):
        p = Pair("fixed")
        p.handshake()
        runs.append(p.wire)
    assert runs[0] == runs[1]
    assert [message_type(m) for m in runs[0]] == [1, 2, 4]
    digest = hashlib.sha256(b"".join(runs[0])).hexdigest()
    assert digest == GOLDEN_HANDSHAKE_SHA256


# The bytes of initiation, response and first data packet for seed "fixed", pinned so that
# any change to the wire format or key schedule shows up here.
GOLDEN_HANDSHAKE_SHA256 = "b73e7a166c7d581860d588e383cf28f2599b92a1ab3404037a5164efeb7800aa"


def test_staged_packet_arrives_after_handshake() -> None:
    p = Pair()
    p.handshake()
    assert p.pa.current is not None and p.pa.current.is_initiator
    assert p.pb.next is not None and p.pb.current is None  # responder waits for first data
    data = p.wire[-1]
    kp = p.b.indices[int.from_bytes(data[4:8], "little")]
    assert kp is p.pb.next
    plain = kp.open(data)  # type: ignore[union-attr]
    assert plain is not None and plain[: len(PING)] == PING and len(plain) % 16 == 0
    p.b.received_on(kp, p.clock())  # type: ignore[arg-type]
    assert p.pb.current is kp and p.pb.next is None
    assert p.pa.handshakes_completed == 1 and p.pb.handshakes_completed == 1


def test_replayed_data_packet_is_refused() -> None:
    p = Pair()
    p.handshake()
    data = p.wire[-1]
    kp = p.pb.next
    assert kp is not None
    assert kp.open(data) is not None
    assert kp.open(data) is None  # same counter again


def test_forged_data_packet_is_refused_and_does_not_burn_the_counter() -> None:
    p = Pair()
    p.handshake()
    data = bytearray(p.wire[-1])
    data[-1] ^= 1
    kp = p.pb.next
    assert kp is not None
    assert kp.open(bytes(data)) is None
    assert kp.open(p.wire[-1]) is not None


def test_replayed_initiation_is_refused_and_changes_nothing() -> None:
    p = Pair()
    p.handshake()
    initiation = p.wire[0]
    before = p.pb.next
    p.clock.advance(1)
    with pytest.raises(ProtocolError, match="replayed"):
        p.b.receive_handshake(initiation, A_EP, p.clock())
    assert p.pb.next is before


def test_bad_mac1_is_refused_without_reply() -> None:
    p = Pair()
    init = bytearray(p.a.send_packets(p.pa, [PING], p.clock())[0].data)
    init[116] ^= 0xFF
    with pytest.raises(ProtocolError, match="mac1"):
        p.b.receive_handshake(bytes(init), A_EP, p.clock())
    assert p.pb.next is None and p.pb.endpoint is None


def test_initiation_flood_is_refused() -> None:
    p = Pair()
    p.handshake()
    p.clock.advance(0.018)  # a newer TAI64N (16.8 ms granularity), within the 20 ms limit
    p.pa.last_sent_initiation_at = None
    again = p.a.initiate(p.pa, p.clock())
    with pytest.raises(ProtocolError, match="flood"):
        p.b.receive_handshake(again[0].data, A_EP, p.clock())


def test_under_load_cookie_reply_then_mac2_is_accepted() -> None:
    p = Pair(b_under_load=True)
    first = p.a.send_packets(p.pa, [PING], p.clock())
    reply = p.b.receive_handshake(first[0].data, A_EP, p.clock())
    assert len(reply) == 1 and message_type(reply[0].data) == MESSAGE_COOKIE_REPLY
    assert p.pb.next is None  # no Curve25519 work, no state
    p.a.receive_handshake(reply[0].data, B_EP, p.clock())
    # The retransmission carries mac2 and is accepted while still under load.
    p.clock.advance(REKEY_TIMEOUT_S + 0.5)
    retry = p.a.handle_timers(p.clock())
    assert len(retry) == 1 and retry[0].data[132:148] != bytes(16)
    answer = p.b.receive_handshake(retry[0].data, A_EP, p.clock())
    assert message_type(answer[0].data) == 2
    assert p.pb.next is not None


def test_cookie_from_another_address_does_not_count() -> None:
    p = Pair(b_under_load=True)
    first = p.a.send_packets(p.pa, [PING], p.clock())
    reply = p.b.receive_handshake(first[0].data, A_EP, p.clock())
    p.a.receive_handshake(reply[0].data, B_EP, p.clock())
    p.clock.advance(REKEY_TIMEOUT_S + 0.5)
    retry = p.a.handle_timers(p.clock())
    again = p.b.receive_handshake(retry[0].data, ("198.18.0.9", 51820), p.clock())
    assert message_type(again[0].data) == MESSAGE_COOKIE_REPLY


def test_retransmits_every_rekey_timeout_then_gives_up() -> None:
    p = Pair()
    assert len(p.a.send_packets(p.pa, [PING], p.clock())) == 1
    start = p.clock()
    sent = 1
    while p.clock() - start < 200:
        deadline = p.a.next_deadline()
        assert deadline is not None
        assert deadline - p.clock() <= REKEY_TIMEOUT_S + 1 / 3 + 1e-9
        p.clock.now = deadline
        out = p.a.handle_timers(p.clock())
        if p.pa.retransmit_handshake_at is None and not out:
            break
        sent += len(out)
    assert sent == MAX_TIMER_HANDSHAKES + 1
    # 18 retries of REKEY_TIMEOUT + jitter, then one more timeout to give up.
    assert 90 <= p.clock() - start <= 90 + 2 * (REKEY_TIMEOUT_S + 1 / 3)
    assert not p.pa.staged  # queued packets are dropped when giving up


def test_keepalive_after_receiving_data_and_sending_none() -> None:
    p = Pair()
    p.handshake()
    kp = p.pb.next
    assert kp is not None and kp.open(p.wire[-1]) is not None
    p.b.received_on(kp, p.clock())
    p.pb.data_received(p.clock(), is_data=True)
    assert p.pb.send_keepalive_at == p.clock() + KEEPALIVE_TIMEOUT_S
    p.clock.advance(KEEPALIVE_TIMEOUT_S)
    out = p.b.handle_timers(p.clock())
    assert len(out) == 1 and len(out[0].data) == 32  # header + tag of an empty payload
    assert p.pa.current is not None and p.pa.current.open(out[0].data) == b""


def test_new_handshake_when_data_sent_but_nothing_comes_back() -> None:
    p = Pair()
    p.handshake()
    p.pa.new_handshake_at = None
    p.pa.data_sent(p.clock(), jitter=0.1)
    assert p.pa.new_handshake_at == pytest.approx(
        p.clock() + KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S + 0.1
    )
    p.clock.advance(KEEPALIVE_TIMEOUT_S + REKEY_TIMEOUT_S + 0.2)
    out = p.a.handle_timers(p.clock())
    assert [message_type(t.data) for t in out] == [1]


def test_initiator_rekeys_after_rekey_after_time_when_sending() -> None:
    p = Pair()
    p.handshake()
    old = p.pa.current
    p.clock.advance(REKEY_AFTER_TIME_S - 1)
    assert p.a.after_send(p.pa, p.clock()) == []
    p.clock.advance(2)
    out = p.a.after_send(p.pa, p.clock())
    assert [message_type(t.data) for t in out] == [1]
    p.deliver(out)
    assert p.pa.current is not old and p.pa.previous is old
    assert p.pa.handshakes_completed == 2


def test_shortened_rekey_timer() -> None:
    p = Pair(config_a=DeviceConfig(rekey_after_time_s=2.0))
    p.handshake()
    p.clock.advance(2.5)
    assert p.a.after_send(p.pa, p.clock()) == []  # initiations are REKEY_TIMEOUT apart
    p.clock.advance(REKEY_TIMEOUT_S)
    assert [message_type(t.data) for t in p.a.after_send(p.pa, p.clock())] == [1]


def test_session_unusable_after_reject_after_time_and_zeroed_later() -> None:
    p = Pair()
    p.handshake()
    kp = p.pa.current
    assert kp is not None
    p.clock.advance(REJECT_AFTER_TIME_S)
    assert p.a.sending_keypair(p.pa, p.clock()) is None
    assert not kp.usable_for_receiving(p.clock())
    p.clock.advance(REJECT_AFTER_TIME_S * 2)
    p.a.handle_timers(p.clock())
    assert p.pa.current is None and p.pa.previous is None
    assert kp.local_index not in p.a.indices


def test_persistent_keepalive() -> None:
    p = Pair()
    p.pa.persistent_keepalive_s = 25
    p.handshake()
    p.pa.data_received(p.clock(), is_data=False)  # b's answer arrives
    assert p.pa.persistent_keepalive_at == p.clock() + 25
    p.clock.advance(25)
    out = p.a.handle_timers(p.clock())
    assert any(len(t.data) == 32 for t in out)


def test_an_initiation_reports_its_authenticated_source_and_leaves_the_endpoint() -> None:
    p = Pair()
    p.pb.endpoint = A_EP
    init = p.a.send_packets(p.pa, [PING], p.clock())
    out, peer = p.b.handle_handshake(init[0].data, ("198.18.5.5", 40000), p.clock())
    assert peer is p.pb and p.pb.endpoint == A_EP  # the endpoint's owner decides
    assert out[0].endpoint == ("198.18.5.5", 40000)  # the response goes back to the source


def test_a_response_reports_the_peer_it_authenticated() -> None:
    p = Pair()
    p.pb.endpoint = A_EP
    init = p.a.send_packets(p.pa, [PING], p.clock())
    resp = p.b.receive_handshake(init[0].data, A_EP, p.clock())
    out, peer = p.a.handle_handshake(resp[0].data, ("198.18.7.7", 1), p.clock())
    assert peer is p.pa and p.pa.endpoint == B_EP and out


def test_under_load_is_an_injected_predicate_over_a_default_rate_limiter() -> None:
    from weftnet.wireguard.device import HandshakeLoad

    load = HandshakeLoad(per_s=2, hold_s=1.0)
    assert [load(10.0), load(10.1), load(10.2)] == [False, False, True]
    assert load(11.1) is True  # held a second after the burst
    assert load(12.5) is False


def test_unknown_peer_initiation_is_refused() -> None:
    p = Pair()
    e = SeededEntropy("stranger")
    stranger = Device(crypto.generate_private_key(e), e)
    sp = stranger.add_peer(p.b.identity.public_key, ["100.64.0.2/32"], endpoint=B_EP)
    init = stranger.send_packets(sp, [PING], p.clock())
    with pytest.raises(ProtocolError, match="unknown peer"):
        p.b.receive_handshake(init[0].data, A_EP, p.clock())


def test_a_session_the_peer_started_survives_our_own_handshake() -> None:
    p = Pair()
    p.pb.endpoint = A_EP
    init_b = p.b.initiate(p.pb, p.clock())[0].data
    resp_a = p.a.receive_handshake(init_b, B_EP, p.clock())[0].data
    k1 = p.pa.next  # a answered b: K1 waits until b uses it
    assert k1 is not None and p.pa.current is None
    p.pa.last_sent_initiation_at = None
    init_a = p.a.initiate(p.pa, p.clock())[0].data  # a has data to send: its own handshake
    p.b.receive_handshake(resp_a, A_EP, p.clock())  # b: current = K1, sends on it
    from_b = p.pb.current.seal(bytes(16))  # type: ignore[union-attr]
    resp_b = p.b.receive_handshake(init_a, A_EP, p.clock())[0].data
    p.a.receive_handshake(resp_b, B_EP, p.clock())  # a: current = K2
    assert p.pa.current is not k1 and p.pa.previous is k1  # kept, as wireguard-go does
    kp = p.a.indices[int.from_bytes(from_b[4:8], "little")]
    assert kp is k1 and kp.open(from_b) == bytes(16)  # type: ignore[union-attr]


def test_crossing_initiations_both_complete_without_waiting_for_a_retransmit() -> None:
    # Two nodes that learn of each other at once both initiate; each answers the
    # other's initiation before its own response arrives. Both must still end with a
    # working session in one round trip, not wait REKEY_TIMEOUT for a retransmit.
    p = Pair()
    p.pb.endpoint = A_EP
    init_a = p.a.send_packets(p.pa, [PING], p.clock())[0].data
    init_b = p.b.send_packets(p.pb, [PING], p.clock())[0].data
    resp_from_b = p.b.receive_handshake(init_a, A_EP, p.clock())[0].data
    resp_from_a = p.a.receive_handshake(init_b, B_EP, p.clock())[0].data
    assert p.pa.crossed is not None and p.pb.crossed is not None
    out_a = p.a.receive_handshake(resp_from_b, B_EP, p.clock())
    out_b = p.b.receive_handshake(resp_from_a, A_EP, p.clock())
    assert p.pa.current is not None and p.pa.current.is_initiator
    assert p.pb.current is not None and p.pb.current.is_initiator
    assert p.pa.crossed is None and p.pb.crossed is None
    # The staged pings go out on each side's own session and open on the other side
    # (there, the session the peer started is kept as `previous`).
    for out, dst in ((out_a, p.b), (out_b, p.a)):
        data = [t.data for t in out if message_type(t.data) == MESSAGE_TRANSPORT]
        assert data, out
        kp = dst.indices[int.from_bytes(data[0][4:8], "little")]
        assert kp.open(data[0])[:20] == PING[:20]  # type: ignore[union-attr]
    # Nothing left to retransmit.
    assert p.pa.retransmit_handshake_at is None and p.pb.retransmit_handshake_at is None


def test_a_crossed_initiation_is_forgotten_when_we_initiate_again() -> None:
    p = Pair()
    p.pb.endpoint = A_EP
    init_a = p.a.initiate(p.pa, p.clock())[0].data
    init_b = p.b.initiate(p.pb, p.clock())[0].data
    p.b.receive_handshake(init_a, A_EP, p.clock())
    crossed = p.pb.crossed
    assert crossed is not None and p.b.indices[crossed.local_index] is p.pb
    p.clock.advance(REKEY_TIMEOUT_S + 1)
    p.b.handle_timers(p.clock())  # b retransmits: a new initiation replaces the crossed one
    assert p.pb.crossed is None and crossed.local_index not in p.b.indices
    resp = p.a.receive_handshake(init_b, B_EP, p.clock())[0].data
    with pytest.raises(ProtocolError, match="unknown index"):
        p.b.receive_handshake(resp, A_EP, p.clock())
