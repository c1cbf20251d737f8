"""The virtio-net header that precedes every packet on a Linux TUN with IFF_VNET_HDR
(include/uapi/linux/virtio_net.h), little-endian, 10 bytes:

    flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16

Only constants and the struct: the data plane parses these without importing the TUN
device itself (weftnet.node.tun, Linux-only), so the userspace mode imports nothing
Linux-specific (docs/platforms.md).
"""

from __future__ import annotations

import struct

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80
