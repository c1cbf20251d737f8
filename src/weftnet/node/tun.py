"""The Linux TUN device with virtio-net headers, configured through netlink.

With IFF_VNET_HDR every packet read or written is preceded by a 10-byte
``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h), little-endian:

    flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16

After TUNSETOFFLOAD(CSUM | TSO4 | TSO6) the kernel hands us TCP super-packets of up to
64 KiB (gso_type TCPV4/TCPV6, gso_size = MSS) with the TCP checksum left partial
(flags NEEDS_CSUM), and accepts super-packets we write the same way. This is what makes
a userspace data plane fast: one read and one write per 64 KiB instead of per 1.4 KiB.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
from collections.abc import Iterable
from typing import Any

from weftnet.node.vnet import (  # noqa: F401  (re-exported: the TUN's wire format)
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    VNET_HDR_LEN,
)

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04


class TunError(OSError):
    pass


def open_tun(name: str) -> tuple[int, str]:
    """Create (or attach to) TUN interface ``name``; returns (non-blocking fd, name)."""
    if not name or len(name) > 15:
        raise TunError(f"bad interface name {name!r}: 1 to 15 characters")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(
            f"cannot open /dev/net/tun: {e.strerror} (weftd must run as root;"
            " without root or TUN: --tun userspace-networking)"
        ) from e
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError as e:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {e.strerror}") from e
    return fd, res[:16].rstrip(b"\x00").decode()


IFA_F_NODAD = 0x02  # linux/if_addr.h


def _add_address(ipr: Any, idx: int, address: str, prefixlen: int) -> None:
    """Add one address. IPv6 ones skip duplicate address detection (IFA_F_NODAD): on a
    TUN there is no link to detect on, and until the kernel's DAD work ran the address
    would be tentative, so a route naming it as preferred source fails with EINVAL (seen
    once in a lab log, test_dns)."""
    flags = IFA_F_NODAD if ":" in address else 0
    ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, flags=flags)


def configure_interface(
    name: str,
    addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    mtu: int,
    routes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    gso_max_size: int = 0,
) -> None:
    """Set MTU, addresses and routes of ``name`` and bring it up (rtnetlink).

    ``gso_max_size`` (when not 0) caps the TCP super-packets the kernel hands over, so
    that one TUN read seals into one UDP GSO send (the data plane's ``tso_max_size``).

    Every route gets the first address of its family as preferred source (RTA_PREFSRC):
    with more than one address on the device (the resolver's service addresses next to
    the node's own) the kernel would otherwise pick the one added first, and a packet
    to a peer could leave from 100.100.100.100 (research/dns-routes.md §4.1 E3)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    addresses = list(addresses)
    prefsrc: dict[int, str] = {}
    for a in addresses:
        prefsrc.setdefault(a.version, str(a.ip))
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, mtu=mtu)
        if gso_max_size:
            ipr.link("set", index=idx, gso_max_size=gso_max_size)
        for a in addresses:
            try:
                _add_address(ipr, idx, str(a.ip), a.network.prefixlen)
            except NetlinkError as e:
                if e.code != 17:  # EEXIST: already there
                    raise
        ipr.link("set", index=idx, state="up")
        for net in routes:
            if net.prefixlen == 0:
                continue  # default routes need policy routing, which weftd does not do
            src = prefsrc.get(net.version)
            try:
                if src is None:
                    ipr.route("add", dst=str(net), oif=idx)
                else:  # replace: a route added before the address gets its source
                    ipr.route("replace", dst=str(net), oif=idx, prefsrc=src)
            except NetlinkError as e:
                if e.code != 17:
                    raise


def set_addresses(
    name: str, addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
) -> None:
    """Make the addresses of ``name`` exactly ``addresses`` (link-local ones stay)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    want = {(str(a.ip), a.network.prefixlen) for a in addresses}
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        have = set()
        for msg in ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is None or addr.startswith("fe80:"):
                continue
            have.add((addr, msg["prefixlen"]))
        for addr, plen in have - want:
            ipr.addr("del", index=idx, address=addr, prefixlen=plen)
        for addr, plen in want - have:
            try:
                _add_address(ipr, idx, addr, plen)
            except NetlinkError as e:
                if e.code != 17:
                    raise
