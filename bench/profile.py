"""Where weftd's CPU goes: `perf record` of both weftd processes of a weftd <-> weftd
iperf3 run in the bench's two-host lab, summarised by shared object (libgcrypt's
crypto, the kernel, the interpreter, the C extension) and by symbol.

    python -m bench.profile [--seconds N] [--top K] [--data PATH]

Needs root and Debian's ``linux-perf`` (``perf``). docs/dataplane.md quotes a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.run import HANDSHAKE_TIMEOUT_S, iperf, ping_once, start_tunnel
from weftlab.netlab import Lab, poll_until
from weftlab.proccpu import cpu_per_gbit, sessions_cpu_seconds
from weftlab.wgpeers import PeerProcess


def perf_table(data: Path, sort: str, top: int) -> str:
    """``perf report`` of ``data`` sorted by ``sort`` (dso or sym), the first ``top`` lines."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
         "-g", "none"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
    return "\n".join(lines[:top])


def daemon_pids(sids: Sequence[int]) -> list[int]:
    """The processes of the daemons' sessions (the launcher execs, so one each)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[3]) in sids:
                pids.append(int(entry))
    return pids


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="iperf3 run time (8)")
    p.add_argument("--top", type=int, default=25, help="symbols to print (25)")
    p.add_argument("--data", type=Path, help="keep perf's data file here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.profile needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("perf") is None:
        print("bench.profile needs perf: apt-get install linux-perf", file=sys.stderr)
        return 2
    data = args.data or Path(tempfile.mkdtemp(prefix="weft-profile-")) / "perf.data"
    Lab.cleanup_stale()
    with Lab() as lab:
        segment = lab.segment("bench", "198.18.0.0/24")
        client, server = lab.host("client", segment), lab.host("server", segment)
        started: list[PeerProcess] = []
        try:
            target = start_tunnel(client, server, "weftd", "weftd", started, None)
            poll_until(lambda: ping_once(client, target), timeout_s=HANDSHAKE_TIMEOUT_S,
                       what="a first ping through the tunnel")  # fmt: skip
            sids = [peer.process.pid for peer in started]
            pids = ",".join(str(pid) for pid in daemon_pids(sids))
            perf = subprocess.Popen(
                ["perf", "record", "-F", "999", "-g", "-o", str(data), "-p", pids],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            cpu_before = sessions_cpu_seconds(sids)
            result = iperf(client, server, target, args.seconds)
            cpu = sessions_cpu_seconds(sids) - cpu_before
            perf.send_signal(2)  # SIGINT: perf writes its data and exits
            perf.wait(timeout=60)
        finally:
            for peer in reversed(started):
                peer.stop()
    per_gbit = cpu_per_gbit(cpu, result.bytes_received)
    print(f"weftd <-> weftd: {result.gbit_s:.2f} Gbit/s, {per_gbit or 0:.2f} CPU s/Gbit")
    print("\nby shared object:")
    print(perf_table(data, "dso", 10))
    print(f"\nby symbol (first {args.top}):")
    print(perf_table(data, "sym", args.top))
    print(f"\nperf data: {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
