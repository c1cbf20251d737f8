"""`make demo`: a tailnet in network namespaces, then a plain WireGuard peer.

1. A coordination server (with its relay and STUN server) on a public host
   (198.18.0.0/24 is the lab's "internet"), serving https with a certificate from a CA
   made for the demo (every weftd gets --tls-ca), one node on the internet, two behind NAT
   routers of their own and one behind a hard NAT. They join with one auth key, every
   node pings every other, `weft ping` shows the paths (direct where the NATs allow,
   the relay between an easy and a hard NAT), names resolve through weftd's resolver
   (`ping laptop`, `getent hosts`, `dig`), then each `weft status`.
2. An access policy: only the server may be reached; a change is enforced by every
   node at once, and a policy whose tests fail is refused (docs/policy.md).
   Then a subnet router (the desktop routes its office LAN, where a printer runs no
   weftd) and an exit node (the phone's internet traffic leaves through the server's
   home connection, as a host on the internet sees). Last, the web console's URL and
   a local admin login, and its machine list seen through it (docs/console.md).
3. A Debian wireguard-go peer talks to a weftd run from a wg-quick file.

Everything is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from weftlab.control import Control, start_control
from weftlab.netlab import Host, Lab
from weftlab.tailnet import Node, start_node
from weftlab.wgpeers import (
    Peer,
    generate_keypair,
    overlay_cidrs,
    overlay_ips,
    start_weftd,
    start_wireguard_go,
    write_wg_quick_config,
)

PORT = 51820
DEMO_DOMAIN = "weft.internal"  # the server's default MagicDNS domain


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ping(
    host: Host, addr: str, label: str = "", count: int = 3, wait_s: float = 3, quiet: bool = False
) -> bool:
    cmd = ["ping", "-c", str(count), "-i", "0.2", "-W", str(wait_s), addr]
    r = host.run(cmd, check=False, timeout=20)
    summary = [ln for ln in r.stdout.splitlines() if "packet loss" in ln or "rtt" in ln]
    if not quiet:
        print(f"   {host.name} -> {label or addr}: {' / '.join(summary) or r.stderr.strip()}")
    return r.returncode == 0


def tailnet(lab: Lab, tmp: Path) -> bool:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    pub = lab.host("laptop", inet)
    nat1 = lab.nat_router("home", upstream=inet, kind="easy")
    nat2 = lab.nat_router("office", upstream=inet, kind="easy")
    nat3 = lab.nat_router("carrier", upstream=inet, kind="hard")
    n1 = lab.host("server", nat1.lan)
    n2 = lab.host("desktop", nat2.lan)
    n3 = lab.host("phone", nat3.lan)
    printer = lab.host("printer", nat2.lan)  # runs no weftd: reached through the desktop
    web = lab.host("web", inet)  # "the internet": says which address it sees
    say(
        f"coordination server on {ctl.ip}; laptop {pub.ip} on the internet; server "
        f"{n1.ip} behind NAT {nat1.wan_ip}; desktop {n2.ip} behind NAT {nat2.wan_ip}; "
        f"phone {n3.ip} behind a hard (random-port) NAT {nat3.wan_ip}"
    )
    control = start_control(ctl, tmp / "control")
    print(f"   weft-control serve --tls-cert ... -> {control.url} (a CA made for the demo;"
          " every weftd runs with --tls-ca)")  # fmt: skip
    control.admin("users", "create", "alice@example.com")
    key = control.admin(
        "keys", "create", "--user", "alice@example.com", "--reusable"
    ).stdout.strip()
    print(f"   weft-control keys create --user alice@example.com --reusable -> {key[:20]}..."
          f" (ends with the server key's fingerprint {key[-32:]})")  # fmt: skip
    nodes: list[Node] = [start_node(tmp, h, h.name) for h in (pub, n1, n2, n3)]
    for n in nodes:
        n.weft("up", "--login-server", control.url, "--auth-key", key, "--hostname", n.host.name)
        print(f"   {n.host.name}$ weft up --login-server {control.url} --auth-key ... -> "
              f"{n.ip4()}")  # fmt: skip
    ok = True
    say("every node pings every other over its 100.x address")
    ips = {n.host.name: n.ip4() for n in nodes}
    for a in nodes:
        for b in nodes:
            if a is not b:
                ok &= ping(a.host, ips[b.host.name], f"{b.host.name} ({ips[b.host.name]})")
    say("by name: weftd's resolver at 100.100.100.100 (MagicDNS), in each host's resolv.conf")
    for a, b in ((nodes[3], nodes[0]), (nodes[0], nodes[1])):
        r = a.host.run(["getent", "hosts", b.host.name], check=False)
        print(f"   {a.host.name}$ getent hosts {b.host.name} -> {' '.join(r.stdout.split())}")
        ok &= ping(a.host, b.host.name, f"{b.host.name} (ping {b.host.name})")
    fqdn = f"server.{DEMO_DOMAIN}"
    r = nodes[2].host.run(["dig", "+short", fqdn], check=False)
    print(f"   desktop$ dig +short {fqdn} -> {r.stdout.strip()}")
    ok &= r.stdout.strip() == ips["server"]
    say("disco pings show the path each pong took (relay first, direct where NATs allow)")
    phone = nodes[3]
    for other in (nodes[0], nodes[2]):
        r = phone.weft("ping", "-c", "3", other.host.name, check=False)
        print(f"   phone$ weft ping {other.host.name}")
        print("\n".join(f"     {ln}" for ln in (r.stdout + r.stderr).strip().splitlines()))
    for n in nodes:
        say(f"{n.host.name}$ weft status")
        print(n.weft("status").stdout.rstrip())
    say("phone$ weft netcheck")
    print(phone.weft("netcheck").stdout.rstrip())
    ok &= routes(control, nodes, printer, web)
    ok &= console(control, nodes)
    ok &= access_policy(control, tmp, nodes, ips)
    return ok


# A UDP server that answers each datagram with the address it came from.
WHOAMI_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, addr = s.recvfrom(100)
    s.sendto(addr[0].encode(), addr)
"""
WHOAMI_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(100)[0].decode())
except OSError:
    print("no answer")
