"""weft: the command-line client of the local weftd.

It finds the daemon through ``--socket`` or the WEFT_SOCKET environment variable
(default /run/weft/weftd.sock) and does nothing but ask it and print the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from weftnet import version
from weftnet.node.localapi import client_socket, request


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_status(st: dict[str, Any]) -> None:
    print(f"interface {st['interface']}  public key {st['public_key']}  port {st['listen_port']}")
    rows = [("PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX")]
    for p in st["peers"]:
        rows.append(
            (
                p["public_key"][:12] + "...",
                p["endpoint"] or "-",
                ",".join(p["allowed_ips"]),
                _ago(p["last_handshake"]),
                _bytes(p["rx_bytes"]),
                _bytes(p["tx_bytes"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_health(problems: list[str]) -> None:
    """Current problems, one per line; nothing when all is well."""
    if problems:
        print("Health:")
        for problem in problems:
            print(f"  - {printable(problem)}")


def print_node_status(st: dict[str, Any]) -> None:
    me = st["self"]
    if st["backend_state"] != "Running":
        print(f"{st['backend_state']}" + (f": {st['error']}" if st.get("error") else ""))
        if st.get("auth_url"):
            print(f"To authenticate, visit:\n\n\t{st['auth_url']}\n")
        if st.get("admin_url"):
            print(f"Waiting for an admin to approve this machine: visit {st['admin_url']}")
        if st["backend_state"] != "Starting":
            print_health(st.get("health", []))
            return
    if st.get("mode") == "userspace-networking":
        print(f"# {printable(st.get('mode_text') or 'userspace networking')}")
    mine = ""
    serving = (st.get("routes") or {}).get("serving") or []
    if serving:
        mine = f"serving {','.join(serving)}"
    rows = [(", ".join(me["ips"]) or "-", me["hostname"] or "-", "self", "-", mine)]
    for p in st["peers"]:
        how = p["path"] if p["path"] != "direct" else f"direct {p['endpoint']}"
        extra = f"rx {_bytes(p['rx_bytes'])} tx {_bytes(p['tx_bytes'])}"
        if p.get("primary_routes"):
            extra += f"; routes {','.join(p['primary_routes'])}"
        if p.get("exit_node_option"):
            extra += "; exit node"
        if p.get("expired"):
            how = "expired"
        rows.append(
            (
                ", ".join(p["ips"]),
                p["hostname"],
                "online" if p["online"] else "offline",
                how,
                extra,
            )
        )
    shown = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    for r in shown:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print_health(st.get("health", []))


class CliError(Exception):
    pass


def call(sock: str, cmd: str, timeout_s: float = 30.0, **args: Any) -> Any:
    try:
        answer = request(sock, cmd, timeout_s=timeout_s, **args)
    except (FileNotFoundError, ConnectionRefusedError):
        raise CliError(f"weftd is not running (no socket at {sock})") from None
    except PermissionError:
        raise CliError(f"permission denied on {sock}: run as root") from None
    except TimeoutError:
        raise CliError("weftd did not answer in time") from None
    if not answer.get("ok"):
        raise CliError(answer.get("error", "error"))
    return answer.get("result")


def printable(text: str) -> str:
    """``text`` without control or format characters: a name from the map (a peer's
    hostname) cannot drive this terminal, whatever the server sent."""
    return "".join(c if c.isprintable() else "?" for c in str(text))


def auth_key_argument(value: str | None) -> str | None:
    """``--auth-key KEY`` or ``--auth-key file:PATH`` (the key stays off the command line,
    as with tailscale up)."""
    if value is None or not value.startswith("file:"):
        return value
    path = value.removeprefix("file:")
    try:
        with open(path) as f:
            key = f.read().strip()
    except OSError as e:
        raise CliError(f"--auth-key {value}: {e.strerror or e}") from None
    if not key:
        raise CliError(f"--auth-key {value}: the file is empty")
    return key


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


ROUTE_FLAGS = (
    "advertise_routes",
    "advertise_exit_node",
    "accept_routes",
    "exit_node",
    "exit_node_allow_lan_access",
    "snat_subnet_routes",
)


def add_route_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `weft up` and `weft set` for subnet routes and exit nodes
    (docs/routes.md). Unset flags are None: the daemon keeps what it had."""

    def flag(name: str, text: str) -> None:
        p.add_argument(name, type=_bool, nargs="?", const=True, default=None,
                       metavar="true|false", help=text)  # fmt: skip

    p.add_argument("--advertise-routes", metavar="CIDR,...",
                   help="offer these networks to the tailnet ('' withdraws them)")  # fmt: skip
    flag("--advertise-exit-node", "offer this node as an exit node to the internet")
    flag("--accept-routes", "use the subnet routes other nodes offer")
    p.add_argument("--exit-node", metavar="NAME|IP",
                   help="send internet traffic through this peer ('' stops)")  # fmt: skip
    flag("--exit-node-allow-lan-access", "with --exit-node, reach the local network directly")
    flag("--snat-subnet-routes", "masquerade traffic to advertised routes (default: true)")
    p.add_argument("--accept-dns", type=_bool, nargs="?", const=True, default=None,
                   metavar="true|false",
                   help="point this host's DNS at the tailnet's (default: true; remembered)")  # fmt: skip


