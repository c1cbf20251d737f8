"""The relay map without sockets: the registry of standalone regions, relay maps in full
frames and deltas, admission, and the hub's part (fake service, fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftlab.fakes import FakeClock
from weftnet import stun, tailcfg
from weftnet.control.cli.main import main
from weftnet.control.domain import netmap, relays
from weftnet.control.server.hub import Hub
from weftnet.relay.standalone import RelayError, derive_public_url
from weftnet.stun.server import StunServer

from .test_hub import FakeService
from .test_hub import node as hub_node
from .test_netmap import ALICE, NOW, build, node

KEY = "relaykey:" + "ab" * 32


def region(
    name: str = "eu", url: str = "http://192.0.2.1:8081", **kw: object
) -> tailcfg.RelayRegion:
    return relays.region(name, url, str(kw.get("public_key", KEY)), kw.get("stun_port", 3478))  # type: ignore[arg-type]


def test_region_checks_every_field_and_normalizes_the_key() -> None:
    r = relays.region(
        "eu-west_1.a",
        "http://relay.example:8081",
        KEY.upper().replace("RELAYKEY", "relaykey"),
        3478,
    )
    assert r.public_key == KEY and r.name == "eu-west_1.a"
    assert relays.region("x", "relay.example:8081", KEY).stun_port is None
    bad = [
        ("", "http://h:1", KEY, None, "invalid region name"),
        ("e u", "http://h:1", KEY, None, "invalid region name"),
        ("-eu", "http://h:1", KEY, None, "invalid region name"),
        ("x" * 64, "http://h:1", KEY, None, "invalid region name"),
        ("eu", "ftp://h:1", KEY, None, "http:// or https://"),
        ("eu", "h", KEY, None, "HOST:PORT"),
        ("eu", "http://h:1/?q", KEY, None, "no query"),
        ("eu", "http://h:1", "nodekey:" + "ab" * 32, None, "relaykey:"),
        ("eu", "http://h:1", "relaykey:abc", None, "relaykey:"),
        ("eu", "http://h:1", KEY, 0, "stun_port"),
        ("eu", "http://h:1", KEY, 65536, "stun_port"),
        ("eu", "http://" + "h" * 300 + ":1", KEY, None, "longer than"),
    ]
    for name, url, key, stun_port, message in bad:
        with pytest.raises(ValueError, match=message):
            relays.region(name, url, key, stun_port)


def test_registry_reports_changes_only_and_forgets_regions_not_refreshed() -> None:
    registry = relays.RelayRegistry(ttl_s=30, max_regions=2)
    assert registry.register(region("eu"), NOW) is True
    assert registry.register(region("eu"), NOW + 10) is False  # a refresh: no change
    [entry] = registry.registrations()
    assert (entry.registered_at, entry.last_seen, entry.expires_at) == (NOW, NOW + 10, NOW + 40)
    assert registry.register(region("eu", "http://192.0.2.9:8081"), NOW + 11) is True  # moved
    assert registry.register(region("asia"), NOW + 12) is True
    assert [r.name for r in registry.regions()] == ["asia", "eu"]
    with pytest.raises(OverflowError):
        registry.register(region("us"), NOW + 12)
    assert registry.expire(NOW + 40.9) is False
    assert registry.expire(NOW + 41) is True  # eu: last refreshed at NOW + 11
    assert [r.name for r in registry.regions()] == ["asia"]
    assert registry.remove("asia") and not registry.remove("asia")
    assert registry.regions() == ()


def test_relays_of_a_mesh_share_a_region_that_no_lone_relay_may_take() -> None:
    registry = relays.RelayRegistry()
    one = relays.region("eu-1", "http://192.0.2.1:8081", KEY, None, "eu")
    two = relays.region("eu-2", "http://192.0.2.2:8081", KEY, None, "eu")
    assert one.region == two.region == "eu" and region("asia").region == "asia"
    assert registry.register(one, NOW) and registry.register(two, NOW)
    assert [r.name for r in registry.mesh("eu")] == ["eu-1", "eu-2"]
    with pytest.raises(ValueError, match="region eu is already served by relay eu-1 in mesh eu"):
        registry.register(region("eu"), NOW)  # a lone relay named like the mesh
    assert registry.register(region("asia"), NOW)
    with pytest.raises(ValueError, match="served by relay asia alone"):
        registry.register(relays.region("asia-2", "http://192.0.2.3:8081", KEY, None, "asia"), NOW)
    assert [r.name for r in registry.regions()] == ["asia", "eu-1", "eu-2"]  # unchanged
    with pytest.raises(ValueError, match="invalid region name"):
        relays.region("eu-3", "http://192.0.2.3:8081", KEY, None, "e u")


def test_full_maps_lead_with_the_servers_own_relay_and_deltas_carry_relay_map_changes() -> None:
    own = tailcfg.RelayRegion(name="default", url="http://10.0.0.1:8080", public_key=KEY)
    before = build([node(1), node(2)]).view_for(1, (own,))
    assert before is not None
    full = before.full("weft.internal")
    assert [r.name for r in full.relay_map or []] == ["default"]
    eu = region("eu")
    m = netmap.NetMap({1: node(1), 2: node(2)}, {1: ALICE}, (), NOW, "weft.internal", (eu,))
    after = m.view_for(1, (own,))
    assert after is not None
    change = netmap.delta(before, after)
    assert change is not None and change.relay_map == [own, eu]
    assert change.peers_changed == [] and change.node is None
    assert netmap.delta(after, after) is None
    dropped = netmap.delta(after, before)
    assert dropped is not None and dropped.relay_map == [own]


def test_home_relay_is_part_of_the_wire_node() -> None:
    view = build([node(1), node(2, home_relay="eu")]).view_for(1)
    assert view is not None and view.peers[2].home_relay == "eu"


def test_a_relay_admits_keys_of_existing_nodes_whose_key_has_not_expired() -> None:
    m = build([node(1), node(2, key_expiry=NOW + 10), node(3, key_expiry=None)])
    key = m.nodes[2].node_key
    assert m.admits(key, NOW) and not m.admits(key, NOW + 10)
    assert m.admits(m.nodes[3].node_key, NOW + 10**9)
    assert not m.admits("nodekey:" + "ff" * 32, NOW)
    assert m.admitted_keys(NOW + 10) == sorted([m.nodes[1].node_key, m.nodes[3].node_key])


pytestmark_async = pytest.mark.anyio


@pytestmark_async
async def test_hub_admission_sees_changes_made_before_the_ask_and_watchers_see_every_map() -> None:
    service = FakeService()
    service.nodes[1] = hub_node(1)
    hub = Hub(service, tick_s=0.01)  # type: ignore[arg-type]
    seen: list[set[int]] = []
    hub.watch(lambda m: seen.append(set(m.nodes)))
    await hub.start()
    try:
        assert await hub.admits("nodekey:1")
        assert not await hub.admits("nodekey:2")
        service.nodes[2] = hub_node(2)  # committed, then published:
        hub.notify_threadsafe()
        await asyncio.sleep(0)  # the published change lands on the loop
        assert await hub.admits("nodekey:2")  # no stale map answers
        del service.nodes[1]
        hub.notify_threadsafe()
        await asyncio.sleep(0)
        assert not await hub.admits("nodekey:1")
        assert seen[-1] == {2}
    finally:
        await hub.stop()
    assert not await hub.admits("nodekey:2")  # closed: nobody is admitted


@pytestmark_async
async def test_hub_relay_regions_enter_the_map_and_leave_it_when_not_refreshed() -> None:
    clock = FakeClock(NOW)
    service = FakeService()
    service.nodes[1] = hub_node(1)
    hub = Hub(service, tick_s=0.01, clock=clock)  # type: ignore[arg-type]
    await hub.start()
    try:
        sub = hub.connect(1)
        first = await sub.next(5)
        assert first is not None and first.relays == ()
        assert hub.register_relay(region("eu")) is True
        with_eu = await sub.next(5)
        assert with_eu is not None and [r.name for r in with_eu.relays] == ["eu"]
        clock.advance(20)
        assert hub.register_relay(region("eu")) is False  # a refresh: no rebuild needed
        clock.advance(29)
        await asyncio.sleep(0.05)
        assert hub.current is not None and [r.name for r in hub.current.relays] == ["eu"]
        clock.advance(2)  # 31 s after the last refresh
        gone = await sub.next(5)
        assert gone is not None and gone.relays == ()
        assert hub.register_relay(region("asia")) and hub.remove_relay("asia")
    finally:
        await hub.stop()


def test_relay_command_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEFT_CONTROL_URL", raising=False)
    monkeypatch.delenv("WEFT_CONTROL_API_KEY", raising=False)
    cases = [
        (["relay", "--region", "eu"], "--control-url"),
        (
            ["relay", "--region", "eu", "--listen", "x", "--control-url", "u", "--api-key", "k"],
            "--listen",
        ),
        (["relay", "--region", "e u", "--control-url", "u", "--api-key", "k"], "invalid region"),
        (["relay", "--control-url", "u", "--api-key", "k"], "--region"),
        (["relay", "--region", "eu-1", "--mesh"], "--mesh"),
        (["serve", "--relay-rate", "fast"], "invalid rate"),
        (["serve", "--stun-port", "70000"], "invalid port"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


REQUESTS = st.builds(
    stun.binding_request,
    st.binary(min_size=12, max_size=12),
    st.sampled_from([None, "weftnet", "weftnet, padded to an IPv6 answer"]),
)
DATAGRAMS = st.one_of(
    st.binary(max_size=200),
    REQUESTS,
    st.tuples(REQUESTS, st.integers(0, 27), st.integers(0, 255)).map(
        lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]  # one byte changed
    ),
)


ADDRS = [("127.0.0.1", 1), ("::ffff:10.0.0.1", 9, 0, 0), ("2001:db8::1", 7, 0, 0)]


@given(DATAGRAMS, st.sampled_from(ADDRS))
def test_the_stun_server_answers_binding_requests_only_and_never_raises(
    data: bytes, addr: tuple[Any, ...]
) -> None:
    answer = StunServer.answer(data, addr)
    if answer is not None:
        txid, mapped = stun.parse_response(answer)
        assert stun.parse_request(data) == txid
        assert mapped == (addr[0].removeprefix("::ffff:"), addr[1])
        assert len(answer) <= len(data)  # no amplification


def test_the_stun_server_ignores_requests_shorter_than_their_answer() -> None:
    v4, v6 = ("192.0.2.7", 4500), ("2001:db8::1", 4500, 0, 0)
    bare = stun.binding_request(b"q" * 12)  # 28 bytes
    own = stun.binding_request(b"q" * 12, "weftnet")  # what weftnet nodes send: 40 bytes
    long = stun.binding_request(b"q" * 12, "x" * 20)  # 52 bytes
    assert (len(bare), len(own), len(long)) == (28, 40, 52)
    assert StunServer.answer(bare, v4) is None and StunServer.answer(bare, v6) is None
    assert len(StunServer.answer(own, v4) or b"") == 40
    assert StunServer.answer(own, v6) is None  # the IPv6 answer is 52 bytes
    assert len(StunServer.answer(long, v6) or b"") == 52


class _Sent:
    def __init__(self) -> None:
        self.to: list[Any] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.to.append(addr)


def _stun(clock: FakeClock, **kw: Any) -> tuple[StunServer, _Sent]:
    server, sent = StunServer(clock=clock, **kw), _Sent()
    server.connection_made(sent)  # type: ignore[arg-type]
    return server, sent


def test_the_stun_server_answers_at_most_its_rate_per_source() -> None:
    clock = FakeClock()
    server, sent = _stun(clock, rate_per_s=10, burst=20)
    request = stun.binding_request(b"r" * 12, "weftnet")
    a, b = ("198.51.100.1", 1000), ("198.51.100.2", 1000)
    for _ in range(100):  # 100 at once from one source: the burst is answered, no more
        server.datagram_received(request, a)
    assert sent.to.count(a) == 20 and server.limited == 80
    server.datagram_received(request, b)  # another source is not held back
    assert sent.to.count(b) == 1
    for _ in range(50):  # 5 s at 100 requests/s: 10 answers per second
        clock.advance(0.1)
        for _ in range(10):
            server.datagram_received(request, a)
    assert sent.to.count(a) == 20 + 50
    assert server.answered == 71 and server.ignored == 0


def test_the_stun_server_limits_an_ipv6_64_as_one_source_and_remembers_few() -> None:
    clock = FakeClock()
    server, sent = _stun(clock, rate_per_s=1, burst=2, max_sources=3)
    request = stun.binding_request(b"r" * 12, "x" * 20)
    for i in range(10):  # spoofed addresses in one /64 share one bucket
        server.datagram_received(request, (f"2001:db8::{i + 1:x}", 9, 0, 0))
    assert len(sent.to) == 2
    for i in range(5):  # a table full of busy sources refuses newcomers
        server.datagram_received(request, (f"203.0.113.{i}", 9))
    assert len(sent.to) == 2 + 2 and server.limited == 8 + 3
    clock.advance(3)  # once the buckets have refilled they are forgotten
    server.datagram_received(request, ("203.0.113.9", 9))
    assert len(sent.to) == 5


def test_the_stun_server_answers_a_request_in_the_plain_ipv4_of_a_dual_stack_socket() -> None:
    request = stun.binding_request(b"q" * 12, "client, padded to 52 bytes")
    answer = StunServer.answer(request, ("::ffff:192.0.2.7", 4500, 0, 0))
    assert answer is not None
    assert stun.parse_response(answer) == (b"q" * 12, ("192.0.2.7", 4500))
    v6 = StunServer.answer(request, ("2001:db8::1", 4500, 0, 0))
    assert v6 is not None and stun.parse_response(v6)[1] == ("2001:db8::1", 4500)


def test_a_standalone_relay_derives_its_public_url() -> None:
    assert derive_public_url("10.1.2.3", 8081, "http://x:1") == "http://10.1.2.3:8081"
    assert derive_public_url("fd00::5", 8081, "http://x:1") == "http://[fd00::5]:8081"
    # A wildcard listener: the address this host uses toward the control server.
    assert derive_public_url("0.0.0.0", 8081, "http://127.0.0.1:8080") == "http://127.0.0.1:8081"
    assert derive_public_url("0.0.0.0", 8081, "http://localhost:8080") == "http://127.0.0.1:8081"
    with pytest.raises(RelayError, match="--public-url"):
        derive_public_url("0.0.0.0", 8081, "http://no-such-host.invalid:8080")
