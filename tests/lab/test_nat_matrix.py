"""Issue 5: the path reached between every kind of node, behind real nftables NATs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab
from weftlab.tailnet import Node, join, pings, start_node, start_second_relay

pytestmark = pytest.mark.lab

DIRECT_WITHIN_S = 5.0

# (a, b, path required); "either" pairs are measured and shown but not required.
PAIRS = [
    ("pub1", "pub2", "direct"),
    ("pub1", "easy1", "direct"),
    ("easy1", "easy2", "direct"),
    ("same1", "same2", "direct"),  # two nodes behind one NAT: over the LAN
    ("pub1", "hard1", "direct"),
    ("easy1", "hard1", "either"),
    ("hard1", "hard2", "relay"),
]


def path_to(a: Node, b_ip: str) -> str:
    for p in a.status()["peers"]:
        if b_ip in p["ips"]:
            return str(p["path"])
    return "none"


def test_nat_matrix(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    hosts = {"pub1": lab.host("pub1", inet), "pub2": lab.host("pub2", inet)}
    for name, kind in (("easy1", "easy"), ("easy2", "easy"), ("hard1", "hard"), ("hard2", "hard")):
        nat = lab.nat_router(f"nat-{name}", upstream=inet, kind=kind)  # type: ignore[arg-type]
        hosts[name] = lab.host(name, nat.lan)
    shared = lab.nat_router("nat-same", upstream=inet, kind="easy")
    hosts["same1"] = lab.host("same1", shared.lan)
    hosts["same2"] = lab.host("same2", shared.lan)

    control = start_control(ctl, tmp_path / "control")
    nodes = {name: start_node(tmp_path, h, name) for name, h in hosts.items()}
    join(control, list(nodes.values()))
    ips = {name: n.ip4() for name, n in nodes.items()}

    table = []
    failures = []
    for a, b, required in PAIRS:
        t0 = time.monotonic()
        pings(nodes[a], ips[b], count=1, wait_s=2)  # the first packet
        reached = "none"
        took = None
        deadline = t0 + DIRECT_WITHIN_S
        while time.monotonic() < deadline:
            reached = path_to(nodes[a], ips[b])
            if reached == "direct" and path_to(nodes[b], ips[a]) == "direct":
                took = time.monotonic() - t0
                break
            time.sleep(0.1)
        works = pings(nodes[a], ips[b], count=2, wait_s=2) and pings(nodes[b], ips[a], count=1)
        table.append((a, b, reached, took, works))
        if not works:
            failures.append(f"{a} <-> {b}: no ping")
        elif required == "direct" and took is None:
            failures.append(f"{a} <-> {b}: {reached}, not direct within {DIRECT_WITHIN_S} s")
        elif required == "relay" and reached != "relay":
            failures.append(f"{a} <-> {b}: {reached}, expected the relay")

    print("\n| a | b | path | time to direct | ping |\n|---|---|---|---:|---|")
    for a, b, reached, took, works in table:
        print(f"| {a} | {b} | {reached} | {'-' if took is None else f'{took:.2f} s'} | "
              f"{'ok' if works else 'FAIL'} |")  # fmt: skip
    assert not failures, failures


def test_netcheck_tells_a_hard_nat_from_two_stun_servers(lab: Lab, tmp_path: Path) -> None:
    import json

    from weftlab.netlab import poll_until

    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, relay_host = lab.host("ctl", inet), lab.host("relay2", inet)
    hosts = {"pub": lab.host("pub", inet)}
    for kind in ("easy", "hard"):
        nat = lab.nat_router(f"nat-{kind}", upstream=inet, kind=kind)  # type: ignore[arg-type]
        hosts[kind] = lab.host(kind, nat.lan)
    control = start_control(ctl, tmp_path / "control")
    start_second_relay(relay_host, control, tmp_path)
    nodes = {name: start_node(tmp_path, h, name) for name, h in hosts.items()}
    join(control, list(nodes.values()))
    reports = {}
    for name, n in nodes.items():
        poll_until(
            lambda n=n: len(json.loads(n.weft("netcheck", "--json").stdout)["stun_servers"]) == 2,
            timeout_s=15,
            what=f"{name} to hear from both STUN servers",
        )
        reports[name] = json.loads(n.weft("netcheck", "--json").stdout)
        print(name, reports[name])
    assert reports["pub"]["mapping_varies_by_destination"] is False
    assert reports["easy"]["mapping_varies_by_destination"] is False
    assert reports["hard"]["mapping_varies_by_destination"] is True
    assert set(reports["hard"]["relay_latency_ms"]) == {"default", "second"}
