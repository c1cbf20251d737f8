"""Route preferences (node.routeprefs) and which peers' routes a node accepts
(reconcile.plan with Routes): the pure parts of docs/routes.md."""

from __future__ import annotations

import pytest

from tests.node.support import node
from weftnet import controlbox, tailcfg
from weftnet.node import routeprefs
from weftnet.node.mapsession import NetworkMap
from weftnet.node.reconcile import Routes, plan
from weftnet.node.routeprefs import RoutePrefError

ME = node(1, "me", ["100.64.0.1"])
OWN = controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, ME.node_key)
EXIT = ["0.0.0.0/0", "::/0"]


def router(nid: int, name: str, routes: list[str], exit_node: bool = False) -> tailcfg.Node:
    n = node(nid, name, [f"100.64.0.{nid}"])
    extra = routes + (EXIT if exit_node else [])
    return n.model_copy(update={"allowed_ips": n.allowed_ips + extra, "primary_routes": routes})


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("foo", "'foo' is not a valid IP address or CIDR prefix"),
        ("198.18.20.1/24", "198.18.20.1/24 has non-address bits set; expected 198.18.20.0/24"),
        ("0.0.0.0/0", "use --advertise-exit-node"),
        ("::/0", "use --advertise-exit-node"),
        ("100.64.5.0/24", "overlaps the tailnet's own range 100.64.0.0/10"),
        ("100.0.0.0/8", "overlaps the tailnet's own range 100.64.0.0/10"),
        ("fd7a:115c:a1e0:ab::/64", "fd7a:115c:a1e0::/48"),
        ("100.100.100.100/32", "overlaps"),
    ],
)
def test_bad_prefixes_are_refused_with_what_to_do(text: str, words: str) -> None:
    with pytest.raises(RoutePrefError, match=words.replace("(", r"\(").replace(")", r"\)")):
        routeprefs.parse_routes(text)


def test_routes_are_canonical_sorted_and_once() -> None:
    got = routeprefs.parse_routes(" 198.18.20.0/24,10.0.0.0/8,198.18.20.0/24,fd00::/64,192.0.2.7")
    assert got == ["10.0.0.0/8", "192.0.2.7/32", "198.18.20.0/24", "fd00::/64"]
    assert routeprefs.parse_routes("") == []
    assert routeprefs.advertised(["10.0.0.0/8"], True) == ["10.0.0.0/8", *EXIT]


def test_exit_node_choice() -> None:
    ex, plain = router(2, "ex", [], exit_node=True), router(3, "plain", ["10.1.0.0/16"])
    peers = [ex, plain]
    assert routeprefs.find_exit_node("ex", ME, peers) is ex
    assert routeprefs.find_exit_node("100.64.0.2", ME, peers) is ex
    with pytest.raises(RoutePrefError, match="plain is not an exit node"):
        routeprefs.find_exit_node("plain", ME, peers)
    with pytest.raises(RoutePrefError, match="is this node"):
        routeprefs.find_exit_node("100.64.0.1", ME, peers)
    with pytest.raises(RoutePrefError, match="no peer 'ghost'"):
        routeprefs.find_exit_node("ghost", ME, peers)
    assert routeprefs.resolve_exit_node("ex", peers) is ex
    assert routeprefs.resolve_exit_node("plain", peers) is None  # no longer an exit node


def test_forwarding_warning_only_when_needed() -> None:
    w = routeprefs.forwarding_warning
    assert w([], False, False, False) is None  # advertises nothing
    assert w(["10.0.0.0/8"], False, True, False) is None  # v6 not needed
    assert "net.ipv4.ip_forward = 0" in str(w(["10.0.0.0/8"], False, False, True))
    both = str(w([], True, False, False))
    assert "exit node" in both and "sysctl -w net.ipv4.ip_forward=1" in both
    assert "net.ipv6.conf.all.forwarding=1" in both


def nm(*peers: tailcfg.Node) -> NetworkMap:
    return NetworkMap(self_node=ME, peers={p.id: p for p in peers})


def allowed(ops: object, nid: int) -> tuple[str, ...]:
    return next(w.allowed_ips for w in ops.add if w.node.id == nid)  # type: ignore[attr-defined]


def test_without_accept_routes_nothing_beyond_the_overlay_and_no_noise() -> None:
    ops = plan(nm(router(2, "r", ["198.18.20.0/24"]), router(3, "ex", [], True)), {}, OWN)
    assert allowed(ops, 2) == ("100.64.0.2/32",) and allowed(ops, 3) == ("100.64.0.3/32",)
    assert ops.narrowed == [] and ops.shadowed == []  # routes offered, not errors
    assert ops.subnet_routes == [] and ops.exit_routes == ()


def test_accept_routes_takes_primary_routes_only() -> None:
    r = router(2, "r", ["198.18.20.0/24"])
    rogue = r.model_copy(update={"allowed_ips": [*r.allowed_ips, "203.0.113.0/24"]})
    ops = plan(nm(rogue), {}, OWN, Routes(accept_routes=True))
    assert allowed(ops, 2) == ("100.64.0.2/32", "198.18.20.0/24")
    assert ops.subnet_routes == ["198.18.20.0/24"]
    assert "203.0.113.0/24" in str(ops.narrowed[0])  # not a primary route: reported


def test_routes_over_local_networks_own_routes_or_the_overlay_are_shadowed() -> None:
    r = router(2, "r", ["192.168.1.0/24", "10.0.0.0/8", "198.18.20.0/24", "100.0.0.0/8"])
    routes = Routes(
        accept_routes=True, local_prefixes=("192.168.1.0/24",), advertised=("10.1.0.0/16",)
    )
    ops = plan(nm(r), {}, OWN, routes)
    assert allowed(ops, 2) == ("100.64.0.2/32", "198.18.20.0/24")
    text = str(ops.shadowed[0])
    assert "192.168.1.0/24 (overlaps 192.168.1.0/24, a network this node is on)" in text
    assert "10.0.0.0/8 (overlaps 10.1.0.0/16, which this node advertises)" in text
    assert "100.0.0.0/8 (overlaps the tailnet's range 100.64.0.0/10)" in text


def test_only_the_chosen_exit_node_gives_default_routes() -> None:
    a, b = router(2, "a", [], True), router(3, "b", [], True)
    ops = plan(nm(a, b), {}, OWN, Routes(exit_node_id=3, local_prefixes=("192.168.1.0/24",)))
    assert allowed(ops, 2) == ("100.64.0.2/32",)
    assert allowed(ops, 3) == ("100.64.0.3/32", *EXIT)  # the LAN does not shadow a /0
    assert ops.exit_routes == tuple(EXIT) and ops.subnet_routes == []
