"""Policy model: a Tailscale-style access policy, parsed and validated.

Theory of operation: ``parse_policy`` turns HuJSON text into a frozen
``Policy`` in which every selector ("group:eng", "tag:web", "10.0.0.0/8",
"alice@example.com", "autogroup:self", "*") is already resolved to a
``Selector`` and every port list to ranges, so that compiling a filter never
meets a malformed name. Network "grants" become the ``Acl`` rules the
equivalent acls make; grants' "app" and "via" are refused. Every error names the section and entry at fault.
The compiler (``compile.py``) is the only reader of these types.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from weftnet.control.policy.conditions import (
    Posture,
    Schedule,
    device_attrs,
    parse_postures,
    parse_schedules,
)
from weftnet.control.policy.hujson import PolicyError, loads

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA protocol numbers (https://www.iana.org/assignments/protocol-numbers).
PROTO_NUMBERS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": 58,
    "sctp": 132,
}
# Protocols with ports; a rule for any other protocol must use port "*".
PORTED_PROTOS = frozenset({6, 17, 132})
# As Tailscale: a rule without "proto" covers TCP, UDP and ICMP (v4 and v6).
DEFAULT_PROTOS: tuple[int, ...] = (6, 17, 1, 58)
MAX_PORT = 65535  # ports are 16-bit

AUTOGROUPS_SRC = frozenset({"member", "tagged"})
AUTOGROUPS_DST = frozenset({"member", "tagged", "self", "internet"})
TOP_LEVEL_KEYS = frozenset(
    {
        "groups",
        "hosts",
        "tagOwners",
        "acls",
        "grants",
        "tests",
        "schedules",
        "postures",
        "defaultSrcPosture",
        "autoApprovers",
    }
)
# Tailscale keys outside this module's scope: accepted so existing files load,
# and listed in Policy.ignored_keys so a caller can warn about them.
IGNORED_KEYS = frozenset({"ssh", "sshTests", "nodeAttrs", "derpMap", "randomizeClientPort"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the policy sees it. A tagged node is owned by its tags, not its user."""

    id: str | int
    user: str | None
    tags: tuple[str, ...]
    ips: tuple[str, ...]
    os: str = "linux"
    attrs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # custom:*
    client_version: str = ""
    hostname: str = ""
    # The subnet routes this node is primary for (canonical CIDRs, no /0) and whether it
    # serves approved exit routes: rules towards those prefixes reach it (docs/routes.md).
    routes: tuple[str, ...] = ()
    exit: bool = False

    @property
    def device(self) -> dict[str, Any]:
        """What posture conditions test: node:os, node:tsVersion, custom:* ..."""
        return device_attrs(self.os, self.client_version, self.hostname, self.attrs)


@dataclass(frozen=True, slots=True)
class FilterRule:
    """Packets from any of src_ips to a (cidr, lo, hi) of dst_ports over protos pass."""

    src_ips: tuple[str, ...]
    dst_ports: tuple[tuple[str, int, int], ...]
    protos: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Selector:
    """kind is one of: any, user, group, tag, member, tagged, self, internet, net."""

    kind: str
    value: str = ""
    network: IPNetwork | None = None


@dataclass(frozen=True, slots=True)
class DstEntry:
    selector: Selector
    ports: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Acl:
    src: tuple[Selector, ...]
    dst: tuple[DstEntry, ...]
    protos: tuple[int, ...]
    schedules: tuple[Schedule, ...] = ()  # holds while any is open; () = always
    postures: tuple[Posture, ...] = ()  # source devices must meet one; () = any device


@dataclass(frozen=True, slots=True)
class PolicyTest:
    src: str
    accept: tuple[str, ...]
    deny: tuple[str, ...]
    proto: int
    at: float | None = None  # evaluate at this unix time; None: scheduled rules are off


@dataclass(frozen=True, slots=True)
class AutoApprovers:
    """Who approves routes without an admin: per prefix (it approves that prefix and
    the prefixes inside it), and for exit routes. Owners are users, groups, tags and
    autogroup:member."""

    routes: tuple[tuple[IPNetwork, tuple[str, ...]], ...] = ()
    exit_node: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    groups: dict[str, frozenset[str]]
    hosts: dict[str, IPNetwork]
    tag_owners: dict[str, tuple[str, ...]]
    acls: tuple[Acl, ...]  # the rules of "acls", then those "grants" make
    tests: tuple[PolicyTest, ...]
    ignored_keys: tuple[str, ...] = ()
    schedules: dict[str, Schedule] = field(default_factory=dict)
    postures: dict[str, Posture] = field(default_factory=dict)
    auto_approvers: AutoApprovers = AutoApprovers()

    @property
    def has_schedules(self) -> bool:
        return any(acl.schedules for acl in self.acls)


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected a list of strings")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: expected an object")
    return value


