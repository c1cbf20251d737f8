"""Two real DataPlanes over real UDP sockets on loopback, with socketpairs as TUNs.

This runs the whole fast path (segmentation, sealing, GSO send, GRO receive, opening,
coalescing) and the outer IPv4 and IPv6 paths without network namespaces.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.unit.test_offload import super_packet

from weftlab.fakes import SeededEntropy
from weftnet import fastpath
from weftnet.node.datapath import DataPlane, make_socket
from weftnet.node.tun import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
)
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device

PING4 = bytes.fromhex("4500001c00004000400100006440000164400002") + bytes(8)


@dataclass
class Node:
    dp: DataPlane
    tun: socket.socket  # our end of the fake TUN: write = from the kernel, read = to it
    udp: socket.socket
    tun_end: socket.socket  # the DataPlane's end, kept open

    def read_tun(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.tun.recv(1 << 17))
            except BlockingIOError:
                return out


def make_node(name: str) -> Node:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (mine, theirs):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    udp = make_socket(0)
    e = SeededEntropy(name)
    dp = DataPlane(Device(crypto.generate_private_key(e), e), theirs.fileno(), udp)
    return Node(dp, mine, udp, theirs)


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both data paths: the C batch functions and their pure-Python reference."""
    before = fastpath.IMPLEMENTATION
    fastpath.use(request.param)
    yield request.param
    fastpath.use(before)


@pytest.fixture(params=["::1", "127.0.0.1"], ids=["outer-ipv6", "outer-ipv4"])
def pair(request: pytest.FixtureRequest, implementation: str) -> Iterator[tuple[Node, Node]]:
    host = request.param
    a, b = make_node("a"), make_node("b")
    a.dp.device.add_peer(
        b.dp.device.identity.public_key,
        ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
        endpoint=(host, b.udp.getsockname()[1]),
    )
    b.dp.device.add_peer(
        a.dp.device.identity.public_key, ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    )
    yield a, b
    for n in (a, b):
        for s in (n.tun, n.tun_end, n.udp):
            s.close()


def pump(a: Node, b: Node, until, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Run both planes' readers until ``until()`` holds (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    fds = {a.udp.fileno(): a.dp.on_udp_readable, b.udp.fileno(): b.dp.on_udp_readable}
    tuns = {a.dp.tun_fd: a.dp.on_tun_readable, b.dp.tun_fd: b.dp.on_tun_readable}
    while not until():
        assert time.monotonic() < deadline, "timed out"
        ready, _, _ = select.select(list(fds) + list(tuns), [], [], 0.05)
        for fd in ready:
            (fds.get(fd) or tuns[fd])()


def test_ping_packet_crosses_after_handshake(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.tun.send(VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0) + PING4)
    got: list[bytes] = []
    pump(a, b, lambda: bool(got.extend(b.read_tun()) or got))
    assert got[0][10:] == PING4
    peer_b = b.dp.device.peers[a.dp.device.identity.public_key]
    assert peer_b.endpoint is not None and peer_b.endpoint[1] == a.udp.getsockname()[1]


@pytest.mark.parametrize("v4", [True, False], ids=["inner-ipv4", "inner-ipv6"])
def test_tso_super_packet_arrives_coalesced(pair: tuple[Node, Node], v4: bool) -> None:
    a, b = pair
    # Handshake first, with a ping.
    a.tun.send(VNET_HDR.pack(0, 0, 0, 0, 0, 0) + PING4)
    pump(a, b, lambda: bool(b.read_tun()))
    payload = bytes((i * 13) & 0xFF for i in range(30000))
    sp = bytearray(super_packet(v4, payload, 0x18))
    ihl = 20 if v4 else 40
    mss = 1200
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if v4 else VIRTIO_NET_HDR_GSO_TCPV6
    hdr = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, ihl + 20, mss, ihl, 16)
    a.tun.send(hdr + bytes(sp))
    frames: list[bytes] = []

    def all_payload() -> bool:
        frames.extend(b.read_tun())
        return sum(len(f) - 10 - ihl - 20 for f in frames) >= len(payload)

    pump(a, b, all_payload)
    assert b"".join(f[10 + ihl + 20 :] for f in frames) == payload
    # GSO on the way out, GRO on the way in: far fewer TUN writes than segments.
    assert len(frames) < len(payload) // mss // 2
    flags, gso_type = struct.unpack_from("<BB", frames[0])
    assert gso_type == gso and flags == VIRTIO_NET_HDR_F_NEEDS_CSUM


def test_garbage_datagrams_change_nothing(pair: tuple[Node, Node]) -> None:
    a, b = pair
    before = dict(b.dp.device.indices)
    junk = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    port = b.udp.getsockname()[1]
    for data in (b"", b"\x04", b"\x04\x00\x00\x00" + bytes(40), b"\x01" + bytes(147), bytes(2000)):
        junk.sendto(data, ("::1", port))
    junk.close()
    c = b.dp.counters

    def all_counted() -> bool:
        if select.select([b.udp], [], [], 0.05)[0]:
            b.dp.on_udp_readable()
        return c.drop_unknown_index + c.drop_malformed + sum(c.drop_handshake.values()) == 5

    pump(a, b, all_counted)
    assert b.dp.device.indices == before
    assert c.drop_unknown_index == 1 and c.drop_malformed == 1 and c.rx_packets == 0
