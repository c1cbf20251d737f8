"""A NAT model for path-finder simulations: mapping, port allocation, filtering, timeouts.

Theory of operation (RFC 4787 terms). The NAT keeps *flows* like Linux conntrack: one
per (public port, remote ip:port), each pointing at an inside ip:port and expiring
``timeout_s`` after its last packet. What differs between NATs is how a new flow
chooses its public port and which inbound packets a flow lets in:

- mapping: "EIM" (endpoint-independent: the port of any live flow from the same inside
  address is reused, so every remote sees one port), "ADM" (address-dependent: reused
  only toward the same remote IP), "EDM" (endpoint-dependent: a new port per remote).
- ports, for a port not reused: "preserve" (the inside port, if free), "sequential"
  (the next of a counter), "random" (uniform in 1024..65535).
- filtering of inbound packets to a public port: "EIF" (anyone, once a flow exists on
  the port), "ADF" (only a remote IP some flow on the port sent to), "EDF" (only the
  exact remote ip:port a flow sent to).
- ``bare_linux``: a router with no firewall on its own input. An unsolicited inbound
  packet is delivered to the router itself, and conntrack keeps a *local* flow for it;
  a later outbound flow whose public (port, remote) tuple is taken by it gets a random
  port instead (Linux nf_nat_used_tuple). With a firewall (the default) it is dropped
  before conntrack confirms it and leaves nothing behind.

A packet with a small TTL (``ttl=1``) refreshes the flow it belongs to, as conntrack
does in prerouting, but creates nothing and never leaves the NAT.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

Endpoint = tuple[str, int]
Mapping = Literal["EIM", "ADM", "EDM"]
Ports = Literal["preserve", "sequential", "random"]
Filtering = Literal["EIF", "ADF", "EDF"]

MIN_PORT = 1024  # the ports a NAT maps unprivileged sources to: 1024..65535
MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class NatBehaviour:
    mapping: Mapping = "EIM"
    ports: Ports = "preserve"
    filtering: Filtering = "EDF"
    timeout_s: float = 30.0  # Linux nf_conntrack_udp_timeout for unreplied UDP
    bare_linux: bool = False


# The lab's routers: plain `masquerade` with an input firewall, `masquerade random`.
EASY = NatBehaviour("EIM", "preserve", "EDF")
HARD = NatBehaviour("EDM", "random", "EDF")
BARE_LINUX = NatBehaviour("EIM", "preserve", "EDF", bare_linux=True)


@dataclass(slots=True)
class _Flow:
    inside: Endpoint | None  # None: a local flow (the router's own, from a bare input)
    expires_at: float


@dataclass
class Nat:
    """One NAT with public address ``public_ip``; ``rng`` draws its random ports."""

    public_ip: str
    behaviour: NatBehaviour
    rng: random.Random
    _flows: dict[tuple[int, Endpoint], _Flow] = field(default_factory=dict)
    _by_inside: dict[tuple[Endpoint, Endpoint], int] = field(default_factory=dict)
    _owner: dict[int, tuple[Endpoint, float]] = field(default_factory=dict)  # port: inside, until
    _reuse: dict[tuple[Endpoint, str], dict[int, float]] = field(default_factory=dict)
    _next_port: int = 20000
    poisoned: int = 0  # local flows created by unsolicited packets (bare Linux)

    def outbound(self, src: Endpoint, dst: Endpoint, now: float, ttl: int = 64) -> Endpoint | None:
        """The public source of a packet from inside ``src`` to ``dst`` (None: not sent)."""
        port = self._by_inside.get((src, dst))
        if port is not None:
            flow = self._flows.get((port, dst))
            if flow is not None and flow.inside == src and now < flow.expires_at:
                flow.expires_at = now + self.behaviour.timeout_s
                self._note(port, src, dst, flow.expires_at)
                return (self.public_ip, port) if ttl > 1 else None
            del self._by_inside[(src, dst)]
        if ttl <= 1:
            return None  # dropped before postrouting: no mapping made
        port = self._choose_port(src, dst, now)
        self._flows[(port, dst)] = _Flow(src, now + self.behaviour.timeout_s)
        self._by_inside[(src, dst)] = port
        self._note(port, src, dst, now + self.behaviour.timeout_s)
        return self.public_ip, port

    def inbound(self, port: int, src: Endpoint, now: float) -> Endpoint | None:
        """The inside destination of a packet from ``src`` to our ``port`` (None: not in)."""
        flow = self._live(port, src, now)
        if flow is not None:
            flow.expires_at = now + self.behaviour.timeout_s
            if flow.inside is not None:
                self._note(port, flow.inside, src, flow.expires_at)
            return flow.inside  # None for a local flow: the router swallows it again
        kind = self.behaviour.filtering
        owner = self._owner.get(port)
        if kind != "EDF" and owner is not None and now < owner[1]:
            inside = owner[0]
            if kind == "EIF" or now < self._reuse.get((inside, src[0]), {}).get(port, 0.0):
                return inside
        if self.behaviour.bare_linux:
            self._flows[(port, src)] = _Flow(None, now + self.behaviour.timeout_s)
            self.poisoned += 1
        return None

    def _live(self, port: int, remote: Endpoint, now: float) -> _Flow | None:
        flow = self._flows.get((port, remote))
        if flow is None:
            return None
        if now >= flow.expires_at:
            del self._flows[(port, remote)]
            return None
        return flow

    def _choose_port(self, src: Endpoint, dst: Endpoint, now: float) -> int:
        b = self.behaviour
        port: int | None = None
        if b.mapping != "EDM":  # reuse the port of a live flow from src (to dst's IP)
            key = (src, "" if b.mapping == "EIM" else dst[0])
            for p, until in self._reuse.get(key, {}).items():
                if now < until:
                    port = p
                    break
        if port is None:
            if b.ports == "preserve" and not self._taken_by_other(src[1], src, now):
                port = src[1]
            elif b.ports == "sequential":
                self._next_port = self._next_port + 1 if self._next_port < MAX_PORT else MIN_PORT
                port = self._next_port
            else:
                port = self._random_free(src, now)
        if self._live(port, dst, now) is not None:  # the tuple is taken: Linux picks anew
            port = self._random_free(src, now, dst)
        return port

    def _note(self, port: int, src: Endpoint, dst: Endpoint, until: float) -> None:
        """Remember that ``src`` holds ``port`` (toward ``dst``) until ``until``."""
        self._owner[port] = (src, max(until, self._owner.get(port, (src, 0.0))[1]))
        for key in ((src, ""), (src, dst[0])):
            self._reuse.setdefault(key, {})[port] = until

    def _taken_by_other(self, port: int, src: Endpoint, now: float) -> bool:
        owner = self._owner.get(port)
        return owner is not None and owner[0] != src and now < owner[1]

    def _random_free(self, src: Endpoint, now: float, dst: Endpoint | None = None) -> int:
        for _ in range(1000):
            port = self.rng.randrange(MIN_PORT, MAX_PORT + 1)
            if not self._taken_by_other(port, src, now) and (
                dst is None or self._live(port, dst, now) is None
            ):
                return port
        raise RuntimeError("the NAT model found no free port")
