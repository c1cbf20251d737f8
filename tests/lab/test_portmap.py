"""Issue 19: port mapping. Behind a hard NAT whose router runs miniupnpd, weftd maps its
WireGuard port (PCP, NAT-PMP or UPnP IGD), publishes the mapped address, and pairs
that would use the relay go direct; the mapping is renewed and removed on `weft down`.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from weftlab.control import start_control
from weftlab.miniupnpd import MiniUpnpd, start_miniupnpd, start_stun
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import Node, join, pings, start_node

pytestmark = pytest.mark.lab

DIRECT_WITHIN_S = 5.0
LEASE_S = 6  # weftd asks for this (--port-map-lease): renewed every 3 s
WG_PORT = 41641


def peer(a: Node, b_ip: str) -> dict[str, Any]:
    for p in a.status()["peers"]:
        if b_ip in p["ips"]:
            return dict(p)
    raise AssertionError(f"{a.host.name} has no peer {b_ip}")


def mapping(n: Node) -> dict[str, Any]:
    pm = n.status()["port_mapping"]
    assert pm is not None, "port mapping is off"
    return dict(pm)


def path_log(n: Node, peer_name: str) -> list[tuple[float, str]]:
    """(wall-clock time, path) of every path change weftd logged for ``peer_name``
    (weftd logs JSON lines here: --log-format json)."""
    out = []
    for line in n.log().splitlines():
        if not line.startswith("{"):
            continue
        message = json.loads(line)["message"]
        if message.startswith(f"peer {peer_name}: path "):
            when = datetime.fromisoformat(json.loads(line)["time"]).timestamp()
            out.append((when, message.split(": path ", 1)[1]))
    return out


def time_to_direct(a: Node, b: Node) -> float:
    """Seconds from the moment the later of the two learned of the other (its first path
    logged, the relay) until the later went direct, by weftd's own clock and log: the
    test's polling of `weft status` on a loaded machine does not count."""
    logs = [path_log(a, b.host.name), path_log(b, a.host.name)]
    learned = max(log[0][0] for log in logs)
    direct = max(next(t for t, path in log if path.startswith("direct")) for log in logs)
    return direct - learned


