"""Golden tests of the policy parser and compiler (pure code, no network)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.control.policy import (
    ALLOW_ALL,
    FilterRule,
    NodeInfo,
    PolicyError,
    can_reach,
    compile_filter,
    loads,
    parse_policy,
    run_tests,
)

ALICE = NodeInfo("a1", "alice@example.com", (), ("100.64.0.1", "fd7a:115c:a1e0::1"))
ALICE2 = NodeInfo("a2", "alice@example.com", (), ("100.64.0.2",), os="macos")
BOB = NodeInfo("b1", "bob@example.com", (), ("100.64.0.3",))
CAROL = NodeInfo("c1", "carol", (), ("100.64.0.4",))
WEB = NodeInfo("w1", "alice@example.com", ("tag:web",), ("100.64.0.10",))
DB = NodeInfo("d1", None, ("tag:db",), ("100.64.0.11",))
NODES = [ALICE, ALICE2, BOB, CAROL, WEB, DB]

BASE = """
{
  // who is who
  "groups": {"group:eng": ["alice@example.com", "carol",],},
  "hosts": {"office": "192.168.1.0/24", "nas": "100.64.0.11"},
  "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["tag:web", "bob@example.com"]},
  /* rules */
  "acls": [%s],
}
"""


def policy(*acls: str, extra: str = "") -> str:
    text = BASE % ",\n".join(acls)
    if extra:
        text = text.rstrip().removesuffix("}") + extra.lstrip(", ") + "}"
    return text


def rules(text: str, target: NodeInfo) -> list[FilterRule]:
    return compile_filter(parse_policy(text), target, NODES)


# --- absent and empty policy -------------------------------------------------


def test_no_policy_allows_everything() -> None:
    assert compile_filter(None, BOB, NODES) == [ALLOW_ALL]
    assert ALLOW_ALL.src_ips == ("0.0.0.0/0", "::/0")
    assert ("0.0.0.0/0", 0, 65535) in ALLOW_ALL.dst_ports
    assert can_reach(None, BOB, DB, NODES)


def test_empty_policy_denies_everything() -> None:
    p = parse_policy("{}")
    assert compile_filter(p, BOB, NODES) == []
    assert not can_reach(p, ALICE, BOB, NODES)


# --- wildcards, users, groups ------------------------------------------------


def test_wildcard_rule() -> None:
    (rule,) = rules(policy('{"action": "accept", "src": ["*"], "dst": ["*:*"]}'), BOB)
    assert rule == FilterRule(
        ("0.0.0.0/0", "::/0"), (("0.0.0.0/0", 0, 65535), ("::/0", 0, 65535)), (6, 17, 1, 58)
    )


def test_user_to_user() -> None:
    text = policy(
        '{"action": "accept", "src": ["bob@example.com"], "dst": ["alice@example.com:22"]}'
    )
    (rule,) = rules(text, ALICE)
    assert rule.src_ips == ("100.64.0.3/32",)
    assert rule.dst_ports == (("100.64.0.1/32", 22, 22), ("fd7a:115c:a1e0::1/128", 22, 22))
    assert rules(text, BOB) == []
    assert rules(text, WEB) == [], "a tagged node is owned by its tags, not its user"
    p = parse_policy(text)
    assert can_reach(p, BOB, ALICE, NODES)
    assert not can_reach(p, ALICE, BOB, NODES)


def test_group_source() -> None:
    (rule,) = rules(
        policy('{"action": "accept", "src": ["group:eng"], "dst": ["bob@example.com:80"]}'), BOB
    )
    assert rule.src_ips == (
        "100.64.0.1/32",
        "fd7a:115c:a1e0::1/128",
        "100.64.0.2/32",
        "100.64.0.4/32",
    )


def test_hosts_and_cidrs() -> None:
    text = policy(
        '{"action": "accept", "src": ["office", "10.0.0.0/8"], "dst": ["nas:443", "100.64.0.0/10:53"]}'
    )
    (rule,) = rules(text, DB)
    assert rule.src_ips == ("192.168.1.0/24", "10.0.0.0/8")
    assert rule.dst_ports == (("100.64.0.11/32", 443, 443), ("100.64.0.0/10", 53, 53))
    (rule,) = rules(text, BOB)
    assert rule.dst_ports == (("100.64.0.0/10", 53, 53),)


# --- tags --------------------------------------------------------------------


def test_tags() -> None:
    text = policy('{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]}')
    (rule,) = rules(text, DB)
    assert rule.src_ips == ("100.64.0.10/32",)
    assert rule.dst_ports == (("100.64.0.11/32", 5432, 5432),)
    assert rules(text, WEB) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            policy('{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}'),
            "unknown tag 'tag:nope'",
        ),
        ('{"tagOwners": {"tag:x": ["group:nope"]}}', "unknown group 'group:nope'"),
        ('{"tagOwners": {"tag:x": ["tag:y"]}}', "unknown tag 'tag:y'"),
        ('{"tagOwners": {"web": ["alice"]}}', "bad tag name 'web'"),
        ('{"tagOwners": {"tag:x": ["autogroup:tagged"]}}', "cannot own a tag"),
    ],
)
def test_tag_owner_validation(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


# --- autogroups --------------------------------------------------------------


def test_autogroup_member_and_tagged() -> None:
    text = policy(
        '{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:tagged:443"]}'
    )
    (rule,) = rules(text, WEB)
    assert set(rule.src_ips) == {
        "100.64.0.1/32",
        "fd7a:115c:a1e0::1/128",
        "100.64.0.2/32",
        "100.64.0.3/32",
        "100.64.0.4/32",
    }
    assert rules(text, ALICE) == []


def test_autogroup_self() -> None:
    text = policy('{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}')
    (rule,) = rules(text, ALICE2)
    assert rule.src_ips == ("100.64.0.1/32", "fd7a:115c:a1e0::1/128", "100.64.0.2/32")
    assert rule.dst_ports == (("100.64.0.2/32", 0, 65535),)
    assert rules(text, WEB) == [], "tagged nodes have no self"
    p = parse_policy(text)
    assert can_reach(p, ALICE, ALICE2, NODES)
    assert not can_reach(p, BOB, ALICE2, NODES)
    assert not can_reach(p, WEB, ALICE2, NODES)


def test_autogroup_internet_names_no_node() -> None:
    text = policy('{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:*"]}')
    assert rules(text, BOB) == []


@pytest.mark.parametrize("src", ["autogroup:self", "autogroup:internet", "autogroup:bogus"])
def test_autogroup_not_allowed_in_src(src: str) -> None:
    with pytest.raises(PolicyError, match="not allowed here"):
        parse_policy(policy(f'{{"action": "accept", "src": ["{src}"], "dst": ["*:*"]}}'))


# --- ports and protocols -----------------------------------------------------


def test_port_lists_and_ranges() -> None:
    text = policy('{"action": "accept", "src": ["*"], "dst": ["bob@example.com:22,80,8000-8100"]}')
    (rule,) = rules(text, BOB)
    assert rule.dst_ports == (
        ("100.64.0.3/32", 22, 22),
        ("100.64.0.3/32", 80, 80),
        ("100.64.0.3/32", 8000, 8100),
    )


@pytest.mark.parametrize("ports", ["", "http", "70000", "90-80", "1-", "-5", "22,,80", "1-2-3"])
def test_bad_ports(ports: str) -> None:
    with pytest.raises(PolicyError, match=r"bad port|needs ports"):
        parse_policy(policy(f'{{"action": "accept", "src": ["*"], "dst": ["bob:{ports}"]}}'))


def test_dst_without_ports() -> None:
    with pytest.raises(PolicyError, match="needs ports"):
        parse_policy(policy('{"action": "accept", "src": ["*"], "dst": ["bob"]}'))


@pytest.mark.parametrize(("proto", "number"), [("tcp", 6), ("udp", 17), ("icmp", 1), ("47", 47)])
def test_protocols(proto: str, number: int) -> None:
    port = "*" if proto in ("icmp", "47") else "53"
    text = policy(
        f'{{"action": "accept", "src": ["*"], "dst": ["bob@example.com:{port}"], "proto": "{proto}"}}'
    )
    (rule,) = rules(text, BOB)
    assert rule.protos == (number,)


def test_bad_protocol_and_portless_protocol() -> None:
    with pytest.raises(PolicyError, match="bad proto"):
        parse_policy(policy('{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "xyz"}'))
    with pytest.raises(PolicyError, match="has no ports"):
        parse_policy(policy('{"action": "accept", "src": ["*"], "dst": ["*:22"], "proto": "icmp"}'))


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"nope": 1}', "unknown key 'nope'"),
        ('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}', "bad action 'deny'"),
        (
            '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "x": 1}]}',
            "unknown key 'x'",
        ),
        ('{"acls": [{"action": "accept", "dst": ["*:*"]}]}', "missing 'src'"),
        (
            '{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}',
            "unknown group 'group:x'",
        ),
        ('{"acls": [{"action": "accept", "src": [1], "dst": ["*:*"]}]}', "list of strings"),
        ('{"groups": {"eng": ["a"]}}', "bad group name"),
        ('{"groups": {"group:a": ["group:b"]}}', "cannot be a group member"),
        ('{"hosts": {"nas": "not-an-ip"}}', "not an IP address"),
        ('{"acls": {}}', "expected a list"),
        ("[]", "expected an object"),
        ('{"acls": [], "acls": []}', "duplicate key 'acls'"),
    ],
)
def test_validation_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_tailscale_keys_outside_scope_are_listed() -> None:
    p = parse_policy('{"ssh": [], "nodeAttrs": []}')
    assert p.ignored_keys == ("nodeAttrs", "ssh")


# --- tests section -----------------------------------------------------------

RULES = (
    '{"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443"]}',
    '{"action": "accept", "src": ["tag:web"], "dst": ["nas:5432"]}',
)


def test_tests_pass() -> None:
    extra = """, "tests": [
      {"src": "alice@example.com", "accept": ["tag:web:443", "100.64.0.10:80"], "deny": ["tag:web:22", "nas:5432"]},
      {"src": "tag:web", "accept": ["tag:db:5432"], "deny": ["bob@example.com:80"]},
      {"src": "bob@example.com", "deny": ["tag:web:80"]},
    ]"""
    p = parse_policy(policy(*RULES, extra=extra))
    run_tests(p, NODES)


def test_tests_fail_names_the_case() -> None:
    extra = """, "tests": [
      {"src": "alice@example.com", "accept": ["tag:web:443"]},
      {"src": "bob@example.com", "accept": ["tag:web:443"]},
    ]"""
    p = parse_policy(policy(*RULES, extra=extra))
    with pytest.raises(PolicyError, match=r"tests\[2\].*bob@example.com.*tag:web:443.*denies"):
        run_tests(p, NODES)


def test_tests_deny_failure() -> None:
    p = parse_policy(policy(*RULES, extra=', "tests": [{"src": "carol", "deny": ["tag:web:80"]}]'))
    with pytest.raises(PolicyError, match=r"tests\[1\].*accepts"):
        run_tests(p, NODES)


def test_tests_autogroup_self_and_proto() -> None:
    text = policy(
        '{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:22"], "proto": "udp"}',
        extra=""", "tests": [
          {"src": "alice@example.com", "proto": "udp", "accept": ["alice@example.com:22"], "deny": ["bob@example.com:22"]},
          {"src": "alice@example.com", "deny": ["alice@example.com:22"]},
        ]""",
    )
    run_tests(parse_policy(text), NODES)


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ('{"src": "alice", "accept": ["bob"]}', "HOST:PORT"),
        ('{"src": "alice", "accept": ["bob:22,80"]}', "one port"),
        ('{"src": "autogroup:member", "accept": ["bob:22"]}', "not one principal"),
        ('{"src": "alice", "accept": ["group:eng:22"]}', "not one principal"),
        ('{"src": "group:nope", "accept": ["bob:22"]}', "unknown group"),
        ('{"src": "alice", "accept": ["tag:ghost:22"]}', "unknown tag"),
    ],
)
def test_bad_test_entries(test: str, message: str) -> None:
    p = parse_policy(policy(*RULES, extra=f', "tests": [{test}]'))
    with pytest.raises(PolicyError, match=message):
        run_tests(p, NODES)


def test_bad_test_shape() -> None:
    with pytest.raises(PolicyError, match="unknown key 'allow'"):
        parse_policy('{"tests": [{"src": "a", "allow": []}]}')


# --- HuJSON ------------------------------------------------------------------


def test_hujson_comments_and_trailing_commas() -> None:
    text = """// leading comment
    {
      "a": [1, 2, /* inline */ 3,],  // trailing
      "b": {"s": "// not a comment, /* nor this */",},
      /* block
         over lines */
      "c": "a\\"quote,]",
    }"""
    assert loads(text) == {
        "a": [1, 2, 3],
        "b": {"s": "// not a comment, /* nor this */"},
        "c": 'a"quote,]',
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{\n  "a": [1,,2]\n}', "line 2, column 11"),
        ('{\n  "a": 1\n  /* open', "line 3, column 3"),
        ("[,]", "line 1, column 2"),
        ('{"a": NaN}', "NaN"),
        ("{\n\n  'a': 1}", "line 3, column 3"),
    ],
)
def test_hujson_errors_name_line_and_column(text: str, where: str) -> None:
    with pytest.raises(PolicyError, match=where):
        loads(text)


@given(st.text())
def test_hujson_parses_or_raises_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        loads(text)


@given(st.text(alphabet='{}[]",:/*\n 01a-tag:group@*acls"src"dst'))
def test_policy_parses_or_raises_policy_error(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


def test_numeric_proto_and_address_in_tests() -> None:
    text = policy(
        '{"action": "accept", "src": ["100.64.0.3"], "dst": ["tag:db:*"], "proto": 17}',
        extra=""", "tests": [
          {"src": "100.64.0.3", "proto": "udp", "accept": ["100.64.0.11:53"]},
          {"src": "bob@example.com", "proto": "udp", "accept": ["tag:db:53"]},
          {"src": "100.64.0.1", "proto": "udp", "deny": ["tag:db:53"]},
        ]""",
    )
    p = parse_policy(text)
    run_tests(p, NODES)
    assert can_reach(p, BOB, DB, NODES)
    assert not can_reach(p, DB, BOB, NODES)
