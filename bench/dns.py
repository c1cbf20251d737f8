"""Benchmark: the node's resolver (quad-100), highest sustained queries per second.

Theory of operation
-------------------
One lab: a coordination server, two weftd nodes (a, r1) and a dnsmasq upstream that a's
resolv.conf names. dnsperf runs inside a's namespace against 100.100.100.100 for
``--seconds`` (5) per row without a rate limit but with at most 100 queries
outstanding, so the figure is what weftd sustains on one core:

* local: MagicDNS names only (r1's A and AAAA, the bare name, a PTR, an NXDOMAIN);
* forwarded: names the upstream dnsmasq answers.

A row reports the completed queries per second, the lost share and the average latency.
Needs root. Markdown table to stdout.

    python -m bench.dns [--seconds N]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from weftlab.control import start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import Node, join, start_node

SERVICE_V4 = "100.100.100.100"


def dnsperf(node: Node, names: list[str], seconds: float) -> tuple[float, float, float]:
    """(queries/s completed, lost %, average latency ms) over ``seconds``."""
    data = node.host.workdir / "bench-queries.txt"
    data.write_text("\n".join(names) + "\n")
    r = node.host.run(["dnsperf", "-s", SERVICE_V4, "-d", str(data), "-l", str(seconds),
                       "-c", "4", "-q", "100", "-t", "2"], timeout=seconds + 30)  # fmt: skip
    qps = re.search(r"Queries per second:\s+([\d.]+)", r.stdout)
    lost = re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", r.stdout)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", r.stdout)
    if not (qps and lost and avg):
        raise RuntimeError(f"dnsperf said: {r.stdout[-500:]} {r.stderr[-500:]}")
    return float(qps.group(1)), float(lost.group(1)), float(avg.group(1)) * 1000


def start_upstream(host: Host) -> None:
    log = host.workdir / "dnsmasq.log"
    host.popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={host.ip}", "--address=/example.test/198.18.0.99",
                "--user=root", "--group=root", f"--log-facility={log}"])  # fmt: skip
    host.wait_listening(53)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    rows = []
    with Lab() as lab:
        inet = lab.segment("inet", "198.18.0.0/24")
        ctl, up = lab.host("ctl", inet), lab.host("updns", inet)
        a_host, r1_host = lab.host("a", inet), lab.host("r1", inet)
        start_upstream(up)
        a_host.resolv_conf(f"nameserver {up.ip}\n")
        control = start_control(ctl, tmp / "control")
        a, r1 = start_node(tmp, a_host, "a"), start_node(tmp, r1_host, "r1")
        join(control, [a, r1])
        rev = ".".join(reversed(r1.ip4().split("."))) + ".in-addr.arpa"
        poll_until(
            lambda: a.host.run(["dig", f"@{SERVICE_V4}", "+short", "r1.weft.internal"]).stdout,
            timeout_s=10,
            what="a to resolve r1",
        )
        local = ["r1.weft.internal A", "r1.weft.internal AAAA", "r1 A", f"{rev} PTR",
                 "nosuch.weft.internal A"]  # fmt: skip
        forwarded = ["www.example.test A", "mail.example.test A", "db.example.test A"]
        for label, names in (("local names", local), ("forwarded names", forwarded)):
            qps, lost, avg_ms = dnsperf(a, names, args.seconds)
            rows.append((label, qps, lost, avg_ms))
    print("| quad-100 | queries/s | lost | avg latency |")
    print("|---|---:|---:|---:|")
    for label, qps, lost, avg_ms in rows:
        print(f"| {label} | {qps:,.0f} | {lost:.2f}% | {avg_ms:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
