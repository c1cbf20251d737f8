"""Benchmark: weftd against wireguard-go, TCP throughput and ping RTT, in a two-host lab.

Theory of operation
-------------------
One lab (see weftlab.netlab) with two public hosts, ``client`` and ``server``,
on one bridged segment. For each configuration the harness brings up the peers
(nothing for the raw underlay), waits until a ping crosses the tunnel (the first
handshake), then measures

* ping RTT: ``ping -c 20 -i 0.05``, the average in ms;
* TCP throughput: ``iperf3`` for ``--seconds`` (10) with one stream, client to server,
  the receiver's figure in Gbit/s;

and stops the peers again. The two routed rows put a weftd router in front of a plain
host: ``tailnet-subnet`` through a subnet router on the target's LAN (behind its NAT
router), ``tailnet-exit`` through an exit node behind a NAT to the ``server`` host as an
"internet" host; compare them with ``tailnet-direct`` of the same run. The hard-NAT
rows put the client behind an easy NAT and the server behind a hard one (issue 19,
docs/nat-traversal.md) and measure only once `weft status --json` shows the pair direct
(within DIRECT_TIMEOUT_S, pings flowing; else the row is an error):
``tailnet-hardnat-birthday`` by birthday probing (two relay regions, no port mapping;
the hard node sends from an extra socket, a ``via:`` endpoint), ``tailnet-hardnat-portmap``
through the hard router's port mapping (miniupnpd; the easy node's endpoint for the peer
is the mapped address). The JSON report also has, per row, the sender's TCP
retransmissions and the server's UDP receive-buffer drops (the usual place a
userspace tunnel loses packets when its reader falls behind). In "X <-> Y", X runs on
the client (it encrypts the bulk data) and Y on the server.

wireguard-go builds (bench.wgbuilds): ``--wireguard-go PATH[=LABEL]``, repeatable (or
``WEFT_BENCH_WIREGUARD_GO``, ":"-separated); by default Debian's /usr/bin/wireguard-go
and the upstream build in ../shared/tools/wireguard-go-20250522/ (relative to the repo)
when it is there, checked against its SHA256SUMS. The rows with wireguard-go in them
(``wggo-wggo``, ``weftd-wggo``) run once per build, labelled with its version. The
ratio column is throughput relative to ``wggo-wggo`` of the baseline build: the newest
version (the upstream build when present, else Debian's); the header names it.

CPU cost: "CPU s/Gbit" is the CPU time (user + system, /proc/PID/stat, weftlab.proccpu)
of the row's data-plane processes, both ends (wireguard-go or weftd, each with all its
threads and helper processes: its whole session; for the routed rows the client's weftd
and the router's; the relay's forwarding inside weft-control is not counted), over the
iperf3 run, divided by the gigabits the receiver got. It says something even on a busy machine, where Gbit/s alone does not.
The raw underlay has no such process ("-").

A configuration that fails (for example weftd not starting) becomes a row
"error: <first line of the reason>"; the others still run. The exit code is 1 if any
row failed. Needs root. Results go to stdout as a Markdown table and, with ``--json``,
to a file.

    python -m bench.run [--seconds N] [--only raw,wggo-wggo,...] [--json PATH]
                        [--wireguard-go PATH[=LABEL]]...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.wgbuilds import Build, BuildError, baseline, resolve, select_specs
from weftlab.control import start_control
from weftlab.natpair import lab_host, leads_to, nat_kind, nat_pair, only_peer, traffic
from weftlab.netlab import Host, Lab, LabError, poll_until
from weftlab.proccpu import cpu_per_gbit, sessions_cpu_seconds
from weftlab.tailnet import Node, join, start_node
from weftlab.wgpeers import (
    Peer as WgPeer,
)
from weftlab.wgpeers import (
    PeerProcess,
    generate_keypair,
    overlay_cidrs,
    overlay_ips,
    start_weftd,
    start_wireguard_go,
    write_wg_quick_config,
)

CONFIGS = {  # key -> (name, client implementation, server implementation)
    "raw": ("raw underlay", None, None),
    "wggo-wggo": ("wireguard-go <-> wireguard-go", "wireguard-go", "wireguard-go"),
    "weftd-wggo": ("weftd <-> wireguard-go", "weftd", "wireguard-go"),
    "tailnet-direct": ("tailnet weftd <-> weftd, direct", "tailnet", "direct"),
    "tailnet-relay": ("tailnet weftd <-> weftd, via the relay", "tailnet", "relay"),
    # An easy NAT <-> a hard NAT (docs/nat-traversal.md): direct by birthday probing
    # (over the hard side's extra socket, a via: endpoint), or through the hard router's
    # port mapping (miniupnpd).
    "tailnet-hardnat-birthday": (
        "tailnet weftd easy NAT <-> hard NAT, direct by birthday probing",
        "tailnet",
        "hardnat-birthday",
    ),
    "tailnet-hardnat-portmap": (
        "tailnet weftd easy NAT <-> hard NAT, direct by port mapping",
        "tailnet",
        "hardnat-portmap",
    ),
    "tailnet-subnet": ("tailnet weftd -> subnet router -> plain host", "tailnet", "subnet"),
    "tailnet-exit": ("tailnet weftd -> exit node -> internet host", "tailnet", "exit"),
    "weftd-weftd": ("weftd <-> weftd", "weftd", "weftd"),
    # The client is an unprivileged weftd --tun userspace-networking; iperf3 reaches the
    # server's TUN node through its SOCKS5 proxy (weftlab.socksforward), docs/userspace.md.
    "userspace-socks5": ("userspace SOCKS5 -> tailnet weftd (TUN)", "userspace", "socks5"),
}
BASELINE = "wggo-wggo"
PER_BUILD = ("wggo-wggo", "weftd-wggo")  # run once per wireguard-go build
WG_PORT = 51820
WG_IF = "wg0"
MTU = 1420
IPERF_PORT = 5201  # iperf3's default
HANDSHAKE_TIMEOUT_S = 15.0  # for the first ping to cross a new tunnel
HARDNAT = ("hardnat-birthday", "hardnat-portmap")  # server kinds of the hard-NAT rows
NAT_KIND_TIMEOUT_S = 30.0  # both nodes asked two STUN servers
DIRECT_TIMEOUT_S = 45.0  # with pings flowing: the probing or the mapping found the path
IPERF_SLACK_S = 30.0  # on top of --seconds: connection setup and the final report


@dataclass
class Row:
    key: str
    configuration: str
    gbit_s: float | None = None
    ping_avg_ms: float | None = None
    ratio: float | None = None  # gbit_s / the baseline's gbit_s
    error: str | None = None
    wireguard_go: str | None = None  # the build's label, for the PER_BUILD rows
    # CPU cost: user + system seconds of the data-plane processes during iperf3.
    cpu_s: float | None = None
    gbit_moved: float | None = None  # gigabits the receiver got
    cpu_s_per_gbit: float | None = None
    dataplane_processes: int = 0  # how many sessions (daemons) cpu_s adds up
    # Diagnostics for the JSON report: where the losses TCP reacted to happened.
    tcp_retransmits: int | None = None
    server_udp_rcvbuf_errors: int | None = None  # datagrams dropped at a full socket buffer


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="iperf3 run time (10)")
    p.add_argument("--pings", type=int, default=20, help="pings per configuration (20)")
    p.add_argument("--ping-interval", type=float, default=0.05, help="seconds between pings")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEYS",
        help=f"comma-separated configurations to run, of: {', '.join(CONFIGS)}",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    p.add_argument(
        "--wireguard-go",
        action="append",
        default=[],
        metavar="PATH[=LABEL]",
        help="a wireguard-go build to compare, repeatable (else $WEFT_BENCH_WIREGUARD_GO, "
        "':'-separated; else Debian's and ../shared/tools/wireguard-go-20250522/)",
    )
    args = p.parse_args(argv)
    try:
        args.wireguard_go_specs = select_specs(args.wireguard_go, os.environ)
    except BuildError as err:
        p.error(str(err))
    keys = [k for item in args.only for k in item.split(",") if k] or list(CONFIGS)
    unknown = [k for k in keys if k not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    args.keys = keys
    if args.seconds <= 0 or args.pings <= 0:
        p.error("--seconds and --pings must be positive")
    return args


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# -- peers -------------------------------------------------------------------------------


def start_peer(
    kind: str, host: Host, n: int, private_key: str, peer: WgPeer, build: Build | None
) -> PeerProcess:
    """Peer number ``n`` (overlay address n) of ``kind`` in ``host``."""
    if kind == "wireguard-go":
        binary = str(build.path) if build is not None else "wireguard-go"
        cidrs = overlay_cidrs(n)
        return start_wireguard_go(
            host, WG_IF, private_key, WG_PORT, cidrs, [peer], MTU, binary=binary
        )
    config = write_wg_quick_config(
        host.workdir / f"bench-{WG_IF}.conf", private_key, overlay_cidrs(n), WG_PORT, MTU, [peer]
    )
    return start_weftd(host, WG_IF, config)


def start_tunnel(
    client: Host,
    server: Host,
    client_kind: str,
    server_kind: str,
    started: list[PeerProcess],
    build: Build | None,
) -> str:
    """Bring up both peers (appending them to ``started``); return the server's overlay IPv4."""
    keys_c, keys_s = generate_keypair(), generate_keypair()
    started.append(
        start_peer(
            server_kind, server, 2, keys_s.private,
            WgPeer(keys_c.public, overlay_cidrs(1), f"{client.ip}:{WG_PORT}"), build,
        )
    )  # fmt: skip
    started.append(
        start_peer(
            client_kind, client, 1, keys_c.private,
            WgPeer(keys_s.public, overlay_cidrs(2), f"{server.ip}:{WG_PORT}"), build,
        )
    )  # fmt: skip
    return overlay_ips(2)[0]


