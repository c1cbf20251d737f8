"""Port mapping in the in-memory NAT simulation of test_holepunch: a hard NAT with a
mapping (UPnP IGD / NAT-PMP / PCP forwards one public port to the node) behaves like a
public address. Seeded trials measure the success rate and time to direct per pair;
the real proof is tests/lab/test_portmap.py (miniupnpd on nftables NAT routers)."""

from __future__ import annotations

import random
import statistics

import pytest
from tests.nat.test_holepunch import (
    Endpoint,
    Nat,
    Net,
    Node,
    _connect,
    _time_to_direct,
    _world,
)

TRIALS = 50  # seeded: each trial has its own keys, NAT port ranges and mapped port


class MappedNat(Nat):
    """A NAT whose router keeps port mappings: a mapped public port lets anyone in, and
    the inside host's replies to such a sender leave from the mapped port (conntrack's
    reply direction of the DNAT flow), whatever the NAT does with new flows."""

    def __init__(self, public_ip: str, hard: bool, first_port: int) -> None:
        super().__init__(public_ip, hard)
        self._ports = iter(range(first_port, 65536))
        self.forwards: dict[int, Endpoint] = {}
        self._replies: dict[tuple[Endpoint, Endpoint], int] = {}

    def inbound(self, port: int, src: Endpoint) -> Endpoint | None:
        if port in self.forwards:
            inside = self.forwards[port]
            self._replies.setdefault((inside, src), port)
            return inside
        return super().inbound(port, src)

    def outbound(self, src: Endpoint, dst: Endpoint) -> Endpoint:
        port = self._replies.get((src, dst))
        return (self.public_ip, port) if port is not None else super().outbound(src, dst)


class MappedNode(Node):
    """A node whose port mapper got ``portmapped`` (first in its endpoints, as weftd's)."""

    portmapped: Endpoint | None = None

    @property
    def endpoints(self) -> list[Endpoint]:
        rest = super().endpoints
        return [self.portmapped, *rest] if self.portmapped is not None else rest


def _mapped_node(net: Net, name: str, kind: str, n: int, rng: random.Random, mapping: bool) -> Node:
    if kind == "public":
        return MappedNode(net, name, f"198.18.{n}.1", None)
    nat = MappedNat(f"198.18.{n}.254", kind == "hard", rng.randrange(1024, 60000))
    net.nats[nat.public_ip] = nat
    node = MappedNode(net, name, f"198.18.{100 + n}.2", nat)
    if mapping:
        port = rng.randrange(1024, 65536)
        nat.forwards[port] = node.addr
        node.portmapped = (nat.public_ip, port)
    return node


def _trials(kind_a: str, kind_b: str, mapping: bool) -> list[float | None]:
    out = []
    for seed in range(TRIALS):
        rng = random.Random(seed)
        net = _world()
        a = _mapped_node(net, f"a{seed}", kind_a, 1, rng, mapping)
        b = _mapped_node(net, f"b{seed}", kind_b, 2, rng, mapping)
        out.append(_time_to_direct(net, a, b, _connect(net, a, b), within=5.0))
    return out


@pytest.mark.parametrize(
    ("kind_a", "kind_b"), [("hard", "hard"), ("easy", "hard"), ("public", "hard")]
)
def test_port_mapping_makes_hard_nat_pairs_direct(kind_a: str, kind_b: str) -> None:
    times = _trials(kind_a, kind_b, mapping=True)
    direct = [t for t in times if t is not None]
    print(f"\n{kind_a}<->{kind_b} with port mapping: {len(direct)}/{TRIALS} direct, median"
          f" {statistics.median(direct) * 1000:.0f} ms, max {max(direct) * 1000:.0f} ms")  # fmt: skip
    assert len(direct) == TRIALS  # success rate 100 %
    assert max(direct) < 5.0


def test_without_port_mapping_hard_pairs_stay_on_the_relay() -> None:
    times = _trials("hard", "hard", mapping=False)
    assert times == [None] * TRIALS  # the control: the mapping is what made it direct
