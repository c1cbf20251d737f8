"""Map building: who sees whom, the endpoints rule, deltas."""

from __future__ import annotations

import dataclasses

from weftnet.control.domain import netmap
from weftnet.control.domain.records import Node, User

NOW = 1_700_000_000.0
ALICE = User(id=1, name="alice", created_at=NOW)


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


def build(nodes: list[Node], online: set[int] = frozenset(), now: float = NOW) -> netmap.NetMap:  # type: ignore[assignment]
    return netmap.NetMap({n.id: n for n in nodes}, {1: ALICE}, online, now, "weft.internal")


def test_peers_are_everyone_else_not_expired() -> None:
    m = build([node(1), node(2), node(3, key_expiry=NOW - 1), node(4, key_expiry=None)], online={2})
    view = m.view_for(1)
    assert view is not None
    assert sorted(view.peers) == [2, 4]
    assert view.peers[2].online and not view.node.online
    full = view.full("weft.internal")
    assert [p.id for p in full.peers or []] == [2, 4] and full.dns_domain == "weft.internal"
    expired_self = m.view_for(3)
    assert expired_self is not None and expired_self.node.expired
    assert m.view_for(99) is None


def test_wire_node_fields() -> None:
    wire = netmap.wire_node(node(5, tags=("tag:a",), user_id=None), {}, True, NOW)
    assert wire.addresses == wire.allowed_ips == ["100.64.0.5/32", "fd7a:115c:a1e0::5/128"]
    assert wire.user is None and wire.tags == ["tag:a"] and wire.online
    owned = netmap.wire_node(node(6), {1: ALICE}, False, NOW)
    assert owned.user is not None and owned.user.name == "alice"


def test_endpoints_rule_observed_address_first_with_the_first_port() -> None:
    reported = ("192.168.1.5:41641", "[2001:db8::5]:41641", "192.168.1.5:41641")
    got = netmap.node_endpoints("203.0.113.9", reported)
    assert got == ["203.0.113.9:41641", *reported]
    assert netmap.node_endpoints("2001:db8::9", ("10.0.0.1:5000",)) == [
        "[2001:db8::9]:5000",
        "10.0.0.1:5000",
    ]
    assert netmap.node_endpoints(None, reported) == list(reported)
    assert netmap.node_endpoints("203.0.113.9", ()) == []
    wire = netmap.wire_node(node(7, observed_ip="203.0.113.9", endpoints=reported), {}, False, NOW)
    assert wire.endpoints[0] == "203.0.113.9:41641"


def test_observed_ip_of_a_dual_stack_socket_is_plain_ipv4() -> None:
    assert netmap.normalize_ip("::ffff:198.51.100.7") == "198.51.100.7"
    assert netmap.normalize_ip("2001:db8::1") == "2001:db8::1"


def test_deltas() -> None:
    before = build([node(1), node(2), node(3)]).view_for(1)
    after = build([node(1), node(2, endpoints=("1.1.1.1:1",)), node(4)], online={1}).view_for(1)
    assert before is not None and after is not None
    d = netmap.delta(before, after)
    assert d is not None
    assert [p.id for p in d.peers_changed] == [2, 4] and d.peers_removed == [3]
    assert d.node is not None and d.node.online  # self changed: now online
    assert d.peers is None
    assert netmap.delta(after, after) is None


def test_next_expiry() -> None:
    m = build([node(1, key_expiry=NOW + 5), node(2, key_expiry=NOW - 5), node(3, key_expiry=None)])
    assert m.next_expiry_at == NOW + 5


# --- the access policy in maps ----------------------------------------------------------