# -- measurements --------------------------------------------------------------------------

_RTT_RE = re.compile(r"= [\d.]+/(?P<avg>[\d.]+)/[\d.]+/[\d.]+ ms")


def ping_once(host: Host, target: str) -> bool:
    return host.run(["ping", "-c", "1", "-W", "1", target], check=False).returncode == 0


def ping_avg_ms(host: Host, target: str, count: int, interval_s: float) -> float:
    cmd = ["ping", "-q", "-c", str(count), "-i", str(interval_s), "-W", "1", target]
    proc = host.run(cmd, check=False, timeout=count * (interval_s + 1) + 10)
    match = _RTT_RE.search(proc.stdout)
    if match is None:
        raise RuntimeError(f"ping {target}: no RTT summary: {proc.stdout.strip()[-200:]}")
    return float(match["avg"])


@dataclass
class IperfResult:
    gbit_s: float  # at the receiver
    bytes_received: int
    retransmits: int  # at the sender


def iperf(
    client: Host, server: Host, target: str, seconds: float, via: tuple[str, int] | None = None
) -> IperfResult:
    """One iperf3 run; with ``via`` the client connects there (a forwarder to ``target``)
    instead."""
    daemon = server.popen(
        ["iperf3", "-s", "-1", "-B", target, "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_listening(IPERF_PORT, proto="tcp")
        host, port = via or (target, IPERF_PORT)
        cmd = ["iperf3", "-c", host, "-p", str(port), "-t", f"{seconds:g}", "-J"]
        cmd += ["--connect-timeout", "5000"]
        proc = client.run(cmd, check=False, timeout=seconds + IPERF_SLACK_S)
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3: {(proc.stderr or proc.stdout).strip()[:200]}") from None
        if "error" in report:
            raise RuntimeError(f"iperf3: {report['error']}")
        end = report["end"]
        return IperfResult(
            end["sum_received"]["bits_per_second"] / 1e9,
            int(end["sum_received"]["bytes"]),
            int(end["sum_sent"]["retransmits"]),
        )
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait()


def udp_rcvbuf_errors(host: Host) -> int:
    """The host's UDP RcvbufErrors counter (/proc/net/snmp is per namespace)."""
    lines = [line.split() for line in host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [fields for fields in lines if fields[0] == "Udp:"][:2]
    return int(values[names.index("RcvbufErrors")])


def start_tailnet(
    lab: Lab,
    client: Host,
    server: Host,
    path: str,
    cleanup: list[Callable[[], object]],
    sids: list[int],
) -> str:
    """A coordination server on a third host and weftd nodes on client and server, joined
    with an auth key; with path "relay", UDP between them is blocked. Returns the server
    node's 100.x address once the path is the one asked for."""
    work = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    ctl = lab_host(lab, "ctl", client.segment)  # type: ignore[arg-type]
    if path == "relay":
        lab.block_udp(client, server)
        cleanup.append(lambda: lab.unblock_udp(client, server))
    control = start_control(ctl, work / "control")
    cleanup.append(control.kill)
    nodes = []
    for host in (client, server):
        nodes.append(start_node(work, host, host.name))
        cleanup.append(nodes[-1].kill9)
        sids.append(nodes[-1].proc.pid)
    join(control, nodes, user="bench")
    poll_until(
        lambda: nodes[0].status()["peers"] and nodes[0].status()["peers"][0]["path"] == path,
        timeout_s=HANDSHAKE_TIMEOUT_S,
        what=f"the {path} path",
    )
    return nodes[1].ip4()


def start_hardnat(
    lab: Lab,
    client: Host,
    technique: str,
    cleanup: list[Callable[[], object]],
    sids: list[int],
) -> tuple[Host, Host, str]:
    """An easy NAT and a hard NAT on the bench segment with a weftd node behind each,
    joined (weftlab.natpair). ``technique`` "hardnat-birthday": two relay regions (so the
    nodes know their NAT kinds), no port mapping; "hardnat-portmap": one relay region,
    miniupnpd on the hard NAT's router. With pings flowing from the easy node, waits
    until both nodes say direct through what the technique opened (the hard node's path
    on the easy NAT's address; the hard node's mapped address); RuntimeError when the pair stays
    on the relay. Returns (the easy node's host, the hard node's, the hard node's 100.x)."""
    work = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    segment = client.segment
    assert segment is not None
    control = start_control(lab_host(lab, "ctl", segment), work / "control")
    cleanup.append(control.kill)
    birthday = technique == "hardnat-birthday"
    pair = nat_pair(
        lab, segment, control, work, ("easy", "hard"), prefix="bd-" if birthday else "pm-",
        user="bench", second_relay=birthday, miniupnpd=(False, not birthday),
    )  # fmt: skip
    cleanup.append(pair.stop)
    easy, hard = pair.nodes
    sids += [easy.proc.pid, hard.proc.pid]
    if birthday:
        poll_until(lambda: nat_kind(easy) == "easy" and nat_kind(hard) == "hard",
                   timeout_s=NAT_KIND_TIMEOUT_S, interval_s=0.5, what="the NAT kinds")  # fmt: skip
    target = hard.ip4()
    pinger = traffic(easy, target, DIRECT_TIMEOUT_S + 5)
    try:
        poll_until(lambda: hardnat_direct(easy, hard, birthday, pair.routers[0].wan_ip),
                   timeout_s=DIRECT_TIMEOUT_S, interval_s=0.5, what="the direct path")  # fmt: skip
    except TimeoutError:
        raise RuntimeError(
            f"not direct by {'birthday probing' if birthday else 'port mapping'} after "
            f"{DIRECT_TIMEOUT_S:g} s: {path_summary(easy, hard)}"
        ) from None
    finally:
        pinger.kill()
        pinger.wait()
    return easy.host, hard.host, target


def hardnat_direct(easy: Node, hard: Node, birthday: bool, easy_wan_ip: str) -> bool:
    """Both nodes' one peer is direct; by birthday probing the hard node's path leads to
    the easy NAT (from whichever socket the hit opened: weftlab.natpair.leads_to), by
    port mapping the easy node reaches the hard one's mapped address."""
    e, h = easy.status()["peers"], hard.status()["peers"]
    if len(e) != 1 or len(h) != 1 or e[0]["path"] != "direct" or h[0]["path"] != "direct":
        return False
    if birthday:
        return leads_to(str(h[0]["endpoint"]), easy_wan_ip)
    mapped = (hard.status()["port_mapping"] or {}).get("mapped_address")
    return mapped is not None and e[0]["endpoint"] == mapped


def path_summary(easy: Node, hard: Node) -> str:
    """Each side's path and endpoint, and the hard side's mapping or probing, for an error."""
    parts = []
    for n in (easy, hard):
        try:
            p = only_peer(n)
        except AssertionError as err:
            parts.append(str(err))
            continue
        bd = (p.get("nat_traversal") or {}).get("birthday")
        parts.append(f"{n.host.name} path {p['path']} endpoint {p['endpoint']} birthday {bd}")
    pm = hard.status()["port_mapping"] or {}
    parts.append(f"port mapping {pm.get('mapped_address')} error {pm.get('error')}")
    return "; ".join(parts)


SOCKS5 = ("127.0.0.1", 1055)
FORWARD_PORT = 15201  # weftlab.socksforward on the client: to the server's iperf3


def start_userspace(
    lab: Lab, client: Host, server: Host, cleanup: list[Callable[[], object]], sids: list[int]
) -> tuple[str, str]:
    """An unprivileged userspace weftd with a SOCKS5 proxy on ``client``, a TUN weftd on
    ``server``, joined; a forwarder through the proxy to the server's iperf3 port.
    Returns (the server's 100.x address, the client's)."""
    from weftlab.userspace import start_userspace_node

    work = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    ctl = lab_host(lab, "ctl", client.segment)  # type: ignore[arg-type]
    control = start_control(ctl, work / "control")
    cleanup.append(control.kill)
    tun_node = start_node(work, server, server.name)
    cleanup.append(tun_node.kill9)
    user_node = start_userspace_node(client, ["--socks5-server", f"{SOCKS5[0]}:{SOCKS5[1]}"])
    cleanup.append(user_node.kill9)
    sids += [tun_node.proc.pid, user_node.proc.pid]
    join(control, [tun_node, user_node], user="bench")
    target, mine = tun_node.ip4(), user_node.ip4()
    poll_until(lambda: ping_once(server, mine), timeout_s=HANDSHAKE_TIMEOUT_S,
               what="a first ping to the userspace node")  # fmt: skip
    proxy = f"{SOCKS5[0]}:{SOCKS5[1]}"
    fwd = client.popen([sys.executable, "-m", "weftlab.socksforward", str(FORWARD_PORT), proxy,
                        f"{target}:{IPERF_PORT}"], stdout=subprocess.DEVNULL)  # fmt: skip
    cleanup.append(fwd.kill)
    client.wait_listening(FORWARD_PORT, proto="tcp")
    return target, mine


def start_routed(
    lab: Lab,
    client: Host,
    server: Host,
    via: str,
    cleanup: list[Callable[[], object]],
    sids: list[int],
) -> tuple[Host, str]:
    """``via`` "subnet": a weftd subnet router and a plain target host on a LAN behind a
    NAT router; "exit": a weftd exit node behind a NAT, and ``server`` as the internet
    host. The client's weftd accepts the route (or uses the exit node), approved by the
    admin. Returns (the host iperf3 serves on, the address the client aims at)."""
    work = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    ctl = lab_host(lab, "ctl", client.segment)  # type: ignore[arg-type]
    site = lab.nat_router(f"{via}-nat", upstream=client.segment)  # type: ignore[arg-type]
    router = lab.host(f"{via}-gw", site.lan)
    router._sysctl({"net.ipv4.ip_forward": 1})
    target = lab.host(f"{via}-host", site.lan) if via == "subnet" else server
    control = start_control(ctl, work / "control")
    cleanup.append(control.kill)
    control.admin("users", "create", "bench")
    key = control.admin("keys", "create", "--user", "bench", "--reusable").stdout.strip()
    nodes = {}
    for host in (client, router):
        node = nodes[host.name] = start_node(work, host, host.name)
        cleanup.append(node.kill9)
        sids.append(node.proc.pid)
        # `weft down` first: a killed weftd leaves its kill switch (table 52) in place,
        # which would cut the hosts off for the rows after this one.
        cleanup.append(lambda node=node: node.weft("down", check=False))
    routes = [str(site.lan.network)] if via == "subnet" else ["0.0.0.0/0", "::/0"]
    flag = ["--advertise-routes", routes[0]] if via == "subnet" else ["--advertise-exit-node"]
    login = ["up", "--login-server", control.url, "--auth-key", key]
    nodes[router.name].weft(*login, "--hostname", "gw", *flag)
    nodes[client.name].weft(*login, "--hostname", client.name)
    gw_id = str(control.node_id("gw"))
    poll_until(lambda: routes[0] in json.dumps(control.admin_json("nodes", "routes")),
               timeout_s=HANDSHAKE_TIMEOUT_S, what="the route announced")  # fmt: skip
    control.admin("nodes", "approve-routes", gw_id, "--routes", ",".join(routes))
    use = ["--accept-routes"] if via == "subnet" else ["--exit-node", "gw"]
    poll_until(lambda: nodes[client.name].weft("set", *use, check=False).returncode == 0,
               timeout_s=HANDSHAKE_TIMEOUT_S, what="the client to use the route")  # fmt: skip
    return target, target.ip


def row_name(key: str, build: Build | None) -> str:
    name = CONFIGS[key][0]
    return name if build is None else f"{name} ({build.label})"


def measure(
    lab: Lab,
    client: Host,
    server: Host,
    key: str,
    args: argparse.Namespace,
    build: Build | None = None,
) -> Row:
    _name, client_kind, server_kind = CONFIGS[key]
    row = Row(key, row_name(key, build), wireguard_go=build.label if build else None)
    started: list[PeerProcess] = []
    cleanup: list[Callable[[], object]] = []
    sids: list[int] = []  # the data-plane processes' sessions (Host.popen: pid == sid)
    try:
        target = server.ip
        via: tuple[str, int] | None = None
        if server_kind == "socks5":  # no TUN on the client: ping it from the server
            ping_once(client, server.ip)
            target, mine = start_userspace(lab, client, server, cleanup, sids)
            row.ping_avg_ms = ping_avg_ms(server, mine, args.pings, args.ping_interval)
            via = ("127.0.0.1", FORWARD_PORT)
        else:
            if server_kind in ("subnet", "exit"):
                ping_once(client, server.ip)
                server, target = start_routed(lab, client, server, server_kind, cleanup, sids)
            elif server_kind in HARDNAT:
                client, server, target = start_hardnat(lab, client, server_kind, cleanup, sids)
            elif client_kind == "tailnet" and server_kind is not None:
                ping_once(client, server.ip)
                target = start_tailnet(lab, client, server, server_kind, cleanup, sids)
            elif client_kind is not None and server_kind is not None:
                target = start_tunnel(client, server, client_kind, server_kind, started, build)
                sids += [peer.process.pid for peer in started]
            poll_until(
                lambda: ping_once(client, target),
                timeout_s=HANDSHAKE_TIMEOUT_S,
                what=f"a first ping from client to {target}",
            )
            row.ping_avg_ms = ping_avg_ms(client, target, args.pings, args.ping_interval)
        drops_before = udp_rcvbuf_errors(server)
        cpu_before = sessions_cpu_seconds(sids)
        result = iperf(client, server, target, args.seconds, via)
        cpu_after = sessions_cpu_seconds(sids)
        row.gbit_s, row.tcp_retransmits = result.gbit_s, result.retransmits
        row.server_udp_rcvbuf_errors = udp_rcvbuf_errors(server) - drops_before
        if sids:
            add_cpu(row, cpu_after - cpu_before, result.bytes_received, len(sids))
    except Exception as err:
        row.error = first_line(err)
    finally:
        for peer in reversed(started):
            stop_quietly(peer.stop)
        for step in reversed(cleanup):
            stop_quietly(step)
    return row


def add_cpu(row: Row, cpu_s: float, nbytes: int, processes: int) -> None:
    row.cpu_s = cpu_s
    row.gbit_moved = nbytes * 8 / 1e9
    row.cpu_s_per_gbit = cpu_per_gbit(cpu_s, nbytes)
    row.dataplane_processes = processes


def stop_quietly(stop: Callable[[], object]) -> None:
    try:
        stop()
    except Exception as err:  # the lab kills whatever is left when it closes
        print(f"warning: stopping a peer: {first_line(err)}", file=sys.stderr)


# -- report --------------------------------------------------------------------------------


def add_ratios(rows: list[Row], base: Build | None) -> None:
    """Throughput relative to wireguard-go <-> wireguard-go of the ``base`` build."""
    label = base.label if base is not None else None
    baseline_gbit = next(
        (r.gbit_s for r in rows if r.key == BASELINE and r.wireguard_go == label and r.gbit_s),
        None,
    )
    for row in rows:
        if baseline_gbit and row.gbit_s is not None:
            row.ratio = row.gbit_s / baseline_gbit


def markdown_table(rows: list[Row], base: Build | None = None) -> str:
    lines = [
        f"| configuration | Gbit/s | CPU s/Gbit | ping avg ms | ratio vs {row_name(BASELINE, base)} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error is not None:
            lines.append(f"| {row.configuration} | error: {row.error} | - | - | - |")
            continue
        gbit = f"{row.gbit_s:.2f}" if row.gbit_s is not None else "-"
        cpu = f"{row.cpu_s_per_gbit:.2f}" if row.cpu_s_per_gbit is not None else "-"
        ping = f"{row.ping_avg_ms:.3f}" if row.ping_avg_ms is not None else "-"
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        lines.append(f"| {row.configuration} | {gbit} | {cpu} | {ping} | {ratio} |")
    return "\n".join(lines)


def plan(keys: Sequence[str], builds: Sequence[Build]) -> list[tuple[str, Build | None]]:
    """The rows to run, in order: a PER_BUILD key once per build, the others once."""
    once: list[Build | None] = [None]
    every: list[Build | None] = list(builds)
    return [(key, build) for key in keys for build in (every if key in PER_BUILD else once)]


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except OSError as err:
        return f"unavailable: {first_line(err)}"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench.run needs root (it builds network namespaces): run it as root", file=sys.stderr
        )
        return 2
    builds: list[Build] = []
    if any(key in PER_BUILD for key in args.keys):
        try:
            builds = resolve(args.wireguard_go_specs)
        except BuildError as err:
            print(f"bench.run: {err}", file=sys.stderr)
            return 2
    base = baseline(builds)
    for build in builds:
        mark = " (ratio baseline)" if build is base else ""
        print(f"wireguard-go {build.label}: {build.path}{mark}", file=sys.stderr)
    Lab.cleanup_stale()
    started_at = time.time()
    rows: list[Row] = []
    try:
        with Lab() as lab:
            segment = lab.segment("bench", "198.18.0.0/24")
            client, server = lab.host("client", segment), lab.host("server", segment)
            for key, build in plan(args.keys, builds):
                print(f"running {row_name(key, build)} ...", file=sys.stderr, flush=True)
                rows.append(measure(lab, client, server, key, args, build))
    except LabError as err:
        print(f"bench.run: the lab failed: {first_line(err)}", file=sys.stderr)
        return 2
    add_ratios(rows, base)
    print(markdown_table(rows, base))
    if args.json is not None:
        report = {
            "started_at_unix": round(started_at),
            "seconds": args.seconds,
            "pings": args.pings,
            "ping_interval_s": args.ping_interval,
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "wireguard_go": [
                {"label": b.label, "path": str(b.path), "version": b.version, "sha256": b.sha256}
                for b in builds
            ],
            "ratio_baseline": row_name(BASELINE, base),
            "iperf3": tool_version(["iperf3", "--version"]),
            "rows": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(row.error is not None for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
