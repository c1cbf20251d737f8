"""`make demo`: weftd peers in network namespaces, then a wireguard-go peer.

Builds a small lab (198.18.0.0/24 "internet"), runs weftd on alice and bob, and Debian's
wireguard-go on carol; alice knows both. It shows each ping across the tunnels and
alice's `weft status`, then removes everything (also on failure or Ctrl-C).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from weftnet.testing.netlab import Host, Lab
from weftnet.testing.wgpeers import (
    Peer,
    generate_keypair,
    overlay_cidrs,
    overlay_ips,
    start_weftd,
    start_wireguard_go,
    write_wg_quick_config,
)

PORT = 51820


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ping(host: Host, addr: str) -> bool:
    r = host.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", addr], check=False, timeout=20)
    lines = [ln for ln in r.stdout.splitlines() if "bytes from" in ln or "packet loss" in ln]
    for ln in lines:
        print(f"   {host.name}$ {ln}")
    return r.returncode == 0


def main() -> int:
    ok = True
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="weft-demo-") as tmpdir:
        tmp = Path(tmpdir)
        inet = lab.segment("inet", "198.18.0.0/24")
        alice, bob, carol = (lab.host(n, inet) for n in ("alice", "bob", "carol"))
        ka, kb, kc = generate_keypair(), generate_keypair(), generate_keypair()
        say(f"alice {alice.ip}, bob {bob.ip} run weftd; carol {carol.ip} runs wireguard-go")
        write_wg_quick_config(
            tmp / "alice.conf",
            ka.private,
            overlay_cidrs(1),
            PORT,
            1420,
            [
                Peer(kb.public, overlay_cidrs(2), f"{bob.ip}:{PORT}"),
                Peer(kc.public, overlay_cidrs(3), f"{carol.ip}:{PORT}"),
            ],
        )
        write_wg_quick_config(
            tmp / "bob.conf", kb.private, overlay_cidrs(2), PORT, 1420,
            [Peer(ka.public, overlay_cidrs(1), f"{alice.ip}:{PORT}")],
        )  # fmt: skip
        sock = str(tmp / "alice.sock")
        start_weftd(alice, "weft0", tmp / "alice.conf", ["--socket", sock])
        start_weftd(bob, "weft0", tmp / "bob.conf")
        start_wireguard_go(
            carol, "wg0", kc.private, PORT, overlay_cidrs(3),
            [Peer(ka.public, overlay_cidrs(1), f"{alice.ip}:{PORT}")],
        )  # fmt: skip
        a4, a6 = overlay_ips(1)
        b4, b6 = overlay_ips(2)
        c4, c6 = overlay_ips(3)
        say("weftd <-> weftd")
        ok &= ping(alice, b4) & ping(bob, a4) & ping(alice, b6) & ping(bob, a6)
        say("weftd <-> wireguard-go")
        ok &= ping(alice, c4) & ping(carol, a4) & ping(alice, c6) & ping(carol, a6)
        time.sleep(0.2)  # let the last replies be counted before the status snapshot
        say("alice: weft status")
        subprocess.run(
            alice.exec_argv([sys.executable, "-m", "weftnet.cli.main", "--socket", sock, "status"]),
            check=False,
        )
        say("all pings answered" if ok else "SOME PINGS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
