"""The TUN's gso_max_size: a TCP super-packet the kernel hands over cuts into as many
segments as one UDP GSO send carries, so one TUN read leaves in one sendmsg."""

from __future__ import annotations

import pytest

from weftnet.fastpath.reference import MESSAGE_OVERHEAD
from weftnet.node.datapath import MAX_GSO_BYTES, MAX_GSO_SEGMENTS, tso_max_size
from weftnet.wireguard.messages import padded_size

MAX_TCP_HEADER = 320  # what the kernel's TCP keeps of gso_max_size for headers (+1)


@pytest.mark.parametrize("mtu", [1280, 1380, 1420, 1500])
@pytest.mark.parametrize("tcp_ip_headers", [52, 72], ids=["ipv4-timestamps", "ipv6-timestamps"])
def test_a_full_super_packet_fits_one_gso_send(mtu: int, tcp_ip_headers: int) -> None:
    mss = mtu - tcp_ip_headers
    segments = (tso_max_size(mtu) - MAX_TCP_HEADER - 1) // mss  # tcp_tso_autosize's cap
    message = padded_size(mtu, mtu) + MESSAGE_OVERHEAD
    per_send = min(MAX_GSO_BYTES // message, MAX_GSO_SEGMENTS)
    assert segments <= per_send
    assert segments >= per_send - 1  # and not much smaller: few reads, few writes
