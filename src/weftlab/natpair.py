"""Two weftd nodes, each behind its own lab NAT router, joined to one tailnet: the
topology of the NAT traversal lab tests (tests/lab/test_birthday.py) and the hard-NAT
rows of `make bench` (bench/run.py).

``nat_pair`` puts a NAT router of the asked kind ("easy", "hard", "bare") per node on an
"internet" segment, a weftd node on each router's LAN, and joins them through the
coordination server it is given. Options:

- ``second_relay``: a second relay region (weftlab.tailnet.start_second_relay), so that
  both nodes have two STUN servers and learn their NAT kind (birthday probing needs it);
- ``miniupnpd``: per node, whether its router offers port mapping
  (weftlab.miniupnpd, with a STUN answerer for miniupnpd on a host of the segment).

The helpers after it read a pair's state from `weft status --json` / `weft netcheck`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weftlab.control import Control
from weftlab.miniupnpd import MiniUpnpd, start_miniupnpd, start_stun
from weftlab.netlab import Host, Lab, NatRouter, Segment
from weftlab.tailnet import Node, join, start_node, start_second_relay
from weftnet.endpoint import VIA_PREFIX, Endpoint, split_via, try_parse_endpoint


@dataclass
class NatPair:
    nodes: list[Node]
    routers: list[NatRouter]
    miniupnpd: list[MiniUpnpd | None]
    # What the pair started besides the nodes (the second relay): stop() ends them.
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def stop(self) -> None:
        """Kill the nodes, miniupnpd and the second relay (the lab's boxes stay)."""
        for proc in [*(n.proc for n in self.nodes), *(m.proc for m in self.miniupnpd if m),
                     *self.processes]:  # fmt: skip
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def lab_host(lab: Lab, name: str, segment: Segment) -> Host:
    """The lab's host ``name``, made on ``segment`` when the lab has none yet (a harness
    that builds several topologies in one lab shares its control and STUN hosts)."""
    existing = lab.nodes.get(name)
    if existing is None:
        return lab.host(name, segment)
    if not isinstance(existing, Host):
        raise ValueError(f"the lab's {name!r} is not a host")
    return existing


def nat_pair(
    lab: Lab,
    inet: Segment,
    control: Control,
    work: Path,
    kinds: tuple[str, str],
    *,
    prefix: str = "",
    user: str = "alice",
    second_relay: bool = True,
    miniupnpd: Sequence[bool] = (False, False),
    node_args: Sequence[str] = (),
) -> NatPair:
    """Routers ``<prefix>nat1`` / ``nat2`` of ``kinds`` on ``inet``, with hosts
    ``<prefix>n1-<kind>`` / ``n2-<kind>`` behind them running weftd, joined as ``user``."""
    processes = []
    if second_relay:
        processes.append(start_second_relay(lab_host(lab, "relay2", inet), control, work))
    stun = None
    if any(miniupnpd):
        fresh = "stun" not in lab.nodes
        stun = lab_host(lab, "stun", inet)
        if fresh:
            start_stun(stun)
    routers, hosts, mapped = [], [], []
    for i, (kind, upnp) in enumerate(zip(kinds, miniupnpd, strict=True), 1):
        r = lab.nat_router(f"{prefix}nat{i}", upstream=inet, kind=kind)  # type: ignore[arg-type]
        routers.append(r)
        mapped.append(start_miniupnpd(r, stun) if upnp and stun is not None else None)
        hosts.append(lab.host(f"{prefix}n{i}-{kind}", r.lan))
    pair = NatPair([], routers, mapped, processes)
    try:
        for h in hosts:
            pair.nodes.append(start_node(work, h, h.name, extra=list(node_args)))
        join(control, pair.nodes, user=user)
    except BaseException:
        pair.stop()
        raise
    return pair


def nat_kind(n: Node) -> str | None:
    """The node's NAT kind by `weft netcheck`, once it has asked two STUN servers."""
    r = json.loads(n.weft("netcheck", "--json").stdout)
    return r.get("nat") if len(r["stun_servers"]) == 2 else None


def only_peer(n: Node) -> dict[str, Any]:
    """The node's one peer in `weft status --json`."""
    peers = n.status()["peers"]
    assert len(peers) == 1, f"{n.host.name} has {len(peers)} peers, not one"
    return dict(peers[0])


def both_direct(a: Node, b: Node) -> bool:
    return only_peer(a)["path"] == "direct" and only_peer(b)["path"] == "direct"


def traffic(src: Node, dst_ip: str, seconds: float) -> subprocess.Popen[Any]:
    """Pings every 0.2 s for ``seconds``: traffic that wants the path."""
    return src.host.popen(
        ["ping", "-q", "-i", "0.2", "-w", str(int(seconds)), dst_ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def leads_to(endpoint: str, ip: str) -> bool:
    """Whether a peer's endpoint in `weft status --json` (``ip:port``, or
    ``via:<local port>/<ip>:<port>`` from one of birthday probing's extra sockets) is a
    path to ``ip``. A birthday hit leaves the hard node on either: an extra socket's
    mapping was guessed, or an easy-side guess was the port of the mapping the main
    socket's own pings had made toward the easy side (a hard NAT lets that in too)."""
    if endpoint.startswith(VIA_PREFIX):
        host, _, port = endpoint.rpartition(":")
        try:
            remote: Endpoint | None = split_via((host, int(port)))[1]
        except ValueError:
            remote = None
    else:
        remote = try_parse_endpoint(endpoint)
    return remote is not None and remote.host == ip