def test_with_a_policy_maps_list_only_reachable_peers_and_carry_filters() -> None:
    from weftnet.control.policy import parse_policy

    policy = parse_policy(
        """{
          "tagOwners": {"tag:db": []},
          "acls": [{"action": "accept", "src": ["alice"], "dst": ["tag:db:5432"]}],
        }"""
    )
    nodes = [node(1), node(2, tags=("tag:db",), user_id=None), node(3, user_id=2)]
    users = {1: ALICE, 2: User(id=2, name="bob", created_at=NOW)}
    m = netmap.NetMap({n.id: n for n in nodes}, users, (), NOW, "weft.internal", (), policy)
    laptop, db, bob = m.view_for(1), m.view_for(2), m.view_for(3)
    assert laptop is not None and db is not None and bob is not None
    assert sorted(laptop.peers) == [2] and sorted(db.peers) == [1] and bob.peers == {}
    assert laptop.packet_filter == () and bob.packet_filter == ()
    [rule] = db.packet_filter
    assert rule.src_ips == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    assert [(p.ip, p.ports.first, p.ports.last) for p in rule.dst_ports] == [
        ("100.64.0.2/32", 5432, 5432),
        ("fd7a:115c:a1e0::2/128", 5432, 5432),
    ]
    assert db.full("d").packet_filter == list(db.packet_filter)

    # No policy: everyone sees everyone; the filter accepts all. The delta carries it.
    open_map = build(nodes)
    opened = open_map.view_for(2)
    assert opened is not None and sorted(opened.peers) == [1, 3]
    [allow] = opened.packet_filter
    assert allow.src_ips == ["0.0.0.0/0", "::/0"]
    d = netmap.delta(db, opened)
    assert d is not None and d.packet_filter == [allow] and [p.id for p in d.peers_changed] == [3]
    assert netmap.delta(opened, opened) is None


def test_an_expired_node_gets_an_empty_filter_and_is_nobodys_source() -> None:
    from weftnet.control.policy import parse_policy

    policy = parse_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
    nodes = [node(1), node(2, key_expiry=NOW - 1)]
    m = netmap.NetMap({n.id: n for n in nodes}, {1: ALICE}, (), NOW, "d", (), policy)
    assert m.filter_for(2) == [] and m.visible_peers(1) == [] and m.visible_peers(2) == []


def _grouped(nodes: list[Node], policy_port: int) -> netmap.NetMap:
    from weftnet.control import policy as pol

    users = {u: User(id=u, name=f"u{u}", created_at=NOW) for u in (1, 2)}
    text = (
        '{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},'
        f' {{"action": "accept", "src": ["u1"], "dst": ["autogroup:self:{policy_port}"]}}]}}'
    )
    return netmap.NetMap(
        {n.id: n for n in nodes}, users, {n.id for n in nodes}, NOW, "weft.internal",
        policy=pol.parse_policy(text),
    )  # fmt: skip


def test_affected_names_every_node_whose_view_changed_and_no_other() -> None:
    base = [node(i, user_id=1 if i <= 3 else 2) for i in range(1, 7)]
    cases = {
        "one node's endpoints": ([dataclasses.replace(n, endpoints=("198.18.0.9:41641",)) if n.id == 2 else n for n in base], 1),
        "a new node of user 2": ([*base, node(7, user_id=2)], 1),
        "a policy change for user 1": (base, 2),
        "nothing": (base, 1),
    }  # fmt: skip
    for what, (nodes, port) in cases.items():
        before = _grouped(base, 1)
        views = {n.id: before.view_for(n.id) for n in base}
        after = netmap.NetMap(
            {n.id: n for n in nodes}, before.users, {n.id for n in nodes}, NOW, "weft.internal",
            policy=_grouped(nodes, port).policy, previous=before,
        )  # fmt: skip
        affected = after.affected(before)
        assert affected is not None, what
        for n in nodes:
            old, new = views.get(n.id), after.view_for(n.id)
            assert new is not None
            changed = old is None or netmap.delta(old, new) is not None
            assert changed == (n.id in affected), (what, n.id)


def test_affected_includes_a_deleted_node_so_its_stream_hears_of_it() -> None:
    before = build([node(1), node(2)], online={1, 2})
    after = netmap.NetMap(
        {1: node(1)}, {1: ALICE}, {1}, NOW, "weft.internal", previous=before
    )  # no policy: everyone sees everyone
    assert after.affected(before) == {1, 2}