def _check_user(name: str, where: str) -> str:
    if not name or any(c.isspace() for c in name) or ":" in name or "/" in name:
        raise PolicyError(f"{where}: {name!r} is not a user, group, tag, host or address")
    return name


def parse_selector(
    text: str,
    where: str,
    groups: dict[str, frozenset[str]],
    hosts: dict[str, IPNetwork],
    tag_owners: dict[str, tuple[str, ...]],
    autogroups: frozenset[str],
) -> Selector:
    if text == "*":
        return Selector("any")
    if text.startswith("group:"):
        if text not in groups:
            raise PolicyError(f'{where}: unknown group {text!r}; define it under "groups"')
        return Selector("group", text)
    if text.startswith("tag:"):
        if text not in tag_owners:
            raise PolicyError(f'{where}: unknown tag {text!r}; define it under "tagOwners"')
        return Selector("tag", text)
    if text.startswith("autogroup:"):
        name = text.removeprefix("autogroup:")
        if name not in autogroups:
            allowed = ", ".join(f"autogroup:{a}" for a in sorted(autogroups))
            raise PolicyError(f"{where}: {text!r} is not allowed here; use one of {allowed}")
        return Selector(name)
    if text in hosts:
        return Selector("net", text, hosts[text])
    net = _network(text)
    if net is not None:
        return Selector("net", text, net)
    return Selector("user", _check_user(text, where))


def parse_ports(text: str, where: str) -> tuple[tuple[int, int], ...]:
    if text == "*":
        return ((0, MAX_PORT),)
    ranges = []
    for part in text.split(","):
        lo_s, sep, hi_s = part.partition("-")
        if not lo_s.isdigit() or (sep and not hi_s.isdigit()):
            raise PolicyError(f"{where}: bad port {part!r}; write 22, 22,80, 8000-8100 or *")
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
        if hi > MAX_PORT or lo > hi:
            raise PolicyError(f"{where}: bad port range {part!r}; ports are 0-65535, low-high")
        ranges.append((lo, hi))
    return tuple(ranges)


def parse_proto(value: Any, where: str) -> int:
    if isinstance(value, str) and value.lower() in PROTO_NUMBERS:
        return PROTO_NUMBERS[value.lower()]
    if isinstance(value, str) and value.isdigit() and int(value) <= 255:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    names = ", ".join(sorted(PROTO_NUMBERS))
    raise PolicyError(f"{where}: bad proto {value!r}; use one of {names} or a number 0-255")


# As Tailscale: autogroup:self in dst means "each source user's own devices", so
# every source must stand for users.
SELF_SOURCE_KINDS = frozenset({"any", "user", "group", "member"})
_KIND_NAMES = {"tag": "a tag", "tagged": "autogroup:tagged", "net": "a host or address"}


def _check_self_sources(
    src_texts: list[str], src: tuple[Selector, ...], dst: list[Selector], where: str
) -> None:
    if not any(sel.kind == "self" for sel in dst):
        return
    for text, sel in zip(src_texts, src, strict=True):
        if sel.kind not in SELF_SOURCE_KINDS:
            raise PolicyError(
                f"{where} src {text!r}: autogroup:self in dst may only be used with sources "
                f'that are users, groups, autogroup:member or "*"; {text!r} is '
                f"{_KIND_NAMES.get(sel.kind, sel.kind)}"
            )


def _parse_groups(raw: Any) -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    for name, members in _dict(raw, "groups").items():
        if not name.startswith("group:") or not _NAME.match(name.removeprefix("group:")):
            raise PolicyError(f"groups: bad group name {name!r}; write group:NAME")
        where = f"groups: {name}"
        for m in _str_list(members, where):
            if m.startswith(("group:", "tag:", "autogroup:")):
                raise PolicyError(f"{where}: {m!r} cannot be a group member; list users only")
            _check_user(m, where)
        groups[name] = frozenset(members)
    return groups


def _parse_hosts(raw: Any) -> dict[str, IPNetwork]:
    hosts: dict[str, IPNetwork] = {}
    for name, addr in _dict(raw, "hosts").items():
        if not _NAME.match(name) or _network(name) is not None:
            raise PolicyError(f"hosts: bad host name {name!r}; use letters, digits, . _ -")
        net = _network(addr) if isinstance(addr, str) else None
        if net is None:
            raise PolicyError(f"hosts: {name}: {addr!r} is not an IP address or CIDR")
        hosts[name] = net
    return hosts


