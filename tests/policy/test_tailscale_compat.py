"""Golden and property tests of behaviour Tailscale documents for its policy file.

The expected value in each golden test is what Tailscale does (kb/1337 ACL syntax,
kb/1396 targets, kb/1538 grants syntax). The property tests check that the compiled
per-node filters (what nodes enforce, and what decides map peers) agree with the
policy's own tests (``allows``/``run_tests``, which judge the rules directly), and
that a policy written as grants compiles exactly as the same policy written as acls.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weftnet.control.policy import (
    FilterRule,
    NodeInfo,
    Policy,
    PolicyError,
    allows,
    can_reach,
    compile_filter,
    parse_policy,
    run_tests,
)

ALICE = NodeInfo("a1", "alice@example.com", (), ("100.64.0.1", "fd7a:115c:a1e0::1"))
ALICE2 = NodeInfo("a2", "alice@example.com", (), ("100.64.0.2",))
BOB = NodeInfo("b1", "bob@example.com", (), ("100.64.0.3",))
CAROL = NodeInfo("c1", "carol@example.com", (), ("100.64.0.4",))
WEB = NodeInfo("w1", "alice@example.com", ("tag:web",), ("100.64.0.10",))  # alice's, tagged
DB = NodeInfo("d1", None, ("tag:db",), ("100.64.0.11",))
NODES = [ALICE, ALICE2, BOB, CAROL, WEB, DB]

HEAD = {
    "groups": {"group:eng": ["alice@example.com", "carol@example.com"]},
    "hosts": {"nas": "100.64.0.11", "lab": "100.64.0.0/30"},
    "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["bob@example.com"]},
}


def policy_text(**sections: object) -> str:
    return json.dumps({**HEAD, **sections})


def acl(src: list[str], dst: list[str], **extra: object) -> dict[str, object]:
    return {"action": "accept", "src": src, "dst": dst, **extra}


def visible(p: Policy, node: NodeInfo, nodes: Sequence[NodeInfo] = NODES) -> set[str | int]:
    """The peers a map lists for node, as NetMap.visible_peers decides them."""
    return {
        n.id
        for n in nodes
        if n.id != node.id and (can_reach(p, n, node, nodes) or can_reach(p, node, n, nodes))
    }


# --- 1. autogroup:self is "each source user's own untagged devices" -------------------


@pytest.mark.parametrize(
    "src", ["*", "autogroup:member", "group:eng", "alice@example.com", "bob@example.com"]
)
def test_autogroup_self_reaches_only_the_source_users_own_untagged_devices(src: str) -> None:
    p = parse_policy(policy_text(acls=[acl([src], ["autogroup:self:*"])]))
    alice_may = src in ("*", "autogroup:member", "group:eng", "alice@example.com")
    alice_rule = FilterRule(
        ("100.64.0.1/32", "fd7a:115c:a1e0::1/128", "100.64.0.2/32"),
        (("100.64.0.2/32", 0, 65535),),
        (6, 17, 1, 58),
    )
    assert compile_filter(p, ALICE2, NODES) == ([alice_rule] if alice_may else [])
    # Tagged nodes have no self, and reach nothing through this rule.
    assert compile_filter(p, WEB, NODES) == []
    assert compile_filter(p, DB, NODES) == []
    for other in (BOB, CAROL, WEB, DB):
        assert not can_reach(p, other, ALICE, NODES), other.id
        assert not can_reach(p, other, ALICE2, NODES), other.id
    assert can_reach(p, ALICE, ALICE2, NODES) == alice_may
    # Peers: alice's two devices see each other (when the rule covers alice), nobody
    # else sees anybody.
    assert visible(p, ALICE2) == ({"a1"} if alice_may else set())
    assert visible(p, WEB) == set()
    assert visible(p, DB) == set()
    bob_may = src in ("*", "autogroup:member", "bob@example.com")
    bob2 = NodeInfo("b2", "bob@example.com", (), ("100.64.0.5",))
    assert visible(p, BOB, [*NODES, bob2]) == ({"b2"} if bob_may else set())


def test_autogroup_self_with_wildcard_never_compiles_to_a_wildcard_source() -> None:
    p = parse_policy(policy_text(acls=[acl(["*"], ["autogroup:self:22", "tag:db:5432"])]))
    (rule,) = compile_filter(p, DB, NODES)
    assert rule.src_ips == ("0.0.0.0/0", "::/0"), "the tag:db part keeps its wildcard"
    for node in (ALICE, ALICE2, BOB, CAROL):
        for r in compile_filter(p, node, NODES):
            assert "0.0.0.0/0" not in r.src_ips and "::/0" not in r.src_ips


def test_autogroup_self_with_postures_narrows_to_own_devices_meeting_them() -> None:
    text = policy_text(
        postures={"posture:mac": ["node:os == 'macos'"]},
        acls=[acl(["*"], ["autogroup:self:*"], srcPosture=["posture:mac"])],
    )
    mac = NodeInfo("a3", "alice@example.com", (), ("100.64.0.6",), os="macos")
    bob_mac = NodeInfo("b3", "bob@example.com", (), ("100.64.0.7",), os="macos")
    (rule,) = compile_filter(parse_policy(text), ALICE2, [*NODES, mac, bob_mac])
    assert rule.src_ips == ("100.64.0.6/32",)


# --- 2. autogroup:self refuses sources that are not users ------------------------------


@pytest.mark.parametrize(
    ("src", "kind"),
    [
        ("tag:web", "a tag"),
        ("autogroup:tagged", "autogroup:tagged"),
        ("nas", "a host or address"),
        ("100.64.0.3", "a host or address"),
        ("10.0.0.0/8", "a host or address"),
    ],
)
def test_autogroup_self_refuses_non_user_sources(src: str, kind: str) -> None:
    text = policy_text(
        acls=[acl(["*"], ["*:*"]), acl(["alice@example.com", src], ["autogroup:self:*"])]
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(text)
    msg = str(err.value)
    assert msg.startswith(f"acls[2] src {src!r}: "), msg
    assert kind in msg and "autogroup:self" in msg and "autogroup:member" in msg


def test_autogroup_self_refusal_also_applies_to_grants() -> None:
    text = policy_text(grants=[{"src": ["tag:web"], "dst": ["autogroup:self"], "ip": ["*"]}])
    with pytest.raises(PolicyError, match=r"^grants\[1\] src 'tag:web': .*autogroup:self"):
        parse_policy(text)


# --- 3. tests: a group as src; accept or deny required ---------------------------------


def test_a_test_may_have_a_group_as_src() -> None:
    text = policy_text(
        acls=[acl(["group:eng"], ["tag:db:5432"]), acl(["alice@example.com"], ["nas:22"])],
        tests=[{"src": "group:eng", "accept": ["tag:db:5432"], "deny": ["tag:db:80"]}],
    )
    run_tests(parse_policy(text), NODES)
    assert allows(parse_policy(text), NODES, "group:eng", "tag:db", 5432)


def test_a_group_test_must_hold_for_every_member() -> None:
    # alice may reach nas:22 but carol, also in group:eng, may not.
    text = policy_text(
        acls=[acl(["alice@example.com"], ["nas:22"])],
        tests=[{"src": "group:eng", "accept": ["nas:22"]}],
    )
    with pytest.raises(PolicyError, match=r"tests\[1\] expects group:eng \(carol@example.com\)"):
        run_tests(parse_policy(text), NODES)
    text = policy_text(
        acls=[acl(["alice@example.com"], ["nas:22"])],
        tests=[{"src": "group:eng", "deny": ["nas:22"]}],
    )
    with pytest.raises(PolicyError, match=r"group:eng \(alice@example.com\) to not reach"):
        run_tests(parse_policy(text), NODES)


@pytest.mark.parametrize("test", [{"src": "alice@example.com"}, {"src": "a", "accept": []}])
def test_a_test_without_accept_or_deny_is_refused(test: dict[str, object]) -> None:
    with pytest.raises(PolicyError, match=r"tests\[1\]: .*\"accept\" or \"deny\""):
        parse_policy(policy_text(tests=[test]))


# --- 4. grants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "acls"),
    [
        ({"ip": ["*"], "dst": ["tag:db"]}, [{"dst": ["tag:db:*"]}]),
        ({"ip": ["tcp:443"], "dst": ["tag:db"]}, [{"dst": ["tag:db:443"], "proto": "tcp"}]),
        ({"ip": ["443"], "dst": ["tag:db", "nas"]}, [{"dst": ["tag:db:443", "nas:443"]}]),
        ({"ip": ["80-90"], "dst": ["*"]}, [{"dst": ["*:80-90"]}]),
        ({"ip": ["icmp:*"], "dst": ["tag:db"]}, [{"dst": ["tag:db:*"], "proto": "icmp"}]),
        (
            {"ip": ["tcp:80", "tcp:443", "udp:53"], "dst": ["tag:db"]},
            [{"dst": ["tag:db:80,443"], "proto": "tcp"}, {"dst": ["tag:db:53"], "proto": "udp"}],
        ),
        ({"ip": ["6:22"], "dst": ["100.64.0.0/24"]}, [{"dst": ["100.64.0.0/24:22"], "proto": 6}]),
        (
            {"ip": ["*"], "dst": ["autogroup:self"], "src": ["autogroup:member"]},
            [{"dst": ["autogroup:self:*"], "src": ["autogroup:member"]}],
        ),
    ],
)
def test_network_grants_compile_as_the_equivalent_acls(
    grant: dict[str, object], acls: list[dict[str, object]]
) -> None:
    src = grant.get("src", ["group:eng"])
    g = parse_policy(policy_text(grants=[{"src": src, **grant}]))
    a = parse_policy(policy_text(acls=[{"action": "accept", "src": src, **x} for x in acls]))
    assert g.acls == a.acls
    for node in NODES:
        assert compile_filter(g, node, NODES) == compile_filter(a, node, NODES)


def test_grants_and_acls_mix_and_tests_see_both() -> None:
    text = policy_text(
        acls=[acl(["group:eng"], ["tag:db:5432"], proto="tcp")],
        grants=[{"src": ["bob@example.com"], "dst": ["tag:web"], "ip": ["tcp:443"]}],
        tests=[
            {"src": "alice@example.com", "accept": ["tag:db:5432"], "deny": ["tag:web:443"]},
            {"src": "bob@example.com", "accept": ["tag:web:443"], "deny": ["tag:db:5432"]},
        ],
    )
    p = parse_policy(text)
    run_tests(p, NODES)
    (rule,) = compile_filter(p, WEB, NODES)
    assert rule == FilterRule(("100.64.0.3/32",), (("100.64.0.10/32", 443, 443),), (6,))
    assert visible(p, WEB) == {"b1"}


def test_grant_src_posture() -> None:
    text = policy_text(
        postures={"posture:mac": ["node:os == 'macos'"]},
        grants=[{"src": ["*"], "dst": ["tag:db"], "ip": ["22"], "srcPosture": ["posture:mac"]}],
    )
    mac = NodeInfo("m", "bob@example.com", (), ("100.64.0.9",), os="macos")
    (rule,) = compile_filter(parse_policy(text), DB, [*NODES, mac])
    assert rule.src_ips == ("100.64.0.9/32",)


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        (
            {"src": ["*"], "dst": ["*"], "app": {"example.com/cap/x": [{}]}},
            r"^grants\[1\] app: application capabilities are not supported",
        ),
        (
            {"src": ["*"], "dst": ["*"], "ip": ["*"], "app": {"example.com/cap/x": [{}]}},
            r"^grants\[1\] app: application capabilities are not supported",
        ),
        (
            {"src": ["*"], "dst": ["10.0.0.0/8"], "ip": ["*"], "via": ["tag:web"]},
            r"^grants\[1\] via: routing through a node is not supported",
        ),
        ({"src": ["*"], "dst": ["*"]}, r"^grants\[1\]: missing 'ip'"),
        ({"src": ["*"], "dst": ["*"], "ip": []}, r"^grants\[1\] ip: empty"),
        ({"dst": ["*"], "ip": ["*"]}, r"^grants\[1\]: missing 'src'"),
        ({"src": ["*"], "dst": ["*"], "ip": ["*"], "x": 1}, r"unknown key 'x'"),
        ({"src": ["*"], "dst": ["tag:db:22"], "ip": ["*"]}, r"dst 'tag:db:22': .* no ports"),
        ({"src": ["*"], "dst": ["nas:22"], "ip": ["*"]}, r"dst 'nas:22': .* no ports"),
        ({"src": ["*"], "dst": ["*"], "ip": ["icmp:8"]}, r"ip 'icmp:8': icmp has no ports"),
        ({"src": ["*"], "dst": ["*"], "ip": ["bogus:80"]}, r"ip 'bogus:80': bad proto"),
        ({"src": ["*"], "dst": ["*"], "ip": ["*:80"]}, r"ip '\*:80': bad proto"),
        ({"src": ["*"], "dst": ["*"], "ip": ["tcp:99999"]}, r"ip 'tcp:99999': bad port"),
        ({"src": ["*"], "dst": ["tag:nope"], "ip": ["*"]}, r"unknown tag 'tag:nope'"),
        ({"src": ["autogroup:self"], "dst": ["*"], "ip": ["*"]}, r"not allowed here"),
    ],
)
def test_grant_errors_name_the_grant_and_field(grant: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(policy_text(acls=[acl(["*"], ["*:*"])], grants=[grant]))


def test_grant_dst_may_be_an_ipv6_address() -> None:
    p = parse_policy(
        policy_text(grants=[{"src": ["*"], "dst": ["fd7a:115c:a1e0::1"], "ip": ["22"]}])
    )
    (rule,) = compile_filter(p, ALICE, NODES)
    assert rule.dst_ports == (("fd7a:115c:a1e0::1/128", 22, 22),)


# --- 5. nearby: the legacy acl field names ------------------------------------------


def test_acls_accept_the_legacy_users_and_ports_names() -> None:
    legacy = {"action": "accept", "users": ["group:eng"], "ports": ["tag:db:22"]}
    modern = acl(["group:eng"], ["tag:db:22"])
    assert parse_policy(policy_text(acls=[legacy])) == parse_policy(policy_text(acls=[modern]))


@pytest.mark.parametrize(("new", "old"), [("src", "users"), ("dst", "ports")])
def test_acls_refuse_a_field_given_under_both_names(new: str, old: str) -> None:
    rule = {**acl(["*"], ["*:*"]), old: ["*:*"] if new == "dst" else ["*"]}
    with pytest.raises(PolicyError, match=rf'acls\[1\]: give "{new}" or "{old}", not both'):
        parse_policy(policy_text(acls=[rule]))


# --- property: the compiled filter agrees with the policy's own tests ------------------

USERS = ("u1@example.com", "u2@example.com", "u3@example.com")
TAGS = ("tag:a", "tag:b")
PORT_SPECS = ("22", "80", "443", "80-443", "*", "22,443")  # each holds 22, 80 or 443
PROBE_PORTS = (22, 80, 443)
PROBE_PROTOS = (6, 17, 1)


@st.composite
def tailnets(draw: st.DrawFn) -> tuple[list[NodeInfo], dict[str, list[str]]]:
    count = draw(st.integers(2, 6))
    nodes = []
    for i in range(count):
        user = draw(st.sampled_from(USERS))
        tags = tuple(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)))
        ips = (f"100.64.0.{i + 1}", f"fd7a:115c:a1e0::{i + 1}")
        nodes.append(NodeInfo(i, user, tags, ips))
    groups = {
        g: draw(st.lists(st.sampled_from(USERS), unique=True)) for g in ("group:g1", "group:g2")
    }
    return nodes, groups


SELF_SOURCES = ("*", "autogroup:member", "group:g1", "group:g2", *USERS)
OTHER_SOURCES = ("autogroup:tagged", *TAGS, "100.64.0.1", "100.64.0.2", "100.64.0.0/30")
DSTS = (
    "*",
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:self",
    "group:g1",
    *USERS,
    *TAGS,
    "100.64.0.2",
    "100.64.0.0/30",
)


@st.composite
def rules(draw: st.DrawFn) -> tuple[list[str], list[str], str, str | None]:
    """(src, dst selectors, ports, proto): one rule, valid for Tailscale."""
    dst = draw(st.lists(st.sampled_from(DSTS), min_size=1, max_size=3, unique=True))
    pool = SELF_SOURCES if "autogroup:self" in dst else SELF_SOURCES + OTHER_SOURCES
    src = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
    ports = "*" if proto == "icmp" else draw(st.sampled_from(PORT_SPECS))
    return src, dst, ports, proto


def as_acl(rule: tuple[list[str], list[str], str, str | None]) -> dict[str, object]:
    src, dst, ports, proto = rule
    extra = {"proto": proto} if proto else {}
    return acl(src, [f"{d}:{ports}" for d in dst], **extra)


def as_grant(rule: tuple[list[str], list[str], str, str | None]) -> dict[str, object]:
    src, dst, ports, proto = rule
    if ports == "*" and proto is None:
        ip = ["*"]
    else:
        ip = [f"{proto}:{p}" if proto else p for p in ports.split(",")]
    return {"src": src, "dst": dst, "ip": ip}


def tailnet_policy(groups: dict[str, list[str]], **sections: object) -> str:
    return json.dumps({"groups": groups, "tagOwners": {t: [] for t in TAGS}, **sections})


def filter_admits(
    rules: Sequence[FilterRule], src_ip: str, dst_ip: str, port: int, proto: int
) -> bool:
    """What a node enforcing ``rules`` does with a packet (the dataplane's check)."""
    s, d = ipaddress.ip_address(src_ip), ipaddress.ip_address(dst_ip)

    def within(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, cidr: str) -> bool:
        net = ipaddress.ip_network(cidr)
        return addr.version == net.version and addr in net

    return any(
        proto in r.protos
        and any(within(s, c) for c in r.src_ips)
        and any(within(d, c) and lo <= port <= hi for c, lo, hi in r.dst_ports)
        for r in rules
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tailnets(), st.lists(rules(), min_size=1, max_size=3))
def test_compiled_filters_and_peers_agree_with_the_policy_tests(
    tailnet: tuple[list[NodeInfo], dict[str, list[str]]],
    drawn: list[tuple[list[str], list[str], str, str | None]],
) -> None:
    nodes, groups = tailnet
    p = parse_policy(tailnet_policy(groups, acls=[as_acl(r) for r in drawn]))
    for dst in nodes:
        filt = compile_filter(p, dst, nodes)
        for src in nodes:
            if src.id == dst.id:
                continue
            s_ip, d_ip = src.ips[0], dst.ips[0]
            any_allowed = False
            for proto in PROBE_PROTOS:
                for port in PROBE_PORTS:
                    expected = allows(p, nodes, s_ip, d_ip, port, proto)
                    got = filter_admits(filt, s_ip, d_ip, port, proto)
                    assert got == expected, (src, dst, port, proto, filt)
                    any_allowed |= expected
            assert can_reach(p, src, dst, nodes) == any_allowed, (src, dst, filt)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tailnets(), st.lists(rules(), min_size=1, max_size=4))
def test_a_policy_as_grants_compiles_as_the_same_policy_as_acls(
    tailnet: tuple[list[NodeInfo], dict[str, list[str]]],
    drawn: list[tuple[list[str], list[str], str, str | None]],
) -> None:
    nodes, groups = tailnet
    as_acls = parse_policy(tailnet_policy(groups, acls=[as_acl(r) for r in drawn]))
    as_grants = parse_policy(tailnet_policy(groups, grants=[as_grant(r) for r in drawn]))
    half = len(drawn) // 2
    mixed = parse_policy(
        tailnet_policy(
            groups,
            acls=[as_acl(r) for r in drawn[:half]],
            grants=[as_grant(r) for r in drawn[half:]],
        )
    )
    for node in nodes:
        want = compile_filter(as_acls, node, nodes)
        assert compile_filter(as_grants, node, nodes) == want
        assert compile_filter(mixed, node, nodes) == want
