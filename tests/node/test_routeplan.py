"""routeplan: the kernel state weftd wants, as data (docs/routes.md)."""

from __future__ import annotations

from weftnet.node import routeplan
from weftnet.node.routeplan import Desired, Route

EXIT = ("0.0.0.0/0", "::/0")


def test_nothing_accepted_nothing_installed() -> None:
    d = Desired()
    assert routeplan.routes(d) == [] and routeplan.rules(d) == []
    assert routeplan.nft_ruleset(d) is None
    assert routeplan.nft_script(None) == "table inet weftd\ndelete table inet weftd\n"


def test_subnet_routes_and_the_four_rules_per_family() -> None:
    d = Desired(subnet_routes=("198.18.20.0/24",))
    assert routeplan.routes(d) == [Route("198.18.20.0/24", "dev")]
    prios = [(r.family, r.priority, r.action) for r in routeplan.rules(d)]
    assert prios == [(f, p, "unreachable" if p == 5250 else "lookup")
                     for f in (4, 6) for p in (5210, 5230, 5250, 5270)]  # fmt: skip


def test_exit_node_kill_switch_and_lan_access() -> None:
    online = routeplan.routes(
        Desired(exit_node=True, exit_routes=EXIT, lan_prefixes=("192.168.1.0/24",))
    )
    assert Route("0.0.0.0/0", "dev") in online and Route("0.0.0.0/0", "unreachable", 1000) in online
    assert not any(r.kind == "throw" for r in online)  # the LAN goes through the exit node
    gone = routeplan.routes(Desired(exit_node=True))
    assert gone == [Route("0.0.0.0/0", "unreachable", 1000), Route("::/0", "unreachable", 1000)]
    lan = routeplan.routes(
        Desired(exit_node=True, exit_routes=EXIT, allow_lan=True, lan_prefixes=("192.168.1.0/24",))
    )
    assert Route("192.168.1.0/24", "throw") in lan


def test_forwarding_table_masquerades_as_asked() -> None:
    snat = str(routeplan.nft_ruleset(Desired(serve_routes=("10.7.0.0/16",))))
    assert 'meta mark & 0xff0000 == 0x40000 oifname != "weft0" masquerade' in snat
    assert "maxseg size set rt mtu" in snat
    no_snat = routeplan.nft_ruleset(
        Desired(serve_routes=("10.7.0.0/16",), snat_subnet_routes=False)
    )
    assert "masquerade" not in str(no_snat)
    exit_only = str(routeplan.nft_ruleset(
        Desired(serve_routes=("10.7.0.0/16",), serve_exit=True, snat_subnet_routes=False)
    ))  # fmt: skip
    assert "ip daddr != { 10.7.0.0/16 } masquerade" in exit_only
    assert "meta nfproto ipv6 masquerade" in exit_only  # no IPv6 subnet: all of it is exit


def test_only_served_destinations_are_forwarded_from_the_tunnel() -> None:
    """A router forwards to its advertised routes only; an exit node to everything but
    the networks it is on (guest Wi-Fi), unless they are advertised routes too."""
    router = str(routeplan.nft_ruleset(Desired(serve_routes=("10.7.0.0/16",))))
    guard = [line.strip() for line in router.splitlines() if line.strip().startswith("iifname")]
    assert guard[1:3] == [
        'iifname "weft0" ip daddr { 10.7.0.0/16 } accept',
        'iifname "weft0" counter drop comment "not local"',
    ]
    lans = ("192.168.1.0/24", "192.168.1.0/25", "10.7.1.0/24", "fd00:1::/64")
    exit_node = str(routeplan.nft_ruleset(
        Desired(serve_routes=("10.7.0.0/16",), serve_exit=True, lan_prefixes=lans)
    ))  # fmt: skip
    guard = [line.strip() for line in exit_node.splitlines() if line.strip().startswith("iifname")]
    assert guard[1:5] == [
        'iifname "weft0" ip daddr { 10.7.0.0/16 } accept',  # advertised: before the LAN drop
        'iifname "weft0" ip daddr { 10.7.1.0/24, 192.168.1.0/24 } counter drop comment "not local"',
        'iifname "weft0" ip6 daddr { fd00:1::/64 } counter drop comment "not local"',
        'iifname "weft0" accept',
    ]