def _parse_tag_owners(raw: Any, groups: dict[str, frozenset[str]]) -> dict[str, tuple[str, ...]]:
    raw = _dict(raw, "tagOwners")
    owners: dict[str, tuple[str, ...]] = {}
    for tag, members in raw.items():
        if not tag.startswith("tag:") or not _NAME.match(tag.removeprefix("tag:")):
            raise PolicyError(f"tagOwners: bad tag name {tag!r}; write tag:NAME")
        where = f"tagOwners: {tag}"
        for m in _str_list(members, where):
            if m.startswith("group:") and m not in groups:
                raise PolicyError(f'{where}: unknown group {m!r}; define it under "groups"')
            if m.startswith("tag:") and m not in raw:
                raise PolicyError(f'{where}: unknown tag {m!r}; define it under "tagOwners"')
            if m.startswith("autogroup:") and m not in ("autogroup:admin", "autogroup:member"):
                raise PolicyError(f"{where}: {m!r} cannot own a tag")
            if not m.startswith(("group:", "tag:", "autogroup:")):
                _check_user(m, where)
        owners[tag] = tuple(members)
    return owners


def _named(raw: Any, where: str, known: dict[str, Any], section: str) -> tuple[Any, ...]:
    names = [raw] if isinstance(raw, str) else _str_list(raw, where)
    found = []
    for name in names:
        if name not in known:
            raise PolicyError(f'{where}: unknown {name!r}; define it under "{section}"')
        found.append(known[name])
    return tuple(found)


def _parse_acls(
    raw: Any,
    groups: dict[str, frozenset[str]],
    hosts: dict[str, IPNetwork],
    tag_owners: dict[str, tuple[str, ...]],
    schedules: dict[str, Schedule] | None = None,
    postures: dict[str, Posture] | None = None,
    default_posture: tuple[Posture, ...] = (),
) -> tuple[Acl, ...]:
    if not isinstance(raw, list):
        raise PolicyError("acls: expected a list of rules")
    acls = []
    for i, entry in enumerate(raw, 1):
        where = f"acls[{i}]"
        entry = dict(_dict(entry, where))
        # Tailscale still reads the legacy names "users" (src) and "ports" (dst).
        for new_key, legacy in (("src", "users"), ("dst", "ports")):
            if legacy in entry:
                if new_key in entry:
                    raise PolicyError(f'{where}: give "{new_key}" or "{legacy}", not both')
                entry[new_key] = entry.pop(legacy)
        unknown = set(entry) - {"action", "src", "dst", "proto", "schedule", "srcPosture"}
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if entry.get("action") != "accept":
            raise PolicyError(f'{where}: bad action {entry.get("action")!r}; only "accept"')
        for key in ("src", "dst"):
            if key not in entry:
                raise PolicyError(f"{where}: missing {key!r}")
        src_texts = _str_list(entry["src"], f"{where} src")
        src = tuple(
            parse_selector(s, f"{where} src", groups, hosts, tag_owners, AUTOGROUPS_SRC)
            for s in src_texts
        )
        protos = DEFAULT_PROTOS
        if "proto" in entry:
            protos = (parse_proto(entry["proto"], f"{where} proto"),)
        dst = []
        for d in _str_list(entry["dst"], f"{where} dst"):
            sel_text, sep, ports_text = d.rpartition(":")
            if not sep or not sel_text:
                raise PolicyError(f"{where} dst: {d!r} needs ports; write {d}:* or {d}:22")
            dwhere = f"{where} dst {d!r}"
            ports = parse_ports(ports_text, dwhere)
            if protos[0] not in PORTED_PROTOS and "proto" in entry and ports_text != "*":
                raise PolicyError(f"{dwhere}: proto {entry['proto']} has no ports; use :*")
            sel = parse_selector(sel_text, dwhere, groups, hosts, tag_owners, AUTOGROUPS_DST)
            dst.append(DstEntry(sel, ports))
        _check_self_sources(src_texts, src, [d.selector for d in dst], where)
        when: tuple[Schedule, ...] = ()
        if "schedule" in entry:
            when = _named(entry["schedule"], f"{where} schedule", schedules or {}, "schedules")
        devices = default_posture
        if "srcPosture" in entry:
            devices = _named(entry["srcPosture"], f"{where} srcPosture", postures or {}, "postures")
        acls.append(Acl(src, tuple(dst), protos, when, devices))
    return tuple(acls)


