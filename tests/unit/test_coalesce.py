"""The receive side's TUN writes: runs of one TCP flow become one GSO super-packet."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from tests.unit.test_offload import super_packet, tcp_ok

from weftlab.fakes import SeededEntropy
from weftnet.node import offload
from weftnet.node.datapath import DataPlane
from weftnet.node.tun import VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device


@pytest.fixture
def plane():  # type: ignore[no-untyped-def]
    # A datagram socketpair keeps each writev apart, as a TUN device does.
    r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.setblocking(False)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    e = SeededEntropy("coalesce")
    dp = DataPlane(Device(crypto.generate_private_key(e), e), w.fileno(), sock)
    yield dp, r.fileno()
    for s in (r, w, sock):
        s.close()


def segments(payload: bytes, mss: int, flags: int = 0x18) -> list[bytes]:
    out = bytearray(65536)
    segs: list[bytes] = []
    offload.TcpSegmenter.segment(
        memoryview(super_packet(True, payload, flags)), True, mss, out,
        lambda n: segs.append(bytes(out[:n])),
    )  # fmt: skip
    return segs


def feed(dp: DataPlane, packets: list[bytes]) -> None:
    for p in packets:
        off = dp._dec_len
        dp._dec[off : off + len(p)] = p
        dp._rx.append((off, len(p)))
        dp._dec_len = off + len(p)


def writes(fd: int) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(os.read(fd, 1 << 17))
        except BlockingIOError:
            return out


def test_a_run_of_segments_becomes_one_super_packet(plane) -> None:  # type: ignore[no-untyped-def]
    dp, r = plane
    payload = bytes(range(256)) * 40
    feed(dp, segments(payload, 1000))
    dp._flush_tun()
    [frame] = writes(r)
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    assert (flags, gso, hdr_len, gso_size, csum_start, csum_offset) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, 1000, 20, 16,
    )  # fmt: skip
    pkt = frame[10:]
    assert struct.unpack(">H", pkt[2:4])[0] == len(pkt) == 40 + len(payload)
    assert pkt[40:] == payload
    assert pkt[33] == 0x18  # PSH of the last segment kept
    # The checksum field holds the pseudo-header sum, as CHECKSUM_PARTIAL requires.
    filled = bytearray(pkt)
    offload.complete_partial_checksum(memoryview(filled), 20, 16)
    assert tcp_ok(bytes(filled), True)


def test_gap_in_sequence_splits_the_run(plane) -> None:  # type: ignore[no-untyped-def]
    dp, r = plane
    segs = segments(bytes(5000), 1000)
    feed(dp, segs[:2] + segs[3:])  # segment 3 lost
    dp._flush_tun()
    frames = writes(r)
    assert len(frames) == 2
    assert [len(f) - 10 for f in frames] == [40 + 2000, 40 + 2000]


def test_other_flows_and_non_tcp_are_written_alone(plane) -> None:  # type: ignore[no-untyped-def]
    dp, r = plane
    a = segments(bytes(3000), 1000)
    icmp = bytes.fromhex("4500001c00004000400100006440000164400002") + bytes(8)
    feed(dp, [a[0], icmp, a[1], a[2]])
    dp._flush_tun()
    frames = writes(r)
    assert [len(f) - 10 for f in frames] == [1040, 28, 40 + 2000]
    assert frames[1][0] == 2  # VIRTIO_NET_HDR_F_DATA_VALID, written as it came
