"""Access policy: Tailscale-style HuJSON policy files compiled to per-node packet filters.

Pure code: no I/O. ``parse_policy`` validates a policy file, ``compile_filter``
gives a node's inbound filter, ``can_reach`` decides map peer visibility and
``run_tests`` refuses a policy whose tests fail.
"""

from weftnet.control.policy.compile import (
    ALLOW_ALL,
    Admission,
    FilterCompiler,
    admits,
    allows,
    can_reach,
    compile_filter,
    host_cidrs,
    next_edge,
    run_tests,
)
from weftnet.control.policy.hujson import PolicyError, loads
from weftnet.control.policy.model import FilterRule, NodeInfo, Policy, parse_policy
from weftnet.control.policy.routes import (
    EXIT_ROUTES,
    THE_INTERNET,
    auto_approved,
    is_exit_route,
    overlaps,
    touches_internet,
)

__all__ = [
    "ALLOW_ALL",
    "EXIT_ROUTES",
    "THE_INTERNET",
    "Admission",
    "FilterCompiler",
    "FilterRule",
    "NodeInfo",
    "Policy",
    "PolicyError",
    "admits",
    "allows",
    "auto_approved",
    "can_reach",
    "compile_filter",
    "host_cidrs",
    "is_exit_route",
    "loads",
    "next_edge",
    "overlaps",
    "parse_policy",
    "run_tests",
    "touches_internet",
]