def test_port_mapping_makes_hard_nats_direct(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, stun = lab.host("ctl", inet), lab.host("stun", inet)
    start_stun(stun)
    routers = {
        "hard1": lab.nat_router("nat-hard1", upstream=inet, kind="hard"),
        "hard2": lab.nat_router("nat-hard2", upstream=inet, kind="hard"),
        "easy": lab.nat_router("nat-easy", upstream=inet, kind="easy"),
    }
    # hard1's router speaks PCP, NAT-PMP and UPnP (weftd picks PCP); hard2's only UPnP.
    mu: dict[str, MiniUpnpd] = {
        "hard1": start_miniupnpd(routers["hard1"], stun),
        "hard2": start_miniupnpd(routers["hard2"], stun, natpmp=False),
    }
    hosts = {name: lab.host(name, r.lan) for name, r in routers.items()}
    control = start_control(ctl, tmp_path / "control")
    extra = ["--port-map-lease", str(LEASE_S), "--log-format", "json"]
    nodes = {name: start_node(tmp_path, h, name, extra=extra) for name, h in hosts.items()}
    join(control, list(nodes.values()))
    ips = {name: n.ip4() for name, n in nodes.items()}

    # The mappings, as weftd and as the routers see them.
    mapped = {}
    for name, protocol in (("hard1", "pcp"), ("hard2", "upnp")):
        pm = poll_until(
            lambda n=nodes[name]: (m := mapping(n))["mapped_address"] and m,
            timeout_s=10,
            what=f"{name}'s port mapping",
        )
        print(name, pm)
        assert pm["protocol"] == protocol
        assert pm["mapped_address"].startswith(routers[name].wan_ip + ":")
        mapped[name] = pm["mapped_address"]
        port = int(pm["mapped_address"].rsplit(":", 1)[1])
        assert (port, f"{hosts[name].ip}:{WG_PORT}") in mu[name].mapped_ports()
        published = nodes[name].status()["self"]["endpoints"]
        assert published[0] == {"endpoint": pm["mapped_address"], "type": "portmap"}, published
    assert mapping(nodes["easy"])["error"]  # no port mapping there: said so

    # netcheck: which protocols each gateway offers.
    report = json.loads(nodes["hard1"].weft("netcheck", "--json").stdout)["port_mapping"]
    assert report == {**report, "upnp": True, "nat_pmp": True, "pcp": True}
    assert report["mapped_address"] == mapped["hard1"]
    report = json.loads(nodes["hard2"].weft("netcheck", "--json").stdout)["port_mapping"]
    assert report == {**report, "upnp": True, "nat_pmp": False, "pcp": False}
    report = json.loads(nodes["easy"].weft("netcheck", "--json").stdout)["port_mapping"]
    assert report == {**report, "upnp": False, "nat_pmp": False, "pcp": False}
    text = nodes["hard1"].weft("netcheck").stdout
    assert "Port mapping: UPnP, NAT-PMP, PCP" in text and mapped["hard1"] in text

    # hard <-> hard and hard <-> easy: direct within 5 s, through a mapped port.
    for a, b in (("hard1", "hard2"), ("easy", "hard1"), ("easy", "hard2")):
        pings(nodes[a], ips[b], count=1, wait_s=2)
        poll_until(
            lambda a=a, b=b: (
                peer(nodes[a], ips[b])["path"] == peer(nodes[b], ips[a])["path"] == "direct"
            ),
            timeout_s=15,
            what=f"{a} <-> {b} direct",
        )
        took = time_to_direct(nodes[a], nodes[b])
        print(f"{a} <-> {b}: direct {took:.2f} s after both knew of the other;",
              path_log(nodes[a], b), path_log(nodes[b], a))  # fmt: skip
        assert took <= DIRECT_WITHIN_S, f"{a} <-> {b}: direct only after {took:.2f} s"
        used = {peer(nodes[a], ips[b])["endpoint"], peer(nodes[b], ips[a])["endpoint"]}
        assert used & set(mapped.values()), f"{a} <-> {b} direct, but not via a mapping: {used}"
        assert pings(nodes[a], ips[b], count=2, wait_s=2) and pings(nodes[b], ips[a])

    # Renewed before the lease ends: the routers still forward after several leases.
    start = time.monotonic()
    before = {n: mapping(nodes[n])["renewals"] for n in mapped}
    poll_until(
        lambda: all(mapping(nodes[n])["renewals"] >= before[n] + 3 for n in mapped),
        timeout_s=3 * LEASE_S,
        what="three more renewals of each mapping",
    )
    assert time.monotonic() - start > LEASE_S  # longer than one lease: renewals kept it
    for name, address in mapped.items():
        pm = mapping(nodes[name])
        assert pm["mapped_address"] == address and pm["error"] is None, pm
        assert any(port == int(address.rsplit(":", 1)[1]) for port, _ in mu[name].mapped_ports())
    assert peer(nodes["hard1"], ips["hard2"])["path"] == "direct"

    # `weft down` removes the mapping from the router; `weft up` maps again.
    for name in mapped:
        nodes[name].weft("down")
        poll_until(lambda name=name: not mu[name].mapped_ports(), timeout_s=5,
                   what=f"{name}'s mapping removed")  # fmt: skip
        assert mapping(nodes[name])["mapped_address"] is None
    nodes["hard1"].weft("up")
    poll_until(lambda: mapping(nodes["hard1"])["mapped_address"], timeout_s=10, what="re-mapped")
    assert mu["hard1"].mapped_ports()

    # weftd's shutdown removes it too.
    nodes["hard1"].proc.send_signal(signal.SIGTERM)
    nodes["hard1"].proc.wait(timeout=15)
    assert not mu["hard1"].mapped_ports()
    for n in nodes.values():
        assert "Traceback" not in n.log(), n.log()[-3000:]
