"""The path layer (MagicSock) on a real DataPlane whose UDP sends are recorded.

Peers are other members of the tailnet, so these tests feed it hostile input: low-order
or malformed disco keys, unusable endpoints, a path finder that raises, relay regions it
cannot use. Disco answers are sealed with the peer's disco key and handed in through the
Bind, as the data plane would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from tests.relay.helpers import allow_all, until

from weftlab.fakes import SeededEntropy
from weftnet import controlbox, disco, stun, tailcfg
from weftnet.disco import Packet, Ping, Pong
from weftnet.endpoint import Endpoint
from weftnet.magicsock.conn import MagicSock, Relays, first_guess
from weftnet.node.datapath import Bind, DataPlane, UdpBind, make_socket
from weftnet.relay.server import RelayServer
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device, Peer


class RecordingPlane(DataPlane):
    """A DataPlane whose raw UDP sends (disco, STUN) are recorded, not sent. With
    ``stun_mapping`` set, each STUN request is answered with the mapping for its server."""

    def __init__(self, device: Device, tun_fd: int, sock: socket.socket) -> None:
        super().__init__(device, tun_fd, sock)
        self.raw: list[tuple[bytes, Endpoint]] = []
        self.stun_mapping: dict[Endpoint, Endpoint] = {}

    def send_raw(self, data: bytes, ep: Any) -> None:
        self.raw.append((data, ep))
        mapped = self.stun_mapping.get(ep)
        if mapped is not None and stun.is_stun(data):
            answer = stun.binding_response(stun.parse_request(data), mapped)
            asyncio.get_running_loop().call_soon(self.bind.receive_other, answer, ep)


class FakeEngine:
    def __init__(self, name: str = "me") -> None:
        e = SeededEntropy(name)
        self.device = Device(crypto.generate_private_key(e), e)
        self.tun_end, self.tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = make_socket(0)
        self.dp = RecordingPlane(self.device, self.tun.fileno(), self.sock)

    def set_bind(self, bind: Bind | None) -> None:
        self.dp.set_bind(bind or UdpBind())

    def rearm(self) -> None:
        pass

    def close(self) -> None:
        for s in (self.tun_end, self.tun, self.sock):
            s.close()


class RemotePeer:
    """Another node: its WireGuard key, its disco key, and its map entry."""

    def __init__(self, nid: int, name: str, endpoints: list[str], disco_key: str | None = None):
        e = SeededEntropy(name)
        self.node_key = crypto.public_key(crypto.generate_private_key(e))
        self.disco_private = e(32)
        self.disco_public = disco.public_key(self.disco_private)
        self.node = tailcfg.Node(
            id=nid,
            name=name,
            given_name=name,
            node_key=controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, self.node_key),
            disco_key=disco_key
            or controlbox.key_to_text(tailcfg.DISCO_KEY_PREFIX, self.disco_public),
            addresses=[f"100.64.0.{nid}/32"],
            allowed_ips=[f"100.64.0.{nid}/32"],
            endpoints=endpoints,
        )

    def add_to(self, engine: FakeEngine, magic: MagicSock) -> Peer:
        peer = engine.device.add_peer(self.node_key, self.node.allowed_ips)
        magic.set_peer(self.node, peer, [])
        return peer

    def pings_to_me(self, engine: FakeEngine, dst: Endpoint) -> list[Ping]:
        """The disco pings sent to this peer at ``dst``, opened with its disco key."""
        out = []
        for data, ep in engine.dp.raw:
            if ep == dst and disco.is_disco(data):
                msg = disco.open_packet(Packet.unpack(data), self.disco_private)
                if isinstance(msg, Ping):
                    out.append(msg)
        return out

    def pong(self, magic: MagicSock, txid: bytes, src: Endpoint) -> bytes:
        return disco.seal(Pong(txid, src), self.disco_private, magic.disco_public, bytes(24))


def run(scenario: Callable[[FakeEngine, MagicSock], Any]) -> Any:
    async def main() -> Any:
        engine = FakeEngine()
        magic = MagicSock(engine, engine.device.identity.private_key)  # type: ignore[arg-type]
        try:
            return await scenario(engine, magic)
        finally:
            await magic.close()
            engine.close()

    return asyncio.run(main())


B_EP = Endpoint("198.18.0.9", 41641)


def test_a_low_order_disco_key_leaves_that_peer_without_disco_and_the_loop_running() -> None:
    # Regression (D3): sealing to a low-order key raised inside the timer loop and
    # ended it for every peer.
    bad = RemotePeer(2, "mallory", ["198.18.0.7:41641"], "discokey:" + "00" * 32)
    good = RemotePeer(3, "bob", [str(B_EP)])

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        bad.add_to(engine, magic)  # first, so it would stop the loop before bob
        good.add_to(engine, magic)
        magic.start()
        await asyncio.sleep(0.2)
        assert good.pings_to_me(engine, B_EP), "the loop stopped before pinging bob"
        assert all(ep != Endpoint("198.18.0.7", 41641) for _, ep in engine.dp.raw)
        assert magic.health() == ["peer mallory: bad disco key (low order)"]

    run(scenario)


def test_a_malformed_disco_key_is_reported() -> None:
    odd = RemotePeer(2, "odd", [str(B_EP)], "discokey:zz")

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        odd.add_to(engine, magic)
        assert magic.health() == ["peer odd: malformed disco key"]
        assert await magic.ping(2, 0.1) is None

    run(scenario)


def test_an_exception_for_one_peer_is_logged_and_the_others_go_on(caplog: Any) -> None:
    broken = RemotePeer(2, "broken", ["198.18.0.7:41641"])
    good = RemotePeer(3, "bob", [str(B_EP)])

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        broken.add_to(engine, magic)
        good.add_to(engine, magic)

        def explode(now: float) -> list[Any]:
            raise RuntimeError("boom")

        magic.peers[2].pf.timers = explode  # type: ignore[method-assign]
        magic.start()
        await asyncio.sleep(0.2)
        assert good.pings_to_me(engine, B_EP)
        assert magic.health() == ["peer broken: path finding failed (RuntimeError: boom)"]

    run(scenario)
    assert any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_unusable_and_surplus_advertised_endpoints_are_ignored() -> None:
    junk = ["127.0.0.1:41641", "[::1]:41641", "0.0.0.0:41641", "224.0.0.1:41641",
            "169.254.1.1:41641", "[fe80::1]:41641", "198.18.0.1:0", "nonsense"]  # fmt: skip
    many = [f"198.18.1.{i}:41641" for i in range(1, 60)]
    hostile = RemotePeer(2, "hostile", junk + many)

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        hostile.add_to(engine, magic)
        eps = [s.endpoint for s in magic.peers[2].pf.endpoint_status()]
        assert all(ep.host.startswith("198.18.1.") for ep in eps)
        assert len(eps) <= tailcfg.MAX_ENDPOINTS

    run(scenario)


def test_first_guess_skips_unusable_addresses_and_prefers_local_behind_one_nat() -> None:
    assert first_guess([], ["127.0.0.1:1"]) is None
    assert first_guess(["198.18.0.9:1"], ["198.18.0.9:2", "127.0.0.1:3", "10.0.0.2:4"]) == (
        "10.0.0.2",
        4,
    )
    assert first_guess([], ["[fd00::1]:41641"]) == ("fd00::1", 41641)


def test_ping_uses_one_txid_per_path_and_the_pong_makes_the_path_direct() -> None:
    # Regression (D9): one txid for every endpoint; the path finder then ignored a pong
    # from any endpoint but the first that held it.
    a_ep, b_ep = Endpoint("198.18.0.8", 41641), Endpoint("fd00::9", 41641)
    bob = RemotePeer(2, "bob", [str(a_ep), f"[{b_ep.host}]:{b_ep.port}"])

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        bob.add_to(engine, magic)
        pinging = asyncio.ensure_future(magic.ping(2, 2.0))
        await asyncio.sleep(0.01)
        to_a, to_b = bob.pings_to_me(engine, a_ep), bob.pings_to_me(engine, b_ep)
        assert len(to_a) == len(to_b) == 1 and to_a[0].txid != to_b[0].txid
        assert magic.receive_other(bob.pong(magic, to_b[0].txid, b_ep), b_ep)
        kind, where, _ = await pinging
        assert (kind, where) == ("direct", "[fd00::9]:41641")  # D10: brackets
        assert magic.path_of(2) == ("direct", "[fd00::9]:41641", None)
        peer = engine.device.peers[bob.node_key]
        assert peer.endpoint == b_ep  # the path layer moved the peer there

    run(scenario)


def test_relays_update_skips_bad_regions_and_never_raises() -> None:
    # Regression (D1 / relay maps it cannot use): a ValueError here ended the map loop.
    key = controlbox.key_to_text(tailcfg.RELAY_KEY_PREFIX, bytes(range(32)))
    regions = [
        tailcfg.RelayRegion(name="tls", url="https://relay.example:443", public_key=key),
        tailcfg.RelayRegion(name="badkey", url="http://127.0.0.1:9", public_key="relaykey:xx"),
        tailcfg.RelayRegion(name="badurl", url="ftp://x", public_key=key),
        tailcfg.RelayRegion(name="ok", url="http://127.0.0.1:9", public_key=key),
    ]

    async def scenario() -> list[str]:
        r = Relays(bytes(range(1, 33)), on_packet=None)
        try:
            await r.update(regions)
            assert sorted(r.clients) == ["ok", "tls"] and r.clients["tls"].address.tls
            return r.health()
        finally:
            await r.close()

    health = asyncio.run(scenario())
    assert len(health) == 2
    assert health[0].startswith("relay region badkey: malformed relay key")
    assert health[1].startswith("relay region badurl: ")


def test_netcheck_keeps_the_published_endpoints_when_the_mapping_is_the_same() -> None:
    # Regression (D13): netcheck cleared the STUN results, so behind a hard NAT (two
    # servers, two mappings) the published list changed twice and the map stream restarted.
    key = controlbox.key_to_text(tailcfg.RELAY_KEY_PREFIX, bytes(range(32)))
    regions = [
        tailcfg.RelayRegion(name=n, url=f"http://127.0.0.{i}:9", public_key=key, stun_port=3478)
        for i, n in ((1, "one"), (2, "two"))
    ]

    async def scenario(engine: FakeEngine, magic: MagicSock) -> dict[str, Any]:
        engine.dp.stun_mapping = {
            Endpoint("127.0.0.1", 3478): Endpoint("203.0.113.5", 1000),
            Endpoint("127.0.0.2", 3478): Endpoint("203.0.113.5", 2000),
        }
        await magic.relays.update(regions)
        magic.send_stun()
        await asyncio.sleep(0.05)
        assert magic.endpoints_changed.is_set()
        published = list(magic.published_endpoints)
        magic.endpoints_changed.clear()
        result = await magic.netcheck()
        assert not magic.endpoints_changed.is_set()
        assert magic.published_endpoints == published
        return result

    result = run(scenario)
    assert result["ok"] and result["result"]["mapping_varies_by_destination"] is True
    assert result["result"]["stun_servers"] == {
        "127.0.0.1:3478": "203.0.113.5:1000",
        "127.0.0.2:3478": "203.0.113.5:2000",
    }


def test_our_stun_requests_are_long_enough_for_an_ipv6_answer() -> None:
    from weftnet import stun
    from weftnet.magicsock.conn import STUN_SOFTWARE

    txid = bytes(12)
    request = stun.binding_request(txid, STUN_SOFTWARE)
    answer = stun.binding_response(txid, ("fd7a:115c:a1e0::1", 41641))
    assert len(request) >= len(answer) == 52


def test_a_batch_for_the_relay_reaches_the_other_data_plane_whole() -> None:
    """send_to_pseudo_batch -> relay (one frame) -> receive_from_relay_batch, unsplit."""
    received: list[tuple[bytes, int, bytes, str]] = []

    async def scenario(engine: FakeEngine, magic: MagicSock) -> None:
        relay_private = crypto.generate_private_key(SeededEntropy("relay"))
        relay = RelayServer(relay_private, allow_all())
        listener = await relay.serve_tcp("127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        key = controlbox.key_to_text(tailcfg.RELAY_KEY_PREFIX, relay.public_key)
        region = tailcfg.RelayRegion(name="r1", url=f"http://127.0.0.1:{port}", public_key=key)
        other = FakeEngine("other")
        other.dp.receive_from_relay_batch = (  # type: ignore[method-assign]
            lambda data, seg, src, name: received.append((bytes(data), seg, src, name))
        )
        other_magic = MagicSock(other, other.device.identity.private_key)  # type: ignore[arg-type]
        try:
            await magic.relays.update([region])
            await other_magic.relays.update([region])
            for m in (magic, other_magic):
                assert await m.relays.clients["r1"].wait_connected(5.0)
            data = bytes(range(256)) * 200  # 51,200 bytes: 40 datagrams of 1,280
            dst = other.device.identity.public_key
            magic.send_to_pseudo_batch(dst, Endpoint("relay:r1", 0), data, 1280)
            await until(lambda: bool(received))
            assert received == [(data, 1280, engine.device.identity.public_key, "r1")]
        finally:
            await other_magic.close()
            other.close()
            await relay.close()

    run(scenario)
