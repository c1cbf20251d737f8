"""Address allocation for the tailnet (pure: no I/O, no randomness).

Theory of operation: every node gets one host number ``n`` and from it both addresses,
``100.64.0.0 + n`` in the CGNAT range 100.64.0.0/10 (RFC 6598) and
``fd7a:115c:a1e0:: + n`` in the ULA prefix fd7a:115c:a1e0::/48 (RFC 4193), so a node's
IPv4 and IPv6 addresses always name the same host. The allocator hands out the lowest
free usable number. Unusable numbers: 0 and the top of the range (network and broadcast
of the /10), any address whose last octet is 0 or 255 (broadcast-like; some stacks and
middleboxes mishandle them), and 100.100.100.0/24, which holds 100.100.100.100, the
address nodes keep for the tailnet's own services (DNS), as in Tailscale.

Uniqueness under concurrent registrations is the database's job (unique columns, and
the store serializes allocation); this module only answers "which number is free".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Set

IPV4_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
IPV6_RANGE = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
SERVICE_RANGE = ipaddress.IPv4Network("100.100.100.0/24")  # 100.100.100.100 lives here
MAX_HOST = IPV4_RANGE.num_addresses - 2  # the last number below the /10's broadcast


class AddressPoolExhausted(Exception):
    pass


def usable(n: int) -> bool:
    if not 1 <= n <= MAX_HOST:
        return False
    v4 = IPV4_RANGE.network_address + n
    return (n & 0xFF) not in (0, 255) and v4 not in SERVICE_RANGE


def addresses(n: int) -> tuple[str, str]:
    """The (IPv4, IPv6) pair of host number ``n``."""
    if not usable(n):
        raise ValueError(f"host number {n} is not usable")
    return str(IPV4_RANGE.network_address + n), str(IPV6_RANGE.network_address + n)


def host_number(ipv4: str) -> int:
    addr = ipaddress.IPv4Address(ipv4)
    if addr not in IPV4_RANGE:
        raise ValueError(f"{ipv4} is not in {IPV4_RANGE}")
    return int(addr) - int(IPV4_RANGE.network_address)


def allocate(used: Set[int]) -> int:
    """The lowest usable host number not in ``used``."""
    n = 1
    while n <= MAX_HOST:
        if n not in used and usable(n):
            return n
        n += 1
    raise AddressPoolExhausted(f"no free address left in {IPV4_RANGE}")
