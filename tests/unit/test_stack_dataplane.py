"""The userspace mode's data plane: a StackDataPlane (no TUN: packets to and from an
in-process stack) talking WireGuard to an ordinary TUN DataPlane over loopback UDP.
What the filter lets in reaches ``deliver``; what the stack sends leaves as if read
from a TUN, and the filter tracks it (its replies come back in)."""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator

import pytest
from tests.unit.test_dataplane_loopback import PING4, Node, make_node
from tests.unit.test_filter import SYN, SYN_ACK, rule, tcp4, udp4

from weftlab.fakes import SeededEntropy
from weftnet.node.datapath import StackDataPlane, make_socket
from weftnet.node.filter import PacketFilter
from weftnet.node.vnet import VNET_HDR
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device

A, B = "100.64.0.1", "100.64.0.2"  # A: TUN node, B: userspace node
PLAIN = VNET_HDR.pack(0, 0, 0, 0, 0, 0)


class Stack:
    def __init__(self) -> None:
        e = SeededEntropy("stack")
        self.udp = make_socket(0)
        self.dp = StackDataPlane(Device(crypto.generate_private_key(e), e), self.udp)
        self.got: list[bytes] = []
        self.dp.deliver = self.got.extend


@pytest.fixture
def pair() -> Iterator[tuple[Node, Stack]]:
    a, b = make_node("a"), Stack()
    a.dp.device.add_peer(
        b.dp.device.identity.public_key,
        [B + "/32"],
        endpoint=("127.0.0.1", b.udp.getsockname()[1]),
    )
    b.dp.device.add_peer(
        a.dp.device.identity.public_key,
        [A + "/32"],
        endpoint=("127.0.0.1", a.udp.getsockname()[1]),
    )
    b.dp.filter = PacketFilter([rule([A + "/32"], [(B + "/32", 80, 80)], [6])])
    yield a, b
    for s in (a.tun, a.tun_end, a.udp, b.udp):
        s.close()


def pump(a: Node, b: Stack, until: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    fds = {
        a.udp.fileno(): a.dp.on_udp_readable,
        b.udp.fileno(): b.dp.on_udp_readable,
        a.dp.tun_fd: a.dp.on_tun_readable,
    }
    while not until():
        assert time.monotonic() < deadline, "timed out"
        ready, _, _ = select.select(list(fds), [], [], 0.05)
        for fd in ready:
            fds[fd]()


def test_allowed_packets_reach_the_stack_and_denied_ones_do_not(
    pair: tuple[Node, Stack],
) -> None:
    a, b = pair
    syn = tcp4(A, B, 40000, 80, SYN)
    a.tun.send(PLAIN + syn)  # starts the handshake; the packet waits for it
    pump(a, b, lambda: bool(b.got))
    assert b.got == [syn]
    before = b.dp.counters.drop_filtered
    a.tun.send(PLAIN + tcp4(A, B, 40000, 81, SYN))  # port 81: not in the policy
    pump(a, b, lambda: b.dp.counters.drop_filtered > before)
    a.tun.send(PLAIN + PING4)  # nor is ICMP
    pump(a, b, lambda: b.dp.counters.drop_filtered > before + 1)
    assert b.got == [syn]


def test_stack_packets_leave_as_from_a_tun_and_their_replies_come_back(
    pair: tuple[Node, Stack],
) -> None:
    a, b = pair
    out = udp4(B, A, 5353, 53)
    b.dp.send_packets([out])  # starts the handshake from the userspace side
    got: list[bytes] = []
    pump(a, b, lambda: bool(got.extend(a.read_tun()) or got))
    assert [g[len(PLAIN) :] for g in got] == [out]
    # The reply is let in: the filter tracked the flow the stack started.
    reply = udp4(A, B, 53, 5353)
    a.tun.send(PLAIN + reply)
    pump(a, b, lambda: bool(b.got))
    assert b.got == [reply]
    # And a TCP reply to a connection the stack opened.
    b.dp.send_packets([tcp4(B, A, 41000, 22, SYN)])
    pump(a, b, lambda: bool(a.read_tun()))
    syn_ack = tcp4(A, B, 22, 41000, SYN_ACK)
    a.tun.send(PLAIN + syn_ack)
    pump(a, b, lambda: len(b.got) == 2)
    assert b.got[1] == syn_ack
