"""weftd's routing plumbing (node.routing) on a real kernel, in a namespace: the rules,
table 52 and ``table inet weftd`` are applied exactly once however often, survive
"crashes" (a fresh RouteManager cleans up and applies again) as one copy, go away on
remove, and weftd's marked sockets still reach the underlay while table 52 sends
everything else into weft0 (docs/routes.md). weft0 is a veth here: the kernel of the
lab has no dummy module, and no TUN is needed to route into an interface."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from tests.lab.test_netlab import ECHO_PORT, start_echo_server
from weftlab.netlab import Host, Lab
from weftnet.node.routeplan import Desired

pytestmark = pytest.mark.lab

# argv[1]: "apply" | "remove" | "cleanup+apply"; argv[2]: a Desired as JSON. Each run
# is a fresh process and RouteManager: a restarted weftd.
MANAGE = """
import json, sys
from weftnet.node.routeplan import Desired
from weftnet.node.routing import RouteManager
m = RouteManager()
d = Desired(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()})
if sys.argv[1].startswith("cleanup"):
    m.cleanup()
if sys.argv[1].endswith("apply"):
    m.apply(d)
else:
    m.remove()
print(json.dumps(m.health()))
"""

# Asks the echo server at argv[1] from a socket marked (argv[2] == "1") or not.
ASK = """
import socket, sys
from weftnet import sockmark
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[2] == "1":
    assert sockmark.mark(s)
s.settimeout(1.0)
try:
    s.sendto(b"hi", (sys.argv[1], int(sys.argv[3])))
    print(s.recvfrom(100)[0].decode())
except OSError as e:
    print("error", type(e).__name__)
"""

DESIRED = Desired(
    ifname="weft0",
    subnet_routes=("198.18.20.0/24",),
    exit_node=True,
    exit_routes=("0.0.0.0/0", "::/0"),
    serve_routes=("198.19.7.0/24",),
    serve_exit=True,
)


def manage(host: Host, verb: str, d: Desired = DESIRED) -> None:
    out = host.run([sys.executable, "-c", MANAGE, verb, json.dumps(dataclasses.asdict(d))])
    assert json.loads(out.stdout) == [], out.stdout


def state(host: Host) -> dict[str, list[str]]:
    def lines(cmd: list[str]) -> list[str]:
        return [ln.strip() for ln in host.run(cmd, check=False).stdout.splitlines() if ln.strip()]

    rules = lines(["ip", "rule"]) + lines(["ip", "-6", "rule"])
    return {
        "rules": [r for r in rules if r.split(":")[0] in ("5210", "5230", "5250", "5270")],
        "routes": lines(["ip", "route", "show", "table", "52"])
        + lines(["ip", "-6", "route", "show", "table", "52"]),
        "tables": [t for t in lines(["nft", "list", "tables"]) if "weftd" in t],
    }


def weft0(host: Host) -> None:
    host.run(["ip", "link", "add", "weft0", "type", "veth", "peer", "name", "weft0p"])
    host.run(["ip", "addr", "add", "100.64.0.1/32", "dev", "weft0"])
    for dev in ("weft0", "weft0p"):
        host.run(["ip", "link", "set", dev, "up"])


def test_apply_is_idempotent_survives_crashes_and_remove_leaves_nothing(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a = lab.host("a", inet)
    weft0(a)
    manage(a, "apply")
    first = state(a)
    assert len(first["rules"]) == 8  # 4 priorities x 2 families
    assert any(r.startswith("5270:") and r.endswith("lookup 52") for r in first["rules"])
    assert any(
        r.startswith("5210:") and "fwmark 0x80000/0xff0000 lookup main" in r for r in first["rules"]
    )
    assert any(r.startswith("5250:") and "unreachable" in r for r in first["rules"])
    routes = "\n".join(first["routes"])
    assert "198.18.20.0/24 dev weft0" in routes
    assert "default dev weft0" in routes and "unreachable default" in routes
    assert first["tables"] == ["table inet weftd"]
    ruleset = a.run(["nft", "list", "table", "inet", "weftd"]).stdout
    assert "masquerade" in ruleset and "maxseg size set rt mtu" in ruleset

    manage(a, "apply")
    assert state(a) == first  # applied again: one copy of each
    for _ in range(3):  # kill -9, restart: leftovers removed, applied again
        manage(a, "cleanup+apply")
        assert state(a) == first

    gone = dataclasses.replace(DESIRED, exit_routes=())  # the exit node left the map
    manage(a, "apply", gone)
    routes = "\n".join(state(a)["routes"])
    assert "default dev weft0" not in routes and "unreachable default" in routes  # blocked

    manage(a, "remove")
    assert state(a) == {"rules": [], "routes": [], "tables": []}


def test_marked_sockets_bypass_a_default_route_into_weft0(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a, b = lab.host("a", inet), lab.host("b", inet)
    weft0(a)
    start_echo_server(b)

    def ask(marked: bool) -> str:
        argv = [sys.executable, "-c", ASK, b.ip, "1" if marked else "0", str(ECHO_PORT)]
        return a.run(argv).stdout.strip()

    assert ask(False).startswith(a.ip)  # before: the underlay as usual
    manage(a, "apply", Desired(exit_node=True, exit_routes=("0.0.0.0/0", "::/0")))
    assert ask(True).startswith(a.ip)  # weftd's own traffic still leaves by the underlay
    assert ask(False).startswith("error")  # everything else goes into weft0 (the exit node)
    manage(a, "apply", Desired(exit_node=True))  # exit node gone: blocked, no leak
    assert ask(True).startswith(a.ip)
    assert ask(False).startswith("error")
    manage(a, "remove")
    assert ask(False).startswith(a.ip)
