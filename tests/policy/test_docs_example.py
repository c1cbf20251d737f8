"""The complete example in docs/policy.md parses, and its own tests pass."""

from __future__ import annotations

import re
from pathlib import Path

from weftnet.control.policy import NodeInfo, compile_filter, parse_policy, run_tests

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def test_the_documented_policy_is_valid_and_its_tests_pass() -> None:
    m = re.search(r"```hujson\n(.*?)```", DOC.read_text(), re.S)
    assert m is not None, "docs/policy.md lost its example"
    policy = parse_policy(m[1])
    # 5 acls, and the grant makes two rules (tcp:443 and icmp:*).
    assert len(policy.acls) == 7 and len(policy.tests) == 5
    assert set(policy.schedules) == {"schedule:workhours"}
    assert set(policy.postures) == {"posture:managed-linux"}
    db = NodeInfo(1, None, ("tag:db",), ("100.64.0.9",))
    web = NodeInfo(2, None, ("tag:web",), ("100.64.0.8",))
    bob = NodeInfo(3, "bob@example.com", (), ("100.64.0.3",), attrs={"managed": True})
    nodes = [db, web, bob]
    run_tests(policy, nodes)
    rules = compile_filter(policy, db, nodes)
    assert {(r.src_ips, r.dst_ports[0][1]) for r in rules if r.protos == (6,)} == {
        (("100.64.0.8/32",), 5432)
    }