def route_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in (*ROUTE_FLAGS, "accept_dns")}


def cmd_up(args: argparse.Namespace) -> None:
    res = call(
        args.socket,
        "up",
        login_server=",".join(args.login_server) if args.login_server else None,
        auth_key=auth_key_argument(args.auth_key),
        hostname=args.hostname,
        server_key=args.server_key,
        allow_insecure_http=args.allow_insecure_http,
        **route_flags(args),
    )
    if res.get("warning"):
        print(f"weft: warning: {res['warning']}", file=sys.stderr, flush=True)
    waiting_login = res["state"] == "NeedsLogin" and res.get("auth_url")
    if waiting_login or res["state"] == "NeedsMachineAuth":
        if waiting_login:
            print(f"\nTo authenticate, visit:\n\n\t{res['auth_url']}\n", flush=True)
        shown = False  # the device-approval message, printed once
        deadline = time.monotonic() + args.timeout if args.timeout else None
        st = res
        while True:
            admin_url = st.get("admin_url")
            if admin_url and not shown:
                print(f"To approve your machine, visit (as admin):\n\n\t{admin_url}\n", flush=True)
                shown = True
            st = call(args.socket, "status")
            if st["backend_state"] == "Running":
                break
            if deadline is not None and time.monotonic() > deadline:
                raise CliError("timed out waiting for the login to be approved")
            time.sleep(0.5)
        print("Success.")
        return
    if res["state"] != "Running":
        raise CliError(f"{res['state']}: {res.get('message', '')}")


def cmd_set(args: argparse.Namespace) -> None:
    given = {k: v for k, v in route_flags(args).items() if v is not None}
    if not given:
        raise CliError("nothing to change: give at least one flag (weft set --help)")
    res = call(args.socket, "set", **given)
    if res.get("warning"):
        print(f"weft: warning: {res['warning']}", file=sys.stderr, flush=True)