def parse_ip(text: str, where: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """A grant's "ip" entry: "*", "PORTS" or "PROTO:PORTS" -> (protocols, port ranges).

    "*" and a bare PORTS cover what an acl without "proto" covers (TCP, UDP, ICMP and
    ICMPv6); PROTO is a name or number as in an acl's "proto"."""
    if text == "*":
        return DEFAULT_PROTOS, ((0, MAX_PORT),)
    proto_text, sep, ports_text = text.rpartition(":")
    if not sep:
        return DEFAULT_PROTOS, parse_ports(text, where)
    if not proto_text or ":" in proto_text:
        raise PolicyError(f"{where}: bad ip {text!r}; write *, 443, tcp:443, tcp:80-90 or icmp:*")
    proto = parse_proto(proto_text, where)
    ports = parse_ports(ports_text, where)
    if proto not in PORTED_PROTOS and ports_text != "*":
        raise PolicyError(f"{where}: {proto_text} has no ports; write {proto_text}:*")
    return (proto,), ports


def _grant_dst(
    text: str,
    where: str,
    groups: dict[str, frozenset[str]],
    hosts: dict[str, IPNetwork],
    tag_owners: dict[str, tuple[str, ...]],
) -> Selector:
    """A grant's dst names targets only: its ports are in "ip"."""
    prefixed = text.startswith(("tag:", "group:", "autogroup:"))
    name = text.partition(":")[2] if prefixed else text
    if ":" in name and (prefixed or (text not in hosts and _network(text) is None)):
        raise PolicyError(
            f'{where}: a grant\'s dst takes no ports; name the target and put ports in "ip"'
        )
    return parse_selector(text, where, groups, hosts, tag_owners, AUTOGROUPS_DST)


GRANT_KEYS = frozenset({"src", "dst", "ip", "app", "via", "srcPosture", "schedule"})


def _parse_grants(
    raw: Any,
    groups: dict[str, frozenset[str]],
    hosts: dict[str, IPNetwork],
    tag_owners: dict[str, tuple[str, ...]],
    schedules: dict[str, Schedule],
    postures: dict[str, Posture],
    default_posture: tuple[Posture, ...],
) -> tuple[Acl, ...]:
    """Tailscale's grants, as the rules the equivalent acls make: one rule per
    protocol set named in "ip" (a grant's ports apply to every dst)."""
    if not isinstance(raw, list):
        raise PolicyError("grants: expected a list of grants")
    rules: list[Acl] = []
    for i, entry in enumerate(raw, 1):
        where = f"grants[{i}]"
        entry = _dict(entry, where)
        unknown = set(entry) - GRANT_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if "app" in entry:
            raise PolicyError(
                f"{where} app: application capabilities are not supported; weftnet grants "
                'carry network access ("ip") only'
            )
        if "via" in entry:
            raise PolicyError(
                f"{where} via: routing through a node is not supported (weftnet routes "
                "through any approved router the rules allow; docs/routes.md)"
            )
        for key in ("src", "dst", "ip"):
            if key not in entry:
                raise PolicyError(f"{where}: missing {key!r}")
        src_texts = _str_list(entry["src"], f"{where} src")
        src = tuple(
            parse_selector(s, f"{where} src", groups, hosts, tag_owners, AUTOGROUPS_SRC)
            for s in src_texts
        )
        dst = [
            _grant_dst(d, f"{where} dst {d!r}", groups, hosts, tag_owners)
            for d in _str_list(entry["dst"], f"{where} dst")
        ]
        _check_self_sources(src_texts, src, dst, where)
        ip_texts = _str_list(entry["ip"], f"{where} ip")
        if not ip_texts:
            raise PolicyError(f'{where} ip: empty; write ["*"] for everything')
        by_protos: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for text in ip_texts:
            protos, ports = parse_ip(text, f"{where} ip {text!r}")
            by_protos.setdefault(protos, []).extend(ports)
        when: tuple[Schedule, ...] = ()
        if "schedule" in entry:
            when = _named(entry["schedule"], f"{where} schedule", schedules, "schedules")
        devices = default_posture
        if "srcPosture" in entry:
            devices = _named(entry["srcPosture"], f"{where} srcPosture", postures, "postures")
        for protos, ranges in by_protos.items():
            ports = tuple(dict.fromkeys(ranges))
            entries = tuple(DstEntry(sel, ports) for sel in dst)
            rules.append(Acl(src, entries, protos, when, devices))
    return tuple(rules)


def _approvers(
    raw: Any, where: str, groups: dict[str, frozenset[str]], tag_owners: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    owners = _str_list(raw, where)
    for i, owner in enumerate(owners):
        at = f"{where}[{i}]"
        if owner.startswith("tag:"):
            if owner not in tag_owners:
                raise PolicyError(f"{at}: unknown tag {owner} (add it to tagOwners)")
        elif owner.startswith("group:"):
            if owner not in groups:
                raise PolicyError(f'{at}: unknown group {owner} (define it under "groups")')
        elif owner.startswith("autogroup:"):
            if owner != "autogroup:member":
                raise PolicyError(f"{at}: {owner} cannot approve routes; use autogroup:member")
        else:
            _check_user(owner, at)
    return tuple(owners)


def _parse_auto_approvers(
    raw: Any, groups: dict[str, frozenset[str]], tag_owners: dict[str, tuple[str, ...]]
) -> AutoApprovers:
    raw = _dict(raw, "autoApprovers")
    unknown = set(raw) - {"routes", "exitNode"}
    if unknown:
        raise PolicyError(
            f"autoApprovers: unknown key {sorted(unknown)[0]!r}; use routes, exitNode"
        )
    routes = []
    for prefix, owners in _dict(raw.get("routes", {}), "autoApprovers.routes").items():
        where = f"autoApprovers.routes[{prefix!r}]"
        try:
            net = ipaddress.ip_network(prefix, strict=True)
        except ValueError:
            raise PolicyError(
                f"{where}: invalid prefix; write a CIDR without host bits, e.g. 198.18.20.0/24"
            ) from None
        if net.prefixlen == 0:
            raise PolicyError(f'{where}: a /0 is an exit route; use "exitNode"')
        routes.append((net, _approvers(owners, where, groups, tag_owners)))
    exit_node = _approvers(raw.get("exitNode", []), "autoApprovers.exitNode", groups, tag_owners)
    return AutoApprovers(tuple(routes), exit_node)


def _parse_tests(raw: Any) -> tuple[PolicyTest, ...]:
    if not isinstance(raw, list):
        raise PolicyError("tests: expected a list of tests")
    tests = []
    for i, entry in enumerate(raw, 1):
        where = f"tests[{i}]"
        entry = _dict(entry, where)
        unknown = set(entry) - {"src", "accept", "deny", "proto", "at"}
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        src = entry.get("src")
        if not isinstance(src, str) or not src:
            raise PolicyError(f'{where}: "src" must be a user, group, tag, host or address')
        proto = parse_proto(entry["proto"], f"{where} proto") if "proto" in entry else 6
        accept = tuple(_str_list(entry.get("accept", []), f"{where} accept"))
        deny = tuple(_str_list(entry.get("deny", []), f"{where} deny"))
        if not accept and not deny:
            raise PolicyError(
                f'{where}: a test needs "accept" or "deny" (or both): the HOST:PORTs '
                f"{src} must or must not reach"
            )
        at = None
        if "at" in entry:
            at = _parse_time(entry["at"], f"{where} at")
        tests.append(PolicyTest(src, accept, deny, proto, at))
    return tuple(tests)


def _parse_time(value: Any, where: str) -> float:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        when = datetime.datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError(value)
    except ValueError:
        raise PolicyError(
            f"{where}: bad time {value!r}; write ISO 8601 with a zone, 2026-11-23T09:30:00+01:00"
        ) from None
    return when.timestamp()


def parse_policy(text: str) -> Policy:
    """Parse and validate a HuJSON policy; raise PolicyError on the first fault."""
    raw = _dict(loads(text), "policy")
    unknown = set(raw) - TOP_LEVEL_KEYS - IGNORED_KEYS
    if unknown:
        keys = ", ".join(sorted(TOP_LEVEL_KEYS))
        raise PolicyError(f"unknown key {sorted(unknown)[0]!r}; known keys are {keys}")
    groups = _parse_groups(raw.get("groups", {}))
    hosts = _parse_hosts(raw.get("hosts", {}))
    tag_owners = _parse_tag_owners(raw.get("tagOwners", {}), groups)
    schedules = parse_schedules(raw.get("schedules", {}))
    postures = parse_postures(raw.get("postures", {}))
    default_posture: tuple[Posture, ...] = ()
    if "defaultSrcPosture" in raw:
        default_posture = _named(
            raw["defaultSrcPosture"], "defaultSrcPosture", postures, "postures"
        )
    acls = _parse_acls(
        raw.get("acls", []), groups, hosts, tag_owners, schedules, postures, default_posture
    )
    acls += _parse_grants(
        raw.get("grants", []), groups, hosts, tag_owners, schedules, postures, default_posture
    )
    tests = _parse_tests(raw.get("tests", []))
    auto = _parse_auto_approvers(raw.get("autoApprovers", {}), groups, tag_owners)
    ignored = tuple(sorted(set(raw) & IGNORED_KEYS))
    return Policy(groups, hosts, tag_owners, acls, tests, ignored, schedules, postures, auto)
