"""Issue 16, the userspace node's paths: its TCP stack under random loss on the
underlay, and roaming (the userspace node's host moves to another network while
traffic runs through its SOCKS5 proxy).

Loss: nftables on the userspace node's host drops 2% of the UDP it sends and receives
(``numgen random mod 50 == 0``: WireGuard and disco), and 8 MiB cross each way, the
netstack receiving (curl through the SOCKS5 proxy) and sending (the TUN peer fetches a
file served on the userspace host's 127.0.0.1 through incoming forwarding).

Roaming: as test_relay_paths' roaming test for TUN nodes, with the same bounds; the
userspace node learns of its new address by polling (no netlink in this mode).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from weftlab.control import start_control
from weftlab.loss import drop_udp_randomly, dropped_udp
from weftlab.netlab import Host, Lab, Segment, poll_until
from weftlab.tailnet import Node, join, pings, start_node
from weftlab.userspace import (
    Download,
    UserspaceNode,
    curl,
    download,
    http_server,
    random_file,
    start_userspace_node,
)

pytestmark = pytest.mark.lab

SOCKS = "127.0.0.1:1055"
SIZE = 8 * 1024 * 1024  # bytes each way under loss
HELLO = "hello from a\n"


def tailnet(tmp: Path, inet: Segment, u_host: Host) -> tuple[Node, UserspaceNode]:
    """A control server and a TUN node ``a`` on ``inet``, a userspace node (SOCKS5 on
    SOCKS) on ``u_host``; joined, with a direct path between them."""
    lab = inet.lab
    control = start_control(lab.host("ctl", inet), tmp / "control")
    a = start_node(tmp, lab.host("a", inet), "a")
    u = start_userspace_node(u_host, ["--socks5-server", SOCKS])
    join(control, [a, u])
    u_ip = u.ip4()
    poll_until(lambda: pings(a, u_ip), timeout_s=15, what="a to ping the userspace node")
    poll_until(lambda: peer(a)["path"] == "direct", timeout_s=10, what="a direct path")
    return a, u


def peer(n: Node) -> dict[str, Any]:
    return n.status()["peers"][0]  # type: ignore[no-any-return]


def report(what: str, d: Download) -> str:
    return f"{what}: {d.size / 1e6:.1f} MB in {d.seconds:.2f} s, {d.mbit_s():.1f} Mbit/s"


def test_tcp_through_the_userspace_node_survives_2pct_underlay_loss(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a, u = tailnet(tmp_path, inet, lab.host("u", inet))
    u_ip = u.ip4()
    to_u = random_file(tmp_path / "www-a" / "big.bin", SIZE, seed=1)
    http_server(a.host, "::", 8000, tmp_path / "www-a", HELLO)
    from_u = random_file(tmp_path / "www-u" / "big.bin", SIZE, seed=2)
    http_server(u.host, "127.0.0.1", 8080, tmp_path / "www-u", "hello from u\n")

    drop_udp_randomly([u.host, a.host], one_in=50)  # both ways
    # The netstack receives: curl on u's host through the SOCKS5 proxy.
    down = download(u.host, "http://a.weft.internal:8000/big.bin", tmp_path / "down.bin",
                    "--socks5-hostname", SOCKS, timeout=240)  # fmt: skip
    # The netstack sends: a fetches from u's 127.0.0.1 through incoming forwarding.
    up = download(a.host, f"http://{u_ip}:8080/big.bin", tmp_path / "up.bin", timeout=240)
    counts = [dropped_udp(h) for h in (u.host, a.host)]
    seen, dropped = sum(c[0] for c in counts), sum(c[1] for c in counts)
    print(f"\n{report('a -> userspace node (SOCKS5)', down)}"
          f"\n{report('userspace node -> a (incoming forwarding)', up)}"
          f"\nUDP datagrams received by u and a: {seen}, {dropped} dropped"
          f" ({100 * dropped / max(1, seen):.2f}%); path now {peer(u)['path']}")  # fmt: skip
    assert down.code == 0, down.output
    assert up.code == 0, up.output
    assert (down.size, down.sha256) == (SIZE, to_u)
    assert (up.size, up.sha256) == (SIZE, from_u)
    assert seen > 10_000 and 0.015 * seen <= dropped <= 0.025 * seen  # 2%, per datagram


PING_REPLY = re.compile(r"\[(\d+\.\d+)\] \d+ bytes")


def test_userspace_node_roams_to_another_network(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    home = lab.nat_router("home", upstream=inet, kind="easy")
    cafe = lab.nat_router("cafe", upstream=inet, kind="easy")
    u_host = lab.host("u", home.lan)
    a, u = tailnet(tmp_path, inet, u_host)
    u_ip = u.ip4()
    big = random_file(tmp_path / "www-a" / "big.bin", 12 * 1024 * 1024, seed=3)
    http_server(a.host, "::", 8000, tmp_path / "www-a", HELLO)
    hello = "http://a.weft.internal:8000/hello.txt"
    assert curl(u_host, "--socks5-hostname", SOCKS, hello) == (0, HELLO)

    out: dict[str, Download] = {}
    lines: list[str] = []
    fetches: list[tuple[float, bool]] = []  # (wall time started, whole and right)
    stop = threading.Event()

    def stream() -> None:  # about 12 s: one connection through the proxy across the move
        out["stream"] = download(u_host, "http://a.weft.internal:8000/big.bin",
                                 tmp_path / "big.bin", "--socks5-hostname", SOCKS,
                                 "--limit-rate", "1M", timeout=90)  # fmt: skip

    def pinger() -> None:  # a pings the userspace node (its netstack answers)
        r = a.host.run(["ping", "-D", "-c", "150", "-i", "0.1", "-W", "1", u_ip], check=False,
                       timeout=60)  # fmt: skip
        lines.extend(r.stdout.splitlines())

    def fetcher() -> None:  # a new connection through the proxy every 0.25 s
        while not stop.is_set():
            started = time.time()
            ok = curl(u_host, "--socks5-hostname", SOCKS, hello, timeout=2) == (0, HELLO)
            fetches.append((started, ok))
            time.sleep(0.25)

    threads = [threading.Thread(target=f) for f in (stream, pinger, fetcher)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        old_endpoint = peer(a)["endpoint"]
        u_host.move_to(cafe.lan)  # new address, new NAT, new public address
        moved = time.time()
        poll_until(
            lambda: peer(a)["path"] == "direct" and peer(a)["endpoint"] != old_endpoint,
            timeout_s=10,
            what="a direct path to the userspace node's new address",
        )
        direct_again = time.time() - moved
    finally:
        threads[0].join()
        threads[1].join()
        stop.set()
        threads[2].join()

    replies = [float(m.group(1)) for ln in lines if (m := PING_REPLY.match(ln))]
    after = [ts for ts in replies if ts >= moved]
    new_ok = [ts for ts, ok in fetches if ok and ts >= moved]
    failed = [ts for ts, ok in fetches if not ok]
    s = out["stream"]
    print(f"\nfirst ping reply {after[0] - moved if after else float('nan'):.2f} s after the move;"
          f" direct to the new endpoint {peer(a)['endpoint']} (was {old_endpoint})"
          f" {direct_again:.2f} s after; first new connection through SOCKS5 started"
          f" {new_ok[0] - moved if new_ok else float('nan'):.2f} s after"
          f" ({len(failed)} of {len(fetches)} fetches failed);"
          f"\nthe stream across the move: curl {s.code}, {report('stream', s)}")  # fmt: skip
    assert after, "no ping reply after the move"
    assert after[0] - moved <= 3.0  # test_relay_paths' roaming bound
    assert new_ok, "no connection through the SOCKS5 proxy worked after the move"
    # The stream through the proxy survived the move: TCP retransmitted through it.
    assert s.code == 0 and s.sha256 == big, s.output
    assert peer(u)["path"] == "direct"
    r = u.weft_as_user("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\sa\s+online\s+direct \S+", r.stdout), r.stdout  # a's row
