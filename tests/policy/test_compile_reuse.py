"""FilterCompiler(previous=...) reuses the last map's filters only where nothing they drew
on changed: after any sequence of node changes, policy changes and schedule edges, every
target's filter equals a fresh compile's."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.control.policy import FilterCompiler, NodeInfo, parse_policy

POLICY = """{
  "groups": {"group:eng": ["alice", "carol"]},
  "tagOwners": {"tag:web": ["group:eng"], "tag:db": ["alice"]},
  "postures": {"posture:managed": ["custom:managed == true"]},
  "schedules": {"schedule:night": {"hours": "22:00-06:00", "timezone": "UTC"}},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:443"]},
    {"action": "accept", "src": ["*"], "dst": ["tag:db:5432"], "srcPosture": ["posture:managed"]},
    {"action": "accept", "src": ["bob"], "dst": ["100.64.0.0/29:22"], "schedule": "schedule:night"},
    {"action": "accept", "src": ["group:eng"], "dst": ["autogroup:self:%d", "alice:80"]}
  ]
}"""
POLICIES = [parse_policy(POLICY % port) for port in (8080, 8081)]
NOON, MIDNIGHT = 1_700_049_600.0, 1_700_006_400.0  # 12:00 and 00:00 UTC (the schedule's edge)
USERS = ["alice", "bob", "carol"]
TAGS = [(), ("tag:web",), ("tag:db",)]

nodes_at = st.dictionaries(
    st.integers(1, 7),
    st.tuples(st.sampled_from(USERS), st.sampled_from(TAGS), st.booleans(), st.integers(1, 7)),
    max_size=7,
)
steps = st.lists(st.tuples(nodes_at, st.integers(0, 1), st.sampled_from([NOON, MIDNIGHT])),
                 min_size=1, max_size=6)  # fmt: skip


def ip_pair(host: int) -> tuple[str, str]:
    return f"100.64.0.{host}", f"fd7a:115c:a1e0::{host:x}"


def infos(nodes: dict[int, tuple[str, tuple[str, ...], bool, int]]) -> list[NodeInfo]:
    return [
        NodeInfo(i, user, tags, ip_pair(host), attrs={"custom:managed": managed})
        for i, (user, tags, managed, host) in sorted(nodes.items())
    ]


@settings(max_examples=300, deadline=None)
@given(steps)
def test_reused_filters_equal_fresh_ones(
    sequence: list[tuple[dict[int, tuple[str, tuple[str, ...], bool, int]], int, float]],
) -> None:
    previous: FilterCompiler | None = None
    for nodes, policy_index, now in sequence:
        live = infos(nodes)
        policy = POLICIES[policy_index]
        compiler = FilterCompiler(policy, live, now, previous)
        fresh = FilterCompiler(policy, live, now)
        for target in live:
            assert compiler.compile(target) == fresh.compile(target), (target, nodes)
        previous = compiler


def test_a_filter_is_reused_when_its_sources_are_the_same_and_not_when_they_change() -> None:
    alice = NodeInfo(1, "alice", (), ("100.64.0.1",))
    bob = NodeInfo(2, "bob", (), ("100.64.0.2",))
    first = FilterCompiler(POLICIES[0], [alice, bob], NOON)
    alice_rules, bob_rules = first.compile(alice), first.compile(bob)

    alice2 = NodeInfo(3, "alice", (), ("100.64.0.3",))  # a new device of alice's
    second = FilterCompiler(POLICIES[0], [alice, bob, alice2], NOON, first)
    assert second.compile(bob) is bob_rules  # bob's sources are the same: taken over
    assert second.compile(alice) != alice_rules  # alice's own devices are now two
    assert "100.64.0.3/32" in second.compile(alice)[0].src_ips

    moved = dataclasses.replace(bob, ips=("100.64.0.9",))
    third = FilterCompiler(POLICIES[0], [alice, moved, alice2], NOON, second)
    assert third.compile(moved) != bob_rules  # its own address is its destination

    other_policy = FilterCompiler(POLICIES[1], [alice, bob, alice2], NOON, second)
    assert other_policy.compile(bob) is not bob_rules  # another policy: compiled again
