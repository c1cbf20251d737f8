"""The allowed-IPs table: cryptokey routing by longest prefix match.

Theory of operation (WireGuard whitepaper section 2, "Cryptokey Routing"; the Linux
kernel's drivers/net/wireguard/allowedips.c and wireguard-go's device/allowedips.go):

Each peer owns a set of IP networks. Sending, the destination address of a packet picks
the peer (the most specific network containing it); receiving, a decrypted packet is
dropped unless its source address picks the very peer it came from. A network belongs to
at most one peer: inserting it for another peer moves it, as ``wg set`` does. Host bits
below the prefix length are masked off on insert, as the kernel does.

Instead of the kernel's bitwise trie, each family keeps one dict per prefix length present,
keyed by the masked address as an int. A lookup converts the packed address to an int once
and probes those dicts from the longest prefix to the shortest, so it costs one dict probe
per distinct prefix length in the table (typically two or three: /32 and /0, say), not per
network. Peers are compared by identity, like the kernel's pointers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeAlias, TypeVar

from weftnet.wireguard.errors import ProtocolError

__all__ = ["AllowedIPs", "Network"]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
P = TypeVar("P")

IPV4_LEN = 4  # bytes in a packed IPv4 address
IPV6_LEN = 16  # bytes in a packed IPv6 address
IPV4_BITS = 32  # bits in an IPv4 address
IPV6_BITS = 128  # bits in an IPv6 address


class _Family(Generic[P]):
    """The prefixes of one address family."""

    __slots__ = ("bits", "by_length", "scan")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_length: dict[int, dict[int, P]] = {}
        # (mask, table) for each prefix length present, longest first: lookup walks this
        self.scan: tuple[tuple[int, dict[int, P]], ...] = ()

    def rebuild_scan(self) -> None:
        all_ones = (1 << self.bits) - 1
        self.scan = tuple(
            (all_ones ^ (all_ones >> length), self.by_length[length])
            for length in sorted(self.by_length, reverse=True)
        )


class AllowedIPs(Generic[P]):
    """A longest-prefix-match table from IPv4 and IPv6 networks to peers."""

    __slots__ = ("_by_peer", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[P] = _Family(IPV4_BITS)
        self._v6: _Family[P] = _Family(IPV6_BITS)
        # id(peer) -> the networks it owns. The tables hold a reference to every peer
        # with networks, so its id cannot be reused while it is a key here.
        self._by_peer: dict[int, set[Network]] = {}

    def insert(self, network: str | Network, peer: P) -> Network:
        """Route ``network`` to ``peer``, taking it from any other peer; returns it masked.

        ``network`` is a Network or a string such as "10.0.0.0/8", "fd00::/64" or a bare
        address (a /32 or /128). Raises ValueError if the string is no network.
        """
        if peer is None:
            raise ValueError("peer must not be None")
        net = _network(network)
        family = self._family(net.version)
        key = int(net.network_address)
        table = family.by_length.get(net.prefixlen)
        if table is None:
            table = family.by_length[net.prefixlen] = {}
            family.rebuild_scan()
        old = table.get(key)
        if old is not None:
            if old is peer:
                return net
            self._forget(old, net)
        table[key] = peer
        self._by_peer.setdefault(id(peer), set()).add(net)
        return net

    def remove(self, network: str | Network) -> P | None:
        """Drop the route for exactly this network; returns the peer it pointed to, if any."""
        net = _network(network)
        family = self._family(net.version)
        table = family.by_length.get(net.prefixlen)
        if table is None:
            return None
        peer = table.pop(int(net.network_address), None)
        if peer is None:
            return None
        if not table:
            del family.by_length[net.prefixlen]
            family.rebuild_scan()
        self._forget(peer, net)
        return peer

    def remove_peer(self, peer: P) -> None:
        """Drop every network routed to ``peer``."""
        for net in list(self._by_peer.get(id(peer), ())):
            self.remove(net)

    def lookup(self, addr: bytes) -> P | None:
        """The peer for a packed 4- or 16-byte address, or None if no network has it.

        Hot path: called for the destination of every outgoing packet and the source of
        every incoming one.
        """
        n = len(addr)
        if n == IPV4_LEN:
            scan = self._v4.scan
        elif n == IPV6_LEN:
            scan = self._v6.scan
        else:
            raise ProtocolError(f"address must be 4 or 16 bytes, got {n}")
        a = int.from_bytes(addr, "big")
        for mask, table in scan:
            peer = table.get(a & mask)
            if peer is not None:
                return peer
        return None

    def entries(self, peer: P) -> list[Network]:
        """The networks routed to ``peer``, IPv4 first, each family in address order."""
        return sorted(
            self._by_peer.get(id(peer), ()),
            key=lambda net: (net.version, int(net.network_address), net.prefixlen),
        )

    def __len__(self) -> int:
        return sum(len(nets) for nets in self._by_peer.values())

    def __iter__(self) -> Iterator[tuple[Network, P]]:
        """Every (network, peer) pair, most specific first within each family."""
        for family in (self._v4, self._v6):
            for length in sorted(family.by_length, reverse=True):
                for key, peer in family.by_length[length].items():
                    yield _from_key(family.bits, key, length), peer

    def _family(self, version: int) -> _Family[P]:
        return self._v4 if version == 4 else self._v6

    def _forget(self, peer: P, net: Network) -> None:
        nets = self._by_peer[id(peer)]
        nets.discard(net)
        if not nets:
            del self._by_peer[id(peer)]


def _network(network: str | Network) -> Network:
    if isinstance(network, str):
        return ipaddress.ip_network(network.strip(), strict=False)
    if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return network
    raise TypeError(f"expected a network or a string, got {type(network).__name__}")


def _from_key(bits: int, key: int, length: int) -> Network:
    if bits == IPV4_BITS:
        return ipaddress.IPv4Network((key, length))
    return ipaddress.IPv6Network((key, length))
