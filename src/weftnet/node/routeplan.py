"""What weftd wants in the kernel for routes and forwarding, as data. Pure.

``rules(d)``, ``routes(d)`` and ``nft_ruleset(d)`` turn a ``Desired`` (this node's
prefs, the accepted routes, its underlay networks) into the whole state weftd owns;
node.routing diffs it against the kernel, so applying it twice changes nothing and a
restart after a crash converges on exactly one copy (docs/routes.md).

Client side (accepted routes, an exit node):

    table 52 (``TABLE``)    accepted subnet routes        dev weft0
                            0.0.0.0/0, ::/0               dev weft0         (exit node online)
                            unreachable 0.0.0.0/0, ::/0   metric 1000       (exit node chosen)
                            throw <LAN prefixes>                            (--exit-node-allow-lan-access)
    rules (v4 and v6)       5210 fwmark 0x80000/0xff0000 lookup main
                            5230 fwmark 0x80000/0xff0000 lookup default
                            5250 fwmark 0x80000/0xff0000 unreachable
                            5270 lookup 52

weftd's own sockets carry the mark (weftnet.sockmark) and never see table 52. The
unreachable defaults are the kill switch: while an exit node is chosen, internet traffic
goes through it or nowhere, also when it leaves the map, and also when weftd dies (the
kernel drops the weft0 routes with the interface; the unreachable ones stay until the
next start or ``weft down``). Without --exit-node-allow-lan-access the LAN goes through
the exit node too: table 52 is read before main.

Router side (advertised routes, an exit node): one ``table inet weftd`` that marks what
comes in from weft0 (``FORWARD_MARK``), forwards from weft0 only to the advertised routes
(and, for an exit node, anywhere but the networks this host is on), clamps TCP
MSS to the route MTU, and masquerades marked traffic leaving by another interface: all of
it with --snat-subnet-routes (the default), else only exit traffic (not for the
advertised subnets). Exit traffic is always masqueraded: it goes to the internet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from weftnet.marks import BYPASS_MARK, FORWARD_MARK, MARK_MASK
from weftnet.node.reconcile import EXIT_ROUTES, OVERLAY_RANGES

TABLE = 52  # weftd's routing table (as Tailscale's, for operators who know it)
PRIO_MAIN, PRIO_DEFAULT, PRIO_UNREACHABLE, PRIO_TABLE = 5210, 5230, 5250, 5270
PRIORITIES = (PRIO_MAIN, PRIO_DEFAULT, PRIO_UNREACHABLE, PRIO_TABLE)
MAIN_TABLE, DEFAULT_TABLE = 254, 253  # linux/rtnetlink.h RT_TABLE_MAIN, RT_TABLE_DEFAULT
ROUTE_METRIC = 1  # explicit: the kernel would give IPv6 routes 1024 and IPv4 ones 0
KILL_METRIC = 1000  # the unreachable defaults sit behind the ones through weft0
NFT_TABLE = "weftd"  # nftables: table inet weftd


@dataclass(frozen=True)
class Desired:
    ifname: str = "weft0"
    subnet_routes: tuple[str, ...] = ()  # accepted peers' routes (reconcile)
    exit_node: bool = False  # an exit node is chosen (--exit-node)
    exit_routes: tuple[str, ...] = ()  # its /0s as accepted; () when it is gone: blocked
    allow_lan: bool = False  # --exit-node-allow-lan-access
    lan_prefixes: tuple[str, ...] = ()  # the underlay networks this node is on
    serve_routes: tuple[str, ...] = ()  # --advertise-routes
    serve_exit: bool = False  # --advertise-exit-node
    snat_subnet_routes: bool = True


@dataclass(frozen=True, order=True)
class Rule:
    family: int  # 4 or 6
    priority: int
    fwmark: int | None  # matched under MARK_MASK
    table: int  # 0 with action "unreachable"
    action: str = "lookup"  # or "unreachable"


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # canonical CIDR
    kind: str  # "dev" (through the interface), "unreachable", "throw"
    metric: int = ROUTE_METRIC

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4


def routes(d: Desired) -> list[Route]:
    out = [Route(r, "dev") for r in d.subnet_routes]
    if d.exit_node:
        for dst in EXIT_ROUTES:
            if dst in d.exit_routes:
                out.append(Route(dst, "dev"))
            out.append(Route(dst, "unreachable", KILL_METRIC))
        if d.allow_lan:
            out += [Route(p, "throw") for p in d.lan_prefixes if not _overlay(p)]
    return sorted(set(out))


def rules(d: Desired) -> list[Rule]:
    """The four rules per family, while table 52 holds anything."""
    if not routes(d):
        return []
    out = []
    for fam in (4, 6):
        out += [
            Rule(fam, PRIO_MAIN, BYPASS_MARK, MAIN_TABLE),
            Rule(fam, PRIO_DEFAULT, BYPASS_MARK, DEFAULT_TABLE),
            Rule(fam, PRIO_UNREACHABLE, BYPASS_MARK, 0, "unreachable"),
            Rule(fam, PRIO_TABLE, None, TABLE),
        ]
    return out


def nft_ruleset(d: Desired) -> str | None:
    """The body of ``table inet weftd`` for a router or exit node; None: no table."""
    if not d.serve_routes and not d.serve_exit:
        return None
    dev = f'"{d.ifname}"'
    keep = f"0x{0xFFFFFFFF & ~MARK_MASK:08x}"
    marked = f"meta mark & 0x{MARK_MASK:x} == 0x{FORWARD_MARK:x} oifname != {dev}"
    masq = []
    if d.snat_subnet_routes:
        masq.append(f"{marked} masquerade")
    elif d.serve_exit:  # exit traffic only: everything but the advertised subnets
        for fam, match in ((4, "ip"), (6, "ip6")):
            mine = [r for r in d.serve_routes if (6 if ":" in r else 4) == fam]
            nfproto = "ipv4" if fam == 4 else "ipv6"
            if mine:
                masq.append(f"{marked} {match} daddr != {{ {', '.join(mine)} }} masquerade")
            else:
                masq.append(f"{marked} meta nfproto {nfproto} masquerade")
    v4, v6 = OVERLAY_RANGES
    lines = [
        "chain forward {",
        "\ttype filter hook forward priority filter; policy accept;",
        f"\tiifname {dev} meta mark set meta mark & {keep} | 0x{FORWARD_MARK:x}",
        *(f"\t{g}" for g in _local_nets_guard(d, dev)),
        f"\toifname {dev} ip saddr {v4} drop",  # an overlay source from a LAN: spoofed
        f"\toifname {dev} ip6 saddr {v6} drop",
        f"\toifname {dev} accept",
        "}",
        "chain mangle_forward {",
        "\ttype filter hook forward priority mangle; policy accept;",
        f"\toifname {dev} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
        f"\tiifname {dev} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
        "}",
        "chain postrouting {",
        "\ttype nat hook postrouting priority srcnat; policy accept;",
        *(f"\t{m}" for m in masq),
        "}",
    ]
    return "\n".join(lines)


def _local_nets_guard(d: Desired, dev: str) -> list[str]:
    """What may be forwarded from the tunnel: the advertised routes, and for an exit node
    everything but the networks this node is on ("guest Wi-Fi": a client using the exit
    node does not reach its LAN unless that LAN is also an advertised route). The rest is
    dropped and counted (``not local``), whatever a peer sends or the policy allows."""
    out = []
    for fam, match in ((4, "ip"), (6, "ip6")):
        if mine := _collapsed(d.serve_routes, fam):
            out.append(f"iifname {dev} {match} daddr {{ {', '.join(mine)} }} accept")
        if d.serve_exit and (lan := _collapsed(d.lan_prefixes, fam)):
            out.append(f'iifname {dev} {match} daddr {{ {", ".join(lan)} }} counter drop'
                       ' comment "not local"')  # fmt: skip
    out.append(f'iifname {dev} accept' if d.serve_exit else
               f'iifname {dev} counter drop comment "not local"')  # fmt: skip
    return out


def _collapsed(prefixes: tuple[str, ...], family: int) -> list[str]:
    """``prefixes`` of one IP version with overlaps merged (nft refuses overlapping
    elements in one set)."""
    if family == 4:
        v4 = [ipaddress.IPv4Network(p, strict=False) for p in prefixes if ":" not in p]
        return [str(n) for n in ipaddress.collapse_addresses(v4)]
    v6 = [ipaddress.IPv6Network(p, strict=False) for p in prefixes if ":" in p]
    return [str(n) for n in ipaddress.collapse_addresses(v6)]


def nft_script(body: str | None) -> str:
    """One atomic ``nft -f -`` transaction: the table replaced by ``body`` (or removed).
    Declaring the table first makes the delete succeed whether or not it existed."""
    head = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
    if body is None:
        return head
    inner = "\n".join("\t" + line for line in body.splitlines())
    return f"{head}table inet {NFT_TABLE} {{\n{inner}\n}}\n"


def _overlay(prefix: str) -> bool:
    net = ipaddress.ip_network(prefix, strict=False)
    return any(net.version == r.version and net.overlaps(r) for r in OVERLAY_RANGES)