"""
WHOAMI_PORT = 7777


def console(control: Control, nodes: list[Node]) -> bool:
    """The web console: a local admin login, and its machine list seen through it."""
    say(f"the web console: {control.url}/admin")
    control.admin("users", "create", "admin")
    control.admin("users", "role", "admin", "owner")
    password = control.admin("users", "set-password", "admin", "--generate").stdout.split()[-1]
    print("   weft-control users create admin; users role admin owner;"
          " users set-password admin --generate")  # fmt: skip
    print(f"   local admin login: admin / {password}")
    assert control.ca_file is not None and control.host is not None
    browser = [sys.executable, "-m", "weftlab.console_browser", control.url, str(control.ca_file)]
    r = control.host.run([*browser, "admin", password, "get", "/admin/machines"], check=False)
    if r.returncode != 0:
        print(f"   the console did not answer: {r.stderr.strip()[-300:]}")
        return False
    page = json.loads(r.stdout)
    listed = [n.host.name for n in nodes if f">{n.host.name}<" in page["text"]]
    print(f"   logged in as admin: the Machines page lists {', '.join(listed)}")
    return page["status"] == 200 and len(listed) == len(nodes)


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def routes(control: Control, nodes: list[Node], printer: Host, web: Host) -> bool:
    laptop, server, desktop, phone = nodes
    assert printer.segment is not None
    lan = str(printer.segment.network)  # the desktop's office LAN
    say(f"a subnet router: desktop routes its office LAN {lan}, where a printer runs no weftd")
    desktop.host._sysctl({"net.ipv4.ip_forward": 1})
    desktop.weft("set", "--advertise-routes", lan)
    laptop.weft("set", "--accept-routes")
    print(f"   desktop$ weft set --advertise-routes {lan}; laptop$ weft set --accept-routes")
    wait_until(lambda: lan in json.dumps(control.admin_json("nodes", "routes")))
    control.admin("nodes", "approve-routes", str(control.node_id("desktop")), "--routes", lan)
    print(f"   weft-control nodes approve-routes desktop --routes {lan}")
    print("\n".join(f"     {ln}" for ln in control.admin("nodes", "routes").stdout.splitlines()))
    ok = wait_until(lambda: ping(laptop.host, printer.ip, quiet=True, count=1, wait_s=1))
    ok &= ping(laptop.host, printer.ip, f"printer {printer.ip} (through desktop)")
    say("an exit node: phone's internet traffic leaves through the server's home connection")
    web.popen([sys.executable, "-c", WHOAMI_SERVER, str(WHOAMI_PORT)])
    web.wait_listening(WHOAMI_PORT)

    def seen_by_web() -> str:
        r = phone.host.run([sys.executable, "-c", WHOAMI_ASK, web.ip, str(WHOAMI_PORT)])
        return r.stdout.strip()

    before = seen_by_web()
    server.host._sysctl({"net.ipv4.ip_forward": 1})
    server.weft("set", "--advertise-exit-node")
    wait_until(lambda: "0.0.0.0/0" in json.dumps(control.admin_json("nodes", "routes")))
    control.admin("nodes", "approve-routes", str(control.node_id("server")), "--routes",
                  "0.0.0.0/0,::/0")  # fmt: skip
    print("   server$ weft set --advertise-exit-node;"
          " weft-control nodes approve-routes server --routes 0.0.0.0/0,::/0")  # fmt: skip
    wait_until(lambda: "server" in phone.weft("exit-node", "list").stdout)
    print("   phone$ weft exit-node list")
    print("\n".join(f"     {ln}" for ln in phone.weft("exit-node", "list").stdout.splitlines()))
    phone.weft("set", "--exit-node", "server")
    wait_until(lambda: seen_by_web() not in (before, "no answer"))
    after = seen_by_web()
    print(f"   web sees phone as {before}; after `weft set --exit-node server`: {after}")
    phone.weft("set", "--exit-node", "")
    ok &= before != after and after != "no answer"
    return ok


POLICY = """{
  // alice's devices may reach the server, and nothing else.
  "hosts": {"server": "%s"},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["server:*"]}],
  "tests": [{"src": "alice@example.com", "accept": ["server:22"]}],
}
"""


def access_policy(control: Control, tmp: Path, nodes: list[Node], ips: dict[str, str]) -> bool:
    laptop, server, desktop = nodes[0], nodes[1], nodes[2]
    path = tmp / "policy.hujson"
    path.write_text(POLICY % ips["server"])
    say("access policy: only the server may be reached (weft-control policy set)")
    print("\n".join(f"   {ln}" for ln in path.read_text().strip().splitlines()))
    print(f"   {control.admin('policy', 'set', str(path)).stdout.strip()}")
    started = time.monotonic()
    while ping(laptop.host, ips["desktop"], count=1, wait_s=0.2, quiet=True):
        if time.monotonic() - started > 5:
            return False
    took = time.monotonic() - started
    print(f"   in force {took:.2f} s later (the laptop no longer reaches the desktop):")
    ok = ping(laptop.host, ips["server"], f"server ({ips['server']}), allowed")
    ok &= not ping(
        laptop.host, ips["desktop"], f"desktop ({ips['desktop']}), denied", count=2, wait_s=1
    )
    ok &= not ping(server.host, ips["laptop"], "laptop, denied", count=2, wait_s=1)
    r = desktop.weft("whois", ips["server"])
    print(f"   desktop$ weft whois {ips['server']}")
    print("\n".join(f"     {ln}" for ln in r.stdout.strip().splitlines()))
    bad = tmp / "bad.hujson"
    bad.write_text(
        POLICY.replace('"accept": ["server:22"]', '"deny": ["server:22"]') % ips["server"]
    )
    r = control.admin("policy", "set", str(bad), check=False)
    print(f"   a policy whose tests fail: {r.stderr.strip()}")
    ok &= r.returncode != 0
    return ok


def wireguard_interop(lab: Lab, tmp: Path) -> bool:
    inet = lab.segment("wgnet", "198.18.100.0/24")
    alice, carol = lab.host("alice", inet), lab.host("carol", inet)
    ka, kc = generate_keypair(), generate_keypair()
    say(f"plain WireGuard: weftd on alice {alice.ip}, Debian's wireguard-go on carol {carol.ip}")
    write_wg_quick_config(
        tmp / "alice.conf", ka.private, overlay_cidrs(1), PORT, 1420,
        [Peer(kc.public, overlay_cidrs(3), f"{carol.ip}:{PORT}")],
    )  # fmt: skip
    start_weftd(alice, "wg0", tmp / "alice.conf")
    start_wireguard_go(
        carol, "wg0", kc.private, PORT, overlay_cidrs(3),
        [Peer(ka.public, overlay_cidrs(1), f"{alice.ip}:{PORT}")],
    )  # fmt: skip
    a4, a6 = overlay_ips(1)
    c4, c6 = overlay_ips(3)
    return ping(alice, c4) & ping(carol, a4) & ping(alice, c6) & ping(carol, a6)


def main() -> int:
    start = time.monotonic()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="weft-demo-") as tmpdir:
        ok = tailnet(lab, Path(tmpdir))
        ok &= wireguard_interop(lab, Path(tmpdir))
    say(f"{'all pings answered' if ok else 'SOME PINGS FAILED'} ({time.monotonic() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
