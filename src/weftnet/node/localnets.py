"""Where a packet a peer sent may go once decrypted: this node's own tailnet addresses,
and the routes it serves (a subnet router's approved prefixes; anything at all for an
approved exit node). Anything else is dropped before the packet filter and counted
(``drop_not_local``), so a member cannot use a node with IP forwarding on to reach
networks its owner did not offer, whatever the policy says (as Tailscale's filter
``local`` set). Plain WireGuard (``weftd --wg-config``) has no such check: there the
peers' AllowedIPs are the whole contract.

Pure: addresses in, a membership test out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class LocalDestinations:
    def __init__(self, addresses: Iterable[str], routes: Iterable[str] = ()) -> None:
        own4: set[bytes] = set()
        own6: set[bytes] = set()
        for text in addresses:
            ip = ipaddress.ip_interface(text).ip
            (own4 if ip.version == 4 else own6).add(ip.packed)
        self.own4, self.own6 = frozenset(own4), frozenset(own6)
        self.nets4: list[tuple[int, int]] = []  # (network, mask) as integers
        self.nets6: list[tuple[int, int]] = []
        self.all4 = self.all6 = False  # an exit node: every destination
        for text in routes:
            net = ipaddress.ip_network(text, strict=False)
            if net.prefixlen == 0:
                if net.version == 4:
                    self.all4 = True
                else:
                    self.all6 = True
                continue
            entry = (int(net.network_address), int(net.netmask))
            (self.nets4 if net.version == 4 else self.nets6).append(entry)

    def allows4(self, dst: bytes) -> bool:
        """Whether a decrypted IPv4 packet to ``dst`` (4 bytes) may be delivered."""
        if dst in self.own4 or self.all4:
            return True
        n = int.from_bytes(dst, "big")
        return any(n & mask == net for net, mask in self.nets4)

    def allows6(self, dst: bytes) -> bool:
        """Whether a decrypted IPv6 packet to ``dst`` (16 bytes) may be delivered."""
        if dst in self.own6 or self.all6:
            return True
        n = int.from_bytes(dst, "big")
        return any(n & mask == net for net, mask in self.nets6)
