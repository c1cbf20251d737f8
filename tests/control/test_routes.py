"""Subnet routes and exit nodes on the server (pure): validation, approval, autoApprovers,
primary election, what each viewer gets, and the routers' filters (docs/routes.md)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from weftnet import tailcfg
from weftnet.control import policy as pol
from weftnet.control.domain import netmap, routes
from weftnet.control.domain.records import Node, User

NOW = 1_700_000_000.0
USERS = {
    1: User(id=1, name="alice@example.com", created_at=NOW),
    2: User(id=2, name="bob@example.com", created_at=NOW),
}
LAN = "198.18.20.0/24"
EXIT = ["0.0.0.0/0", "::/0"]


def node(node_id: int, **fields: object) -> Node:
    base = Node(
        id=node_id,
        machine_key=f"mkey:{node_id:064x}",
        node_key=f"nodekey:{node_id:064x}",
        user_id=1,
        tags=(),
        hostname=f"host{node_id}",
        given_name=f"host{node_id}",
        ipv4=f"100.64.0.{node_id}",
        ipv6=f"fd7a:115c:a1e0::{node_id:x}",
        ephemeral=False,
        created_at=NOW,
        key_expiry=NOW + 3600,
        authorized_at=NOW,
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def router(node_id: int, *prefixes: str, approved: bool = True, **fields: object) -> Node:
    return node(
        node_id,
        announced_routes=routes.sort_prefixes(prefixes),
        approved_routes=routes.sort_prefixes(prefixes) if approved else (),
        **fields,
    )


def build(
    nodes: list[Node],
    online: set[int] | None = None,
    policy: dict[str, object] | None = None,
    previous: dict[str, int] | None = None,
) -> netmap.NetMap:
    return netmap.NetMap(
        {n.id: n for n in nodes},
        USERS,
        {n.id for n in nodes} if online is None else online,
        NOW,
        "weft.internal",
        policy=pol.parse_policy(json.dumps(policy)) if policy is not None else None,
        previous_primaries=previous,
    )


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "not a valid IP address or CIDR prefix"),
        ("198.18.20.1/24", "has non-address bits set; expected 198.18.20.0/24"),
        ("198.18.20.1", "is an address"),
        ("100.64.0.0/12", "overlaps the tailnet's own addresses"),
        ("10.0.0.0/1", "has non-address bits set"),
        ("fd7a:115c:a1e0:5::/64", "overlaps the tailnet's own addresses"),
        ("100.100.100.100/32", "overlaps the tailnet"),
    ],
)
def test_bad_prefixes_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        routes.check_prefix(text)


def test_announced_routes_keep_the_good_ones_sorted() -> None:
    kept, dropped = routes.clean_announced(
        ["::/0", LAN, "10.0.0.0/8", "10.0.0.0/8", "bad", "0.0.0.0/0", 5, "100.64.0.0/10"]
    )
    assert kept == ("0.0.0.0/0", "10.0.0.0/8", LAN, "::/0")
    assert len(dropped) == 3


def test_approving_one_exit_route_approves_both_and_empty_withdraws() -> None:
    assert routes.parse_approval(["::/0", LAN]) == ("0.0.0.0/0", LAN, "::/0")
    assert routes.parse_approval([""]) == ()
    with pytest.raises(ValueError, match="non-address bits"):
        routes.parse_approval(["198.18.20.1/24"])


# -- autoApprovers -------------------------------------------------------------------

AUTO_POLICY: dict[str, object] = {
    "groups": {"group:net": ["bob@example.com"]},
    "tagOwners": {"tag:router": ["alice@example.com"], "tag:exit": ["alice@example.com"]},
    "autoApprovers": {
        "routes": {
            "198.18.0.0/16": ["tag:router", "group:net"],
            "203.0.113.0/24": ["alice@example.com"],
            "192.0.2.0/24": ["autogroup:member"],
        },
        "exitNode": ["tag:exit"],
    },
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}


def info(n: Node) -> pol.NodeInfo:
    user = USERS.get(n.user_id) if n.user_id else None
    return pol.NodeInfo(n.id, user.name if user else None, n.tags, (n.ipv4, n.ipv6))


@pytest.mark.parametrize(
    ("who", "announced", "approved"),
    [
        (node(1, tags=("tag:router",), user_id=None), [LAN, "10.0.0.0/8"], [LAN]),
        (node(1, user_id=2), ["198.18.0.0/15", LAN], [LAN]),  # bob via group; /15 too wide
        (node(1, user_id=1), [LAN, "203.0.113.128/25"], ["203.0.113.128/25"]),
        (node(1, user_id=2), ["192.0.2.0/24"], ["192.0.2.0/24"]),  # autogroup:member
        (node(1, tags=("tag:router",), user_id=None), ["192.0.2.0/24"], []),  # tagged: no
        (node(1, tags=("tag:exit",), user_id=None), ["0.0.0.0/0"], EXIT),
        (node(1, user_id=1), EXIT, []),  # alice owns tag:exit but is not it
    ],
)
def test_auto_approvers_match_users_groups_tags_members(
    who: Node, announced: list[str], approved: list[str]
) -> None:
    policy = pol.parse_policy(json.dumps(AUTO_POLICY))
    assert sorted(pol.auto_approved(policy, info(who), announced)) == sorted(approved)
    assert pol.auto_approved(None, info(who), announced) == ()


@pytest.mark.parametrize(
    ("auto", "message"),
    [
        ({"routes": {"10.0.0.0/33": ["tag:router"]}}, r"autoApprovers.routes\['10.0.0.0/33'\]"),
        ({"routes": {"10.0.0.1/8": ["tag:router"]}}, "invalid prefix"),
        ({"routes": {"0.0.0.0/0": ["tag:router"]}}, 'use "exitNode"'),
        ({"exitNode": ["tag:exit"]}, r"autoApprovers.exitNode\[0\]: unknown tag tag:exit"),
        ({"exitNode": ["group:none"]}, "unknown group"),
        ({"exitNode": ["autogroup:tagged"]}, "cannot approve routes"),
        ({"nodes": []}, "unknown key 'nodes'"),
    ],
)
def test_auto_approver_errors_name_the_field(auto: dict[str, object], message: str) -> None:
    policy = {"tagOwners": {"tag:router": []}, "autoApprovers": auto}
    with pytest.raises(pol.PolicyError, match=message):
        pol.parse_policy(json.dumps(policy))


def test_removing_an_auto_approver_revokes() -> None:
    r = router(3, LAN, approved=False, tags=("tag:router",), user_id=None)
    on = build([node(1), r], policy=AUTO_POLICY)
    assert on.route_status(3) == netmap.RouteStatus((LAN,), (), (LAN,), (LAN,))
    off = dict(AUTO_POLICY, autoApprovers={"routes": {}})
    assert build([node(1), r], policy=off).route_status(3) == netmap.RouteStatus((LAN,), (), (), ())


# -- election ------------------------------------------------------------------------


def test_election_lowest_id_then_no_flap() -> None:
    cands = {3: [LAN], 4: [LAN], 5: ["10.0.0.0/8", *EXIT]}
    assert routes.elect(cands, {3, 4, 5}, {}) == {LAN: 3, "10.0.0.0/8": 5}
    assert routes.elect(cands, {4, 5}, {LAN: 3}) == {LAN: 4, "10.0.0.0/8": 5}  # 3 went away
    assert routes.elect(cands, {3, 4, 5}, {LAN: 4}) == {LAN: 4, "10.0.0.0/8": 5}  # 3 is back
    assert routes.elect(cands, {5}, {LAN: 4}) == {"10.0.0.0/8": 5}


def test_primary_needs_approval_announcement_online_and_a_live_key() -> None:
    nodes = [
        node(1),
        router(2, LAN, approved=False),
        router(3, LAN, key_expiry=NOW - 1),
        router(4, LAN),
        router(5, LAN),
        node(6, announced_routes=(), approved_routes=(LAN,)),
    ]
    m = build(nodes, online={1, 2, 3, 5, 6})
    assert m.primaries == {LAN: 5}
    # The hub hands the election on: 4 coming back does not take it.
    again = build(nodes, previous=m.primaries)
    assert again.primaries == {LAN: 5}
    assert build(nodes, online={1, 4}, previous=m.primaries).primaries == {LAN: 4}


def test_wire_routes_per_version_and_exit_nodes_without_election() -> None:
    nodes = [node(1), router(2, LAN), router(3, LAN), router(4, *EXIT), router(5, *EXIT)]
    m = build(nodes)
    view = m.view_for(1)
    assert view is not None
    assert view.peers[2].allowed_ips == [*view.peers[2].addresses, LAN]
    assert view.peers[2].primary_routes == [LAN]
    assert view.peers[3].allowed_ips == view.peers[3].addresses  # not primary
    for exit_id in (4, 5):
        assert view.peers[exit_id].allowed_ips == [*view.peers[exit_id].addresses, *EXIT]
        assert view.peers[exit_id].primary_routes == []
    old = m.view_for(1, version=tailcfg.ROUTES_VERSION - 1)
    assert old is not None
    assert all(p.allowed_ips == p.addresses and not p.primary_routes for p in old.peers.values())
    own = m.view_for(2)
    assert own is not None and own.node.primary_routes == [LAN]
    offline = build(nodes, online={1, 2, 3, 5}).view_for(1)
    assert offline is not None
    assert offline.peers[4].allowed_ips == offline.peers[4].addresses  # offline: no exit


# -- visibility by policy and the routers' filters --------------------------------------

VIS_POLICY: dict[str, object] = {
    "groups": {"group:ops": ["alice@example.com"]},
    "tagOwners": {"tag:router": [], "tag:exit": []},
    "hosts": {"office": LAN},
    "acls": [
        {"action": "accept", "src": ["group:ops"], "dst": ["office:22", "autogroup:internet:*"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["198.18.20.10/32:80"]},
    ],
}


def test_routes_reach_only_viewers_the_policy_lets_use_them() -> None:
    alice, bob, carol = node(1, user_id=1), node(2, user_id=2), node(6, user_id=None, tags=())
    r = router(3, LAN, tags=("tag:router",), user_id=None)
    x = router(4, *EXIT, tags=("tag:exit",), user_id=None)
    m = build([alice, bob, carol, r, x], policy=VIS_POLICY)
    a = m.view_for(1)
    assert a is not None
    assert a.peers[3].allowed_ips[2:] == [LAN] and a.peers[3].primary_routes == [LAN]
    assert a.peers[4].allowed_ips[2:] == EXIT
    b = m.view_for(2)
    assert b is not None
    assert b.peers[3].allowed_ips[2:] == [LAN]  # a rule towards one host in the LAN
    assert 4 not in b.peers  # may not use the exit node: does not even see it
    c = m.view_for(6)
    assert c is not None and c.peers == {}
    # The routers filter what they forward.
    r_rules = m.filter_for(3)
    assert {(c, lo, hi) for rule in r_rules for c, lo, hi in rule.dst_ports} == {
        (LAN, 22, 22),
        ("198.18.20.10/32", 80, 80),
    }
    x_dst = {c for rule in m.filter_for(4) for c, _lo, _hi in rule.dst_ports}
    assert x_dst == set(pol.THE_INTERNET)
    assert "10.0.0.0/8" not in x_dst and "2000::/3" in x_dst


def test_without_a_policy_everyone_uses_every_route() -> None:
    m = build([node(1, user_id=2), router(3, LAN), router(4, *EXIT)])
    v = m.view_for(1)
    assert v is not None
    assert v.peers[3].allowed_ips[2:] == [LAN] and v.peers[4].allowed_ips[2:] == EXIT


def test_autogroup_internet_in_policy_tests() -> None:
    policy = dict(
        VIS_POLICY,
        tests=[
            {"src": "alice@example.com", "accept": ["198.18.20.10:22", "8.8.8.8:443"]},
            {"src": "bob@example.com", "accept": ["198.18.20.10:80"], "deny": ["8.8.8.8:443"]},
        ],
    )
    parsed = pol.parse_policy(json.dumps(policy))
    pol.run_tests(parsed, [])
