"""weftd's routes, rules and nftables table in the kernel (node.routeplan says what).

``RouteManager.apply(desired)`` makes the kernel hold exactly the plan: it reads weftd's
rules (priorities 5210-5270) and table 52 over netlink (pyroute2), adds what is missing
first and then deletes what is not wanted (so a change never opens a gap the kill switch
should cover), and replaces ``table inet weftd`` in one ``nft -f -`` transaction when
its text changes. ``remove()`` takes all of it away (``weft down``, logout, exit) and
``cleanup()`` is the same at start, for what a crashed weftd left behind. Calls block:
the daemon runs them in an executor. Failures do not raise: they are logged and shown in
Health until an apply succeeds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from weftnet.marks import MARK_MASK
from weftnet.node import routeplan
from weftnet.node.reconcile import OVERLAY_RANGES
from weftnet.node.routeplan import Desired, Route, Rule

log = logging.getLogger("weftd")

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
RTN_UNICAST, RTN_UNREACHABLE, RTN_THROW = 1, 7, 9  # linux/rtnetlink.h route types
FR_ACT_TO_TBL, FR_ACT_UNREACHABLE = 1, 7  # linux/fib_rules.h rule actions
KINDS = {RTN_UNICAST: "dev", RTN_UNREACHABLE: "unreachable", RTN_THROW: "throw"}
TYPES = {kind: t for t, kind in KINDS.items()}
NFT_TIMEOUT_S = 10.0


def read_forwarding() -> tuple[bool | None, bool | None]:
    """(net.ipv4.ip_forward, net.ipv6.conf.all.forwarding) as read; None: unreadable."""
    out: list[bool | None] = []
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        try:
            with open(path) as f:
                out.append(f.read().strip() != "0")
        except OSError:
            out.append(None)
    return out[0], out[1]


class RouteManager:
    def __init__(self, nft: str = "nft", run: Callable[..., Any] = subprocess.run) -> None:
        self.nft = nft
        self._run = run
        self._nft_body: str | bool | None = False  # what table inet weftd holds; False: unknown
        self.problems: dict[str, str] = {}  # what failed last, by part: for Health

    def health(self) -> list[str]:
        return [f"routes: {text}" for text in self.problems.values()]

    def local_prefixes(self, ifname: str) -> list[str]:
        return local_prefixes(ifname)

    def forwarding(self) -> tuple[bool | None, bool | None]:
        return read_forwarding()

    # -- the whole state ----------------------------------------------------------------

    def apply(self, d: Desired) -> None:
        self._netlink(routeplan.rules(d), routeplan.routes(d), d.ifname)
        self._nft(routeplan.nft_ruleset(d))

    def remove(self) -> None:
        self._netlink([], [], None)
        self._nft(None)

    def cleanup(self) -> None:
        """What a crashed weftd may have left: all of it removed (apply comes after)."""
        self._nft_body = False  # whatever is there, replace it
        self.remove()

    # -- netlink ------------------------------------------------------------------------

    def _netlink(
        self, want_rules: list[Rule], want_routes: list[Route], ifname: str | None
    ) -> None:
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                oif = None
                if ifname is not None:
                    found = ipr.link_lookup(ifname=ifname)
                    oif = found[0] if found else None
                have_routes = self._routes(ipr)
                have_rules = self._rules(ipr)
                errors: list[str] = []
                for route in want_routes:
                    if route not in have_routes:
                        if route.kind == "dev" and oif is None:
                            errors.append(f"no interface {ifname} for {route.dst}")
                            continue
                        self._try(
                            errors, f"add route {route.dst}", self._route, ipr, "add", route, oif
                        )
                for rule in want_rules:
                    if rule not in have_rules:
                        self._try(errors, f"add rule {rule.priority}", self._rule, ipr, "add", rule)
                for rule in have_rules:
                    if rule not in want_rules:
                        self._try(
                            errors, f"delete rule {rule.priority}", self._rule, ipr, "del", rule
                        )
                for route, raw in have_routes.items():
                    if route not in want_routes:
                        self._try(errors, f"delete route {route.dst}", ipr.route, "del", **raw)
        except OSError as e:
            errors = [f"netlink: {e}"]
        self._problem("netlink", "; ".join(errors))

    @staticmethod
    def _try(errors: list[str], what: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> None:
        try:
            fn(*a, **kw)
        except Exception as e:  # one route the kernel refuses must not stop the others
            errors.append(f"{what}: {e}")

    def _routes(self, ipr: Any) -> dict[Route, dict[str, Any]]:
        """What table 52 holds: each route as a Route and as the fields that delete it."""
        out: dict[Route, dict[str, Any]] = {}
        for fam in FAMILIES.values():
            for msg in ipr.get_routes(family=fam, table=routeplan.TABLE):
                if msg.get_attr("RTA_TABLE") != routeplan.TABLE:
                    continue
                dst = msg.get_attr("RTA_DST") or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
                net = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
                metric = msg.get_attr("RTA_PRIORITY") or 0
                raw = {"family": fam, "dst": net, "table": routeplan.TABLE, "type": msg["type"],
                       "priority": metric}  # fmt: skip
                kind = KINDS.get(msg["type"], f"type {msg['type']}")
                out[Route(net, kind, metric)] = raw
        return out

    @staticmethod
    def _route(ipr: Any, verb: str, route: Route, oif: int | None) -> None:
        kw: dict[str, Any] = {"family": FAMILIES[route.family], "dst": route.dst,
                              "table": routeplan.TABLE, "type": TYPES[route.kind]}  # fmt: skip
        kw["priority"] = route.metric
        if route.kind == "dev":
            kw["oif"] = oif
        ipr.route(verb, **kw)

    @staticmethod
    def _rules(ipr: Any) -> list[Rule]:
        out = []
        for fam, af in FAMILIES.items():
            for msg in ipr.get_rules(family=af):
                prio = msg.get_attr("FRA_PRIORITY")
                if prio not in routeplan.PRIORITIES:
                    continue
                action = "unreachable" if msg["action"] == FR_ACT_UNREACHABLE else "lookup"
                table = msg.get_attr("FRA_TABLE") or msg["table"]
                out.append(Rule(fam, prio, msg.get_attr("FRA_FWMARK"),
                                0 if action == "unreachable" else table, action))  # fmt: skip
        return out

    @staticmethod
    def _rule(ipr: Any, verb: str, rule: Rule) -> None:
        kw: dict[str, Any] = {"family": FAMILIES[rule.family], "priority": rule.priority}
        if rule.fwmark is not None:
            kw.update(fwmark=rule.fwmark, fwmask=MARK_MASK)
        if rule.action == "unreachable":
            kw["action"] = "FR_ACT_UNREACHABLE"
        else:
            kw["table"] = rule.table
        ipr.rule(verb, **kw)

    # -- nftables -----------------------------------------------------------------------

    def _nft(self, body: str | None) -> None:
        if body == self._nft_body:
            return
        script = routeplan.nft_script(body)
        try:
            done = self._run([self.nft, "-f", "-"], input=script.encode(), capture_output=True,
                             timeout=NFT_TIMEOUT_S, check=False)  # fmt: skip
        except FileNotFoundError:
            if body is not None:
                self._problem("nft", f"{self.nft} not found: install nftables to forward routes")
            return
        except (OSError, subprocess.TimeoutExpired) as e:
            self._problem("nft", f"nft: {e}")
            return
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            if body is None and self._nft_body is False:
                # Cleanup where nft may not run (no privilege): nothing of ours to remove.
                log.info("nft cleanup skipped: %s", " ".join(err)[:200])
                return
            self._problem(
                "nft", f"nft refused table inet {routeplan.NFT_TABLE}: {' '.join(err)[:300]}"
            )
            return
        self._nft_body = body
        self._problem("nft", "")

    def _problem(self, part: str, text: str) -> None:
        if text:
            if self.problems.get(part) != text:
                log.warning("routes: %s", text)
            self.problems[part] = text
        else:
            self.problems.pop(part, None)


def local_prefixes(ifname: str) -> list[str]:
    """The networks this host is directly on (its addresses' prefixes), but for weftd's
    own interface, loopback, link-local and the tailnet's ranges."""
    from pyroute2 import IPRoute

    out: set[str] = set()
    with contextlib.suppress(OSError), IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if names.get(msg["index"]) in (ifname, "lo"):
                continue
            addr = msg.get_attr("IFA_ADDRESS")
            if not addr:
                continue
            net = ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}").network
            if net.is_link_local or net.is_loopback:
                continue
            if any(net.version == r.version and net.overlaps(r) for r in OVERLAY_RANGES):
                continue
            out.add(str(net))
    return sorted(out)