def cmd_exit_node_list(args: argparse.Namespace) -> None:
    nodes = call(args.socket, "exit_node_list")
    if args.json:
        print(json.dumps(nodes, indent=2))
        return
    if not nodes:
        print("no exit nodes in the tailnet (or none this node may use)")
        return
    rows = [("IP", "HOSTNAME", "STATUS", "")]
    for n in nodes:
        state = "online" if n["online"] else "offline"
        rows.append((n["ips"][0] if n["ips"] else "-", n["hostname"], state,
                     "selected" if n["selected"] else ""))  # fmt: skip
    shown = [[printable(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in shown) for i in range(len(shown[0]))]
    for r in shown:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cmd_status(args: argparse.Namespace) -> None:
    st = call(args.socket, "status")
    if args.json:
        print(json.dumps(st, indent=2))
    elif "backend_state" in st:
        print_node_status(st)
    else:
        print_status(st)


def cmd_ip(args: argparse.Namespace) -> None:
    ips = call(args.socket, "ip")
    if args.four:
        ips = [i for i in ips if ":" not in i]
    if args.six:
        ips = [i for i in ips if ":" in i]
    if not ips:
        raise CliError("no addresses: is this node logged in (`weft up`)?")
    print("\n".join(ips))


def cmd_ping(args: argparse.Namespace) -> None:
    """Disco pings until a direct path answers (or --count runs out), like tailscale ping."""
    for _ in range(args.count):
        r = call(args.socket, "ping", target=args.host, timeout=args.timeout)
        if r.get("timeout"):
            print(f"timeout waiting for a pong from {printable(r['peer'])} ({r['ip']})", flush=True)
            continue
        via = f"via relay {r['via']}" if r["path"] == "relay" else f"via {r['via']}"
        print(
            f"pong from {printable(r['peer'])} ({r['ip']}) {via} in {r['latency_ms']}ms", flush=True
        )
        if r["path"] == "direct" and not args.until_count:
            return
        time.sleep(0.5)
    if not args.until_count:
        raise CliError("direct connection not established")


def cmd_netcheck(args: argparse.Namespace) -> None:
    r = call(args.socket, "netcheck")
    if args.json:
        print(json.dumps(r, indent=2))
        return
    varies = {True: "yes (hard NAT)", False: "no", None: "unknown (one STUN server)"}
    print("Report:")
    print(f"\t* UDP: {str(r['udp']).lower()}")
    print(f"\t* Public address: {r['public_address'] or '-'}")
    print(f"\t* Mapping varies by destination: {varies[r['mapping_varies_by_destination']]}")
    nat = {"easy": "easy (one mapping for every destination)",
           "hard": "hard (a new mapping per destination: birthday probing toward easy NATs)"}  # fmt: skip
    print(f"\t* NAT: {nat.get(r.get('nat') or '', 'unknown (needs two STUN servers)')}")
    pm = r.get("port_mapping")
    if pm is not None:
        offered = [name for key, name in (("upnp", "UPnP"), ("nat_pmp", "NAT-PMP"),
                                          ("pcp", "PCP")) if pm[key]]  # fmt: skip
        print(f"\t* Port mapping: {', '.join(offered) or 'none offered'}"
              f" (gateway {pm['gateway'] or '-'})")  # fmt: skip
        if pm["mapped_address"]:
            print(f"\t* Mapped address: {pm['mapped_address']} ({pm['protocol']})")
    print(f"\t* Preferred relay: {r['preferred_relay'] or '-'}")
    print("\t* Relay latency:")
    for region, ms in sorted(r["relay_latency_ms"].items(), key=lambda kv: kv[1]):
        print(f"\t\t- {region}: {ms}ms")


def print_whois(r: dict[str, Any]) -> None:
    node, user = r["node"], r["user"]
    rows = [
        ("Name", node["name"] + (" (this node)" if node["self"] else "")),
        ("Hostname", node["hostname"]),
        ("ID", str(node["id"])),
        ("OS", node["os"] or "-"),
        ("Version", node["client_version"] or "-"),
        ("Addresses", ", ".join(node["addresses"])),
    ]
    if node["tags"]:
        rows.append(("Tags", ", ".join(node["tags"])))
    print("Machine:")
    for label, value in rows:
        print(f"  {label + ':':<11}{printable(value)}")
    if user is not None:
        print("User:")
        print(f"  {'Name:':<11}{printable(user['name'])}")
        print(f"  {'ID:':<11}{user['id']}")


def cmd_whois(args: argparse.Namespace) -> None:
    r = call(args.socket, "whois", ip=args.ip)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_whois(r)


def print_dns_status(r: dict[str, Any]) -> None:
    os_cfg = r["os"]
    print(f"Mode: {r['mode']} ({r['why']})")
    print(f"Accept DNS: {'yes' if r['accept_dns'] else 'no (--accept-dns=false)'}")
    if r.get("resolv_conf"):
        how = ", written in place (rename refused)" if r.get("rename_broken") else ""
        print(f"File: {r['resolv_conf']}{how}")
    if not r["configured"]:
        print("OS: not configured by weftd")
    else:
        print("OS:")
        print(f"  nameservers:    {' '.join(os_cfg['nameservers']) or '-'}")
        print(f"  search domains: {' '.join(os_cfg['search_domains']) or '-'}")
        match = os_cfg["match_domains"]
        if match:
            shown = " ".join(f"~{m}" for m in match[:8]) + (" ..." if len(match) > 8 else "")
            print(f"  routing domains ({len(match)}): {shown}")
            print(f"  default route:  {'yes' if os_cfg['default_route'] else 'no'}")
    print(f"Resolvers the OS had: {' '.join(r['base_resolvers']) or '-'}")
    srv = r.get("server")
    if srv is None:
        print("Server DNS config: none yet")
    else:
        print(f"Server DNS config: MagicDNS {'on' if srv['magic_dns'] else 'off'}"
              f" domain {srv['domain'] or '-'}, {len(srv['resolvers'])} resolver(s),"
              f" {len(srv['routes'])} route(s), {len(srv['extra_records'])} extra record(s)")  # fmt: skip
    if r.get("resolver"):
        print("Resolver counters:")
        for k, v in sorted(r["resolver"].items()):
            print(f"  {k}: {v}")
    print_health(r.get("health", []))


def cmd_dns_status(args: argparse.Namespace) -> None:
    r = call(args.socket, "dns_status")
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_dns_status(r)


def cmd_metrics(args: argparse.Namespace) -> None:
    """The daemon's metrics, in the Prometheus text format (docs/metrics.md)."""
    sys.stdout.write(str(call(args.socket, "metrics")))


def cmd_version(args: argparse.Namespace) -> None:
    """This client's version; asks nothing of weftd (it need not be running)."""
    if args.json:
        print(json.dumps(version.info(), indent=2))
    else:
        print(version.text("weft"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="weft", description="weftnet client")
    version.add_flag(p)
    p.add_argument("--socket", default=os.environ.get("WEFT_SOCKET") or client_socket())
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="connect to the tailnet (log in if needed)")
    up.add_argument(
        "--login-server",
        metavar="URL",
        action="append",
        help="the coordination server; replicas of one server: URL1,URL2 or the flag again"
        " (weftd moves to the next when its map stream breaks)",
    )
    up.add_argument(
        "--auth-key",
        metavar="KEY",
        help="join without interactive login (file:PATH reads the key from a file)",
    )
    up.add_argument("--hostname", metavar="NAME", help="the name this node shows to others")
    up.add_argument(
        "--server-key",
        metavar="mkey:HEX",
        help="the server's key (`weft-control server-key` prints it): any other is refused",
    )
    up.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="log in over plain http:// even when nothing verifies the server's key",
    )
    add_route_flags(up)
    up.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("set", help="change route or DNS flags without logging in again")
    add_route_flags(st)
    st.set_defaults(func=cmd_set)
    ex = sub.add_parser("exit-node", help="exit nodes").add_subparsers(
        dest="exit_cmd", required=True
    )
    el = ex.add_parser("list", help="the peers that offer an exit route")
    el.add_argument("--json", action="store_true", help="machine-readable output")
    el.set_defaults(func=cmd_exit_node_list)
    sub.add_parser("down", help="disconnect (stay logged in)").set_defaults(
        func=lambda a: call(a.socket, "down")
    )
    sub.add_parser("logout", help="disconnect and forget this node's key").set_defaults(
        func=lambda a: call(a.socket, "logout")
    )
    ip = sub.add_parser("ip", help="this node's tailnet addresses")
    fam = ip.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="four", action="store_true", help="IPv4 only")
    fam.add_argument("-6", dest="six", action="store_true", help="IPv6 only")
    ip.set_defaults(func=cmd_ip)
    pg = sub.add_parser("ping", help="disco ping a peer, showing the path each pong took")
    pg.add_argument("host", help="a peer's 100.x address or name")
    pg.add_argument("-c", "--count", type=int, default=10, help="pings at most (default 10)")
    pg.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each pong")
    pg.add_argument(
        "--until-count", action="store_true", help="do not stop once a direct path answers"
    )
    pg.set_defaults(func=cmd_ping)
    nc = sub.add_parser("netcheck", help="UDP, public address, NAT kind, relay latencies")
    nc.add_argument("--json", action="store_true", help="machine-readable output")
    nc.set_defaults(func=cmd_netcheck)
    wh = sub.add_parser("whois", help="the node and user behind a tailnet address")
    wh.add_argument("ip", help="a 100.x or fd7a:115c:a1e0:: address (a peer's or our own)")
    wh.add_argument("--json", action="store_true", help="machine-readable output")
    wh.set_defaults(func=cmd_whois)
    dns = sub.add_parser("dns", help="the tailnet's DNS on this host").add_subparsers(
        dest="dns_cmd", required=True
    )
    ds = dns.add_parser("status", help="mode, what the OS has, the server's config, counters")
    ds.add_argument("--json", action="store_true", help="machine-readable output")
    ds.set_defaults(func=cmd_dns_status)
    ve = sub.add_parser("version", help="the version of weftnet, its protocol and Python")
    ve.add_argument("--json", action="store_true", help="machine-readable output")
    ve.set_defaults(func=cmd_version)
    me = sub.add_parser("metrics", help="this node's metrics in the Prometheus text format")
    me.set_defaults(func=cmd_metrics)
    st = sub.add_parser("status", help="this node and its peers")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except CliError as e:
        print(f"weft: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
