"""Access policy: Tailscale-style HuJSON policy files compiled to per-node packet filters.

Pure code: no I/O. ``parse_policy`` validates a policy file, ``compile_filter``
gives a node's inbound filter, ``can_reach`` decides map peer visibility and
``run_tests`` refuses a policy whose tests fail.
"""

from weftnet.control.policy.compile import ALLOW_ALL, can_reach, compile_filter, run_tests
from weftnet.control.policy.hujson import PolicyError, loads
from weftnet.control.policy.model import FilterRule, NodeInfo, Policy, parse_policy

__all__ = [
    "ALLOW_ALL",
    "FilterRule",
    "NodeInfo",
    "Policy",
    "PolicyError",
    "can_reach",
    "compile_filter",
    "loads",
    "parse_policy",
    "run_tests",
]
