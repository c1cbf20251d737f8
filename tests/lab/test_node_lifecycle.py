"""weftd's states and supervised tasks, with real daemons in namespaces: `weft up` after
`weft down`, after `weft logout`, and after a restart (defect D4); every supervised task
failed by fault injection (map stream, path layer, netlink watcher, relay client) comes
back within 2 s while traffic keeps flowing (D1)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import Node, join, pings, start_faulty_node, start_node

pytestmark = pytest.mark.lab

TRACEBACK = "Traceback (most recent call last):"


def unexpected_tracebacks(log: str) -> list[str]:
    """Every traceback in a weftd log that is not an injected fault's."""
    chunks = log.split(TRACEBACK)[1:]
    return [c[:1500] for c in chunks if "InjectedFault" not in c.split("\n\n")[0][:3000]]


def timed_up(node: Node, *args: str) -> float:
    t0 = time.monotonic()
    node.weft("up", *args, timeout=30)
    return time.monotonic() - t0


def test_up_after_down_after_logout_and_after_a_restart(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    control = start_control(lab.host("ctl", inet), tmp_path / "control")
    a, b = (start_node(tmp_path, lab.host(name, inet), name) for name in ("a", "b"))
    key = join(control, [a, b])
    b_ip = b.ip4()
    poll_until(lambda: pings(a, b_ip), timeout_s=5, what="a to ping b")
    figures = {}

    a.weft("down")
    assert a.status()["backend_state"] == "Stopped" and not pings(a, b_ip)
    figures["after down"] = timed_up(a)
    assert a.status()["backend_state"] == "Running"
    poll_until(lambda: pings(a, b_ip), timeout_s=5, what="a to ping b after down, up")

    a.weft("logout")
    assert a.status()["backend_state"] == "NeedsLogin"
    figures["after logout"] = timed_up(a, "--login-server", control.url, "--auth-key", key)
    assert a.status()["backend_state"] == "Running"
    b_ip = b.ip4()
    poll_until(lambda: pings(a, b.ip4()), timeout_s=5, what="a to ping b after logout, up")

    a.kill9()
    a.start()
    figures["after restart"] = timed_up(a)
    assert a.status()["backend_state"] == "Running"
    poll_until(lambda: pings(a, b.ip4()), timeout_s=5, what="a to ping b after a restart")
    a.weft("down")
    a.kill9()
    a.start()
    assert a.status()["backend_state"] == "Stopped"
    figures["after down and a restart"] = timed_up(a)
    poll_until(lambda: pings(a, b.ip4()), timeout_s=5, what="a to ping b after restart, up")
    print("`weft up` took: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
    assert a.status()["health"] == []
    for n in (a, b):
        assert unexpected_tracebacks(n.log()) == [], n.log()[-3000:]


def test_every_supervised_task_comes_back_after_a_fault_while_pings_flow(
    lab: Lab, tmp_path: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    control = start_control(lab.host("ctl", inet), tmp_path / "control")
    a = start_faulty_node(tmp_path, lab.host("a", inet), "a")
    b = start_node(tmp_path, lab.host("b", inet), "b")
    join(control, [a, b])
    b_ip = b.ip4()
    poll_until(lambda: pings(a, b_ip), timeout_s=5, what="a to ping b")
    tasks = ("map", "paths", "netmon", "relay default")
    result: dict[str, str] = {}

    def ping_through() -> None:
        r = a.host.run(["ping", "-c", "40", "-i", "0.2", "-W", "1", b_ip], check=False,
                       timeout=60)  # fmt: skip
        result["out"] = r.stdout

    pinger = threading.Thread(target=ping_through)
    pinger.start()
    took = {}
    for task in tasks:
        t0 = time.monotonic()
        a.inject_fault(task)
        poll_until(lambda task=task: f"task {task} restarted" in a.log(), timeout_s=2,
                   what=f"task {task} to restart")  # fmt: skip
        took[task] = time.monotonic() - t0
        log = a.log()
        assert f"task {task} failed: InjectedFault: fault injected into task {task}" in log
        health = a.status()["health"]
        assert any(h.startswith(f"task {task} restarting after error InjectedFault")
                   for h in health), health  # fmt: skip
    pinger.join()
    print("restarted within: " + ", ".join(f"{k} {v:.2f} s" for k, v in took.items()))
    m = re.search(r"(\d+) received, (\d+)% packet loss", result["out"])
    assert m is not None and int(m.group(1)) >= 39, result["out"]  # at most one lost
    poll_until(lambda: a.status()["self"]["online"], timeout_s=5, what="map stream back")
    assert a.log().count(TRACEBACK) == len(tasks)
    for n in (a, b):
        assert unexpected_tracebacks(n.log()) == [], n.log()[-3000:]
