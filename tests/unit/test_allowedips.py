"""The allowed-IPs table against the kernel's selftest and a brute-force reference."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.wireguard.allowedips import AllowedIPs, Network
from weftnet.wireguard.errors import ProtocolError


class Peer:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def ip4(a: int, b: int, c: int, d: int) -> bytes:
    return bytes((a, b, c, d))


def ip6(a: int, b: int, c: int, d: int) -> bytes:
    return struct.pack(">IIII", a, b, c, d)


def net(packed: bytes, cidr: int) -> Network:
    if len(packed) == 4:
        return ipaddress.IPv4Network((packed, cidr), strict=False)
    return ipaddress.IPv6Network((packed, cidr), strict=False)


# drivers/net/wireguard/selftest/allowedips.c, wg_allowedips_selftest(), in order.


def test_kernel_selftest_lookups() -> None:
    a, b, c, d, e, f, g, h = (Peer(n) for n in "abcdefgh")
    t: AllowedIPs[Peer] = AllowedIPs()

    t.insert(net(ip4(192, 168, 4, 0), 24), a)
    t.insert(net(ip4(192, 168, 4, 4), 32), b)
    t.insert(net(ip4(192, 168, 0, 0), 16), c)
    t.insert(net(ip4(192, 95, 5, 64), 27), d)
    # replaces previous entry, and maskself is required
    t.insert(net(ip4(192, 95, 5, 65), 27), c)
    t.insert(net(ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128), d)
    t.insert(net(ip6(0x26075300, 0x60006B00, 0, 0), 64), c)
    t.insert(net(ip4(0, 0, 0, 0), 0), e)
    t.insert(net(ip6(0, 0, 0, 0), 0), e)
    # replaces previous entry
    t.insert(net(ip6(0, 0, 0, 0), 0), f)
    t.insert(net(ip6(0x24046800, 0, 0, 0), 32), g)
    # maskself is required
    t.insert(net(ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF), 64), h)
    t.insert(net(ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF), 128), a)
    t.insert(net(ip6(0x24446800, 0x40E40800, 0xDEAEBEEF, 0xDEFBEEF), 128), c)
    t.insert(net(ip6(0x24446800, 0xF0E40800, 0xEEAEBEEF, 0), 98), b)
    t.insert(net(ip4(64, 15, 112, 0), 20), g)
    # maskself is required
    t.insert(net(ip4(64, 15, 123, 211), 25), h)
    t.insert(net(ip4(10, 0, 0, 0), 25), a)
    t.insert(net(ip4(10, 0, 0, 128), 25), b)
    t.insert(net(ip4(10, 1, 0, 0), 30), a)
    t.insert(net(ip4(10, 1, 0, 4), 30), b)
    t.insert(net(ip4(10, 1, 0, 8), 29), c)
    t.insert(net(ip4(10, 1, 0, 16), 29), d)

    cases = [
        (a, ip4(192, 168, 4, 20)),
        (a, ip4(192, 168, 4, 0)),
        (b, ip4(192, 168, 4, 4)),
        (c, ip4(192, 168, 200, 182)),
        (c, ip4(192, 95, 5, 68)),
        (e, ip4(192, 95, 5, 96)),
        (d, ip6(0x26075300, 0x60006B00, 0, 0xC05F0543)),
        (c, ip6(0x26075300, 0x60006B00, 0, 0xC02E01EE)),
        (f, ip6(0x26075300, 0x60006B01, 0, 0)),
        (g, ip6(0x24046800, 0x40040806, 0, 0x1006)),
        (g, ip6(0x24046800, 0x40040806, 0x1234, 0x5678)),
        (f, ip6(0x240467FF, 0x40040806, 0x1234, 0x5678)),
        (f, ip6(0x24046801, 0x40040806, 0x1234, 0x5678)),
        (h, ip6(0x24046800, 0x40040800, 0x1234, 0x5678)),
        (h, ip6(0x24046800, 0x40040800, 0, 0)),
        (h, ip6(0x24046800, 0x40040800, 0x10101010, 0x10101010)),
        (a, ip6(0x24046800, 0x40040800, 0xDEADBEEF, 0xDEADBEEF)),
        (g, ip4(64, 15, 116, 26)),
        (g, ip4(64, 15, 127, 3)),
        (g, ip4(64, 15, 123, 1)),
        (h, ip4(64, 15, 123, 128)),
        (h, ip4(64, 15, 123, 129)),
        (a, ip4(10, 0, 0, 52)),
        (b, ip4(10, 0, 0, 220)),
        (a, ip4(10, 1, 0, 2)),
        (b, ip4(10, 1, 0, 6)),
        (c, ip4(10, 1, 0, 10)),
        (d, ip4(10, 1, 0, 20)),
    ]
    failures = [
        (number, want, addr.hex())
        for number, (want, addr) in enumerate(cases, start=1)
        if t.lookup(addr) is not want
    ]
    assert failures == []

    t.insert(net(ip4(1, 0, 0, 0), 32), a)
    t.insert(net(ip4(64, 0, 0, 0), 32), a)
    t.insert(net(ip4(128, 0, 0, 0), 32), a)
    t.insert(net(ip4(192, 0, 0, 0), 32), a)
    t.insert(net(ip4(255, 0, 0, 0), 32), a)
    t.remove_peer(a)
    for first in (1, 64, 128, 192, 255):
        assert t.lookup(ip4(first, 0, 0, 0)) is not a


def test_kernel_selftest_remove_by_peer_with_nested_prefixes() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net(ip4(192, 168, 0, 0), 16), a)
    t.insert(net(ip4(192, 168, 0, 0), 24), a)
    t.remove_peer(a)
    assert t.lookup(ip4(192, 168, 0, 1)) is not a
    assert len(t) == 0


def test_kernel_selftest_128_host_routes_differing_in_one_bit() -> None:
    # The kernel loop over MAX_ALLOWEDIPS_BITS: all-ones addresses with one bit cleared.
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    addresses = []
    for i in range(128):
        part = struct.pack(">Q", ~(1 << (i % 64)) & (2**64 - 1))
        ip = bytearray(b"\xff" * 16)
        offset = 8 if i < 64 else 0
        ip[offset : offset + 8] = part
        addresses.append(bytes(ip))
        t.insert(net(bytes(ip), 128), a)
    assert len(t) == 128
    assert all(t.lookup(addr) is a for addr in addresses)
    assert t.lookup(b"\xff" * 16) is None
    t.remove_peer(a)
    assert len(t) == 0
    assert all(t.lookup(addr) is None for addr in addresses)


def test_kernel_selftest_entries_are_masked() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert(net(ip4(192, 95, 5, 93), 27), a)
    t.insert(net(ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128), a)
    t.insert(net(ip4(10, 1, 0, 20), 29), a)
    t.insert(net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523), 83), a)
    t.insert(net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1F1DF, 0xC05F1523), 21), a)
    assert sorted(map(str, t.entries(a))) == sorted(
        [
            str(net(ip4(192, 95, 5, 64), 27)),
            str(net(ip6(0x26075300, 0x60006B00, 0, 0xC05F0543), 128)),
            str(net(ip4(10, 1, 0, 16), 29)),
            str(net(ip6(0x26075300, 0x6D8A6BF8, 0xDAB1E000, 0), 83)),
            str(net(ip6(0x26075000, 0, 0, 0), 21)),
        ]
    )


# Behaviour beyond the kernel selftest.


def test_strings_are_accepted_and_host_bits_masked() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    assert t.insert("10.1.2.3/8", a) == ipaddress.ip_network("10.0.0.0/8")
    assert t.insert("fd00::1", a) == ipaddress.ip_network("fd00::1/128")
    assert t.lookup(ip4(10, 200, 0, 1)) is a
    assert t.entries(a) == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::1/128")]


def test_inserting_for_another_peer_moves_the_network() -> None:
    a, b = Peer("a"), Peer("b")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/24", a)
    t.insert("10.0.1.0/24", a)
    t.insert("10.0.0.0/24", b)
    assert t.lookup(ip4(10, 0, 0, 9)) is b
    assert t.entries(a) == [ipaddress.ip_network("10.0.1.0/24")]
    assert t.entries(b) == [ipaddress.ip_network("10.0.0.0/24")]
    assert len(t) == 2


def test_remove_exact_network_only() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("10.0.0.0/8", a)
    t.insert("10.1.0.0/16", a)
    assert t.remove("10.2.0.0/16") is None
    assert t.remove("10.1.0.0/16") is a
    assert t.remove("10.1.0.0/16") is None
    assert t.lookup(ip4(10, 1, 0, 1)) is a  # the /8 still covers it
    assert t.entries(a) == [ipaddress.ip_network("10.0.0.0/8")]


def test_families_are_separate() -> None:
    a = Peer("a")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("0.0.0.0/0", a)
    assert t.lookup(bytes(16)) is None
    assert t.lookup(ipaddress.ip_address("::ffff:10.0.0.1").packed) is None


def test_peers_are_compared_by_identity() -> None:
    t: AllowedIPs[list[str]] = AllowedIPs()
    one, other = ["x"], ["x"]  # equal, but two peers
    t.insert("10.0.0.0/8", one)
    t.insert("10.0.0.0/8", other)
    assert t.lookup(ip4(10, 0, 0, 1)) is other
    assert t.entries(one) == []


def test_iteration_lists_every_route() -> None:
    a, b = Peer("a"), Peer("b")
    t: AllowedIPs[Peer] = AllowedIPs()
    t.insert("0.0.0.0/0", a)
    t.insert("10.0.0.0/8", b)
    t.insert("::/0", b)
    assert list(t) == [
        (ipaddress.ip_network("10.0.0.0/8"), b),
        (ipaddress.ip_network("0.0.0.0/0"), a),
        (ipaddress.ip_network("::/0"), b),
    ]


@pytest.mark.parametrize("length", [0, 3, 5, 15, 17])
def test_bad_address_length_is_a_protocol_error(length: int) -> None:
    with pytest.raises(ProtocolError):
        AllowedIPs[Peer]().lookup(bytes(length))


def test_bad_network_string_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        AllowedIPs[Peer]().insert("10.0.0.0/33", Peer("a"))


# Property test against a brute-force table.

PEERS = [Peer(str(i)) for i in range(4)]
_V4_BASES = [0x00000000, 0x0A000000, 0x0A000100, 0xC0A80000, 0xFFFFFFFF]
_V6_BASES = [0, 0xFD00 << 112, (0xFD00 << 112) | (1 << 64), (1 << 128) - 1]


@st.composite
def addresses(draw: st.DrawFn, version: int) -> int:
    """Addresses crowded around a few bases so that networks overlap and lookups hit."""
    bits = 32 if version == 4 else 128
    base = draw(st.sampled_from(_V4_BASES if version == 4 else _V6_BASES))
    low = draw(st.integers(min_value=0, max_value=bits))
    return base ^ draw(st.integers(min_value=0, max_value=(1 << low) - 1))


@st.composite
def networks(draw: st.DrawFn) -> Network:
    version = draw(st.sampled_from([4, 6]))
    addr = draw(addresses(version))
    if version == 4:
        return ipaddress.IPv4Network((addr, draw(st.integers(0, 32))), strict=False)
    return ipaddress.IPv6Network((addr, draw(st.integers(0, 128))), strict=False)


class Reference:
    def __init__(self) -> None:
        self.routes: dict[Network, Peer] = {}

    def lookup(self, packed: bytes) -> Peer | None:
        addr = ipaddress.ip_address(packed)
        best = None
        for network, peer in self.routes.items():
            if (
                network.version == addr.version
                and addr in network
                and (best is None or network.prefixlen > best[0].prefixlen)
            ):
                best = (network, peer)
        return None if best is None else best[1]


@st.composite
def packed_addresses(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([4, 6]))
    return draw(addresses(version)).to_bytes(4 if version == 4 else 16, "big")


_peers = st.sampled_from(PEERS)
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), networks(), _peers),
        st.tuples(st.just("insert"), networks(), _peers),
        st.tuples(st.just("remove"), networks(), st.none()),
        st.tuples(st.just("remove_peer"), st.none(), _peers),
    ),
    max_size=40,
)


@given(_operations, st.lists(packed_addresses(), min_size=1, max_size=12))
def test_matches_brute_force_reference(
    operations: list[tuple[str, Network | None, Peer | None]], probes: list[bytes]
) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    reference = Reference()
    for op, network, peer in operations:
        if op == "insert":
            assert network is not None and peer is not None
            table.insert(network, peer)
            reference.routes[network] = peer
        elif op == "remove":
            assert network is not None
            assert table.remove(network) is reference.routes.pop(network, None)
        else:
            assert peer is not None
            table.remove_peer(peer)
            reference.routes = {n: p for n, p in reference.routes.items() if p is not peer}
        for packed in probes:
            assert table.lookup(packed) is reference.lookup(packed)
        # a probe inside every routed network, so that each route is seen to win or lose
        for network in list(reference.routes)[:8]:
            packed = network.network_address.packed
            assert table.lookup(packed) is reference.lookup(packed)
    for p in PEERS:
        want = sorted((n for n, q in reference.routes.items() if q is p), key=str)
        assert sorted(table.entries(p), key=str) == want
    assert len(table) == len(reference.routes)
