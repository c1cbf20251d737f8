"""A pure device under a handshake flood (whitepaper 5.3): cookies instead of Curve25519
work, per-source limits on both, and the legitimate peer still gets through."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from weftlab.fakes import FakeClock, SeededEntropy
from weftnet.wireguard import crypto
from weftnet.wireguard.constants import (
    RATELIMIT_BURST,
    RATELIMIT_PACKETS_PER_S,
    REKEY_TIMEOUT_S,
    UNDER_LOAD_HANDSHAKES_PER_S,
)
from weftnet.wireguard.device import Device, Peer
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_RESPONSE,
    message_type,
)

VICTIM_EP = ("198.18.0.2", 51820)
LEGIT_EP = ("198.18.0.1", 51820)
PING = bytes.fromhex("4500001c00004000400100006440000164400002") + bytes(8)
FLOOD_PER_S = 2000  # messages a second in these floods


def flooder_ep(i: int) -> tuple[str, int]:
    return (f"198.19.0.{i}", 40000 + i)


class Stranger:
    """A device with a key the victim does not know: well-formed, valid mac1."""

    def __init__(self, seed: str, victim: Device) -> None:
        e = SeededEntropy(seed)
        self.device = Device(crypto.generate_private_key(e), e)
        self.peer: Peer = self.device.add_peer(victim.identity.public_key, endpoint=VICTIM_EP)

    def initiation(self, now: float) -> bytes:
        return self.device.initiate(self.peer, now, is_retry=True)[0].data


@pytest.fixture
def dh_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts Curve25519 operations anywhere in the protocol code."""
    calls: Counter[str] = Counter()
    real: Callable[[bytes, bytes], bytes] = crypto.dh

    def counting(private_key: bytes, public: bytes) -> bytes:
        calls["dh"] += 1
        return real(private_key, public)

    monkeypatch.setattr(crypto, "dh", counting)
    return calls


def outcome(victim: Device, data: bytes, src: tuple[str, int], now: float) -> str:
    try:
        out = victim.receive_handshake(data, src, now)
    except ProtocolError as e:
        return str(e)
    return "cookie reply" if out and message_type(out[0].data) == MESSAGE_COOKIE_REPLY else "ok"


def test_flood_gets_bounded_cookie_replies_and_no_curve25519_work(dh_calls: Counter[str]) -> None:
    clock = FakeClock()
    e = SeededEntropy("victim")
    victim = Device(crypto.generate_private_key(e), e)
    init = Stranger("stranger", victim).initiation(clock())
    dh_calls.clear()
    results: Counter[str] = Counter()
    sources = 4
    for i in range(2 * FLOOD_PER_S):  # two seconds from four addresses
        results[outcome(victim, init, flooder_ep(i % sources), clock())] += 1
        clock.advance(1 / FLOOD_PER_S)
    # The messages before the device noticed the load got their Curve25519 work (and
    # were refused: unknown key); everything after got nothing but cookie replies.
    before_load = results["initiation from an unknown peer"]
    assert before_load == UNDER_LOAD_HANDSHAKES_PER_S
    assert dh_calls["dh"] == 2 * before_load  # es and ss of each, then refused
    # At most the burst plus two seconds' rate of cookie replies per source.
    assert 0 < results["cookie reply"] <= sources * (RATELIMIT_BURST + 2 * RATELIMIT_PACKETS_PER_S)
    assert results["cookie reply"] == victim.cookie_replies_sent
    assert (
        results["cookie reply rate limited"]
        == 2 * FLOOD_PER_S - before_load - results["cookie reply"]
    )


def test_bad_mac1_flood_is_dropped_without_reply_or_load() -> None:
    clock = FakeClock()
    e = SeededEntropy("victim")
    victim = Device(crypto.generate_private_key(e), e)
    junk = bytearray(Stranger("stranger", victim).initiation(clock()))
    junk[116] ^= 1  # mac1
    for i in range(FLOOD_PER_S):
        assert outcome(victim, bytes(junk), flooder_ep(i % 8), clock()) == "bad mac1"
        clock.advance(1 / FLOOD_PER_S)
    assert victim.cookie_replies_sent == 0
    assert not victim.under_load(clock())  # bad mac1 never counts as load (one message)


def test_cookie_holder_gets_curve25519_work_only_at_the_per_source_rate(
    dh_calls: Counter[str],
) -> None:
    """An attacker who owns its address can answer cookies; its mac2-valid messages are
    still limited to the per-source rate (wireguard-go's ratelimiter)."""
    clock = FakeClock()
    e = SeededEntropy("victim")
    victim = Device(crypto.generate_private_key(e), e, under_load=lambda now: True)
    holder = Stranger("holder", victim)
    ep = flooder_ep(7)
    reply = victim.receive_handshake(holder.initiation(clock()), ep, clock())
    holder.device.receive_handshake(reply[0].data, VICTIM_EP, clock())  # cookie taken
    dh_calls.clear()
    results: Counter[str] = Counter()
    for _ in range(FLOOD_PER_S):  # one second
        results[outcome(victim, holder.initiation(clock()), ep, clock())] += 1
        clock.advance(1 / FLOOD_PER_S)
    processed = results["initiation from an unknown peer"]  # Curve25519 done, then refused
    assert RATELIMIT_PACKETS_PER_S <= processed <= RATELIMIT_BURST + RATELIMIT_PACKETS_PER_S
    assert results["handshake rate limited"] == FLOOD_PER_S - processed
    victim_dh = dh_calls["dh"] - FLOOD_PER_S  # the holder's initiate() does one each
    assert victim_dh == 2 * processed


def test_legitimate_peer_completes_during_a_flood_from_other_addresses() -> None:
    clock = FakeClock()
    ev, el = SeededEntropy("victim"), SeededEntropy("legit")
    victim = Device(crypto.generate_private_key(ev), ev)
    legit = Device(crypto.generate_private_key(el), el)
    victim.add_peer(legit.identity.public_key, ["100.64.0.1/32"])
    lp = legit.add_peer(victim.identity.public_key, ["100.64.0.2/32"], endpoint=VICTIM_EP)
    flood = Stranger("stranger", victim).initiation(clock())

    def flood_for(seconds: float) -> None:
        for i in range(int(seconds * FLOOD_PER_S)):
            outcome(victim, flood, flooder_ep(i % 16), clock())
            clock.advance(1 / FLOOD_PER_S)

    flood_for(0.5)
    assert victim.under_load(clock())
    first = legit.send_packets(lp, [PING], clock())
    answer = victim.receive_handshake(first[0].data, LEGIT_EP, clock())
    assert message_type(answer[0].data) == MESSAGE_COOKIE_REPLY
    legit.receive_handshake(answer[0].data, VICTIM_EP, clock())
    flood_for(REKEY_TIMEOUT_S + 0.4)  # until the legitimate peer retransmits
    retry = legit.handle_timers(clock())
    assert len(retry) == 1
    answer = victim.receive_handshake(retry[0].data, LEGIT_EP, clock())
    assert message_type(answer[0].data) == MESSAGE_RESPONSE
    out = legit.receive_handshake(answer[0].data, VICTIM_EP, clock())
    assert lp.handshakes_completed == 1 and out  # the staged ping leaves
