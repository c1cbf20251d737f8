"""A tailnet in the lab: weftd nodes in namespaces around a coordination server
(``weftlab.control.start_control``), used by the tests and `make demo`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weftlab.control import LAB_CONTROL_PORT, Control
from weftlab.netlab import Host, poll_until
from weftlab.testca import lab_ca
from weftlab.wgpeers import local_api_answers

CONTROL_PORT = LAB_CONTROL_PORT  # the control server of a lab tailnet (weftlab.control)


@dataclass
class Node:
    host: Host
    state_dir: Path
    socket: str
    proc: Any = None
    extra: list[str] = field(default_factory=list)
    module = "weftnet.node.main"  # what `python -m` runs: weftd, or a lab launcher of it

    def argv(self) -> list[str]:
        """weftd's own command line (before ``command`` wraps it)."""
        cmd = [sys.executable, "-m", self.module, "--state-dir", str(self.state_dir)]
        cmd += ["--socket", self.socket, "--tun", "weft0"]
        return [*cmd, "--tls-ca", str(lab_ca().ca_file), *self.extra]  # lab servers' https

    def start(self) -> None:
        cmd = self.argv()
        log = open(f"{self.state_dir}.log", "a")  # noqa: SIM115
        self.proc = self.host.popen(self.command(cmd), stdout=log, stderr=log)
        poll_until(
            lambda: local_api_answers(self.socket) or self._died(),
            timeout_s=15,
            what=f"weftd on {self.host.name} to answer on its socket",
        )

    def command(self, cmd: list[str]) -> list[str]:
        """The argv that starts weftd (a subclass may wrap it: weftlab.resolved)."""
        return cmd

    def _died(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"weftd on {self.host.name} exited: {self.log()[-2000:]}")
        return False

    def log(self) -> str:
        return Path(f"{self.state_dir}.log").read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def weft(self, *args: str, check: bool = True, timeout: float = 60) -> Any:
        cmd = [sys.executable, "-m", "weftnet.cli.main", "--socket", self.socket, *args]
        r = self.host.run(cmd, check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"weft {' '.join(args)} on {self.host.name}: {r.stderr}{r.stdout}")
        return r

    def status(self) -> dict[str, Any]:
        return json.loads(self.weft("status", "--json").stdout)

    def ip4(self) -> str:
        return str(self.weft("ip", "-4").stdout.strip())


def join(control: Control, nodes: list[Node], user: str = "alice") -> str:
    """Create ``user`` and a reusable auth key, and `weft up` every node with it (each
    named after its host). Returns the key."""
    control.admin("users", "create", user)
    key = control.admin("keys", "create", "--user", user, "--reusable").stdout.strip()
    assert key.startswith("weftkey-") and "\n" not in key
    for n in nodes:
        n.weft("up", "--login-server", control.url, "--auth-key", key, "--hostname", n.host.name)
    return key


def start_second_relay(relay_host: Host, control: Control, tmp: Path) -> subprocess.Popen[Any]:
    """A second relay region ("second", with its own STUN server on 3478) on
    ``relay_host``: two STUN servers, so that nodes learn their NAT kind. Returns its
    process (the lab kills it when it closes)."""
    api_key = control.admin("apikeys", "create", "--scope", "relay").stdout.strip()
    cert, key = lab_ca().issue("relay2", [relay_host.ip], tmp / "relay2-tls")
    proc = relay_host.popen(
        [sys.executable, "-m", "weftnet.control.cli.main", "relay", "--region", "second",
         "--listen", "0.0.0.0:8081", "--stun-port", "3478", "--control-url", control.url,
         "--api-key", api_key, "--data-dir", str(tmp / "relay2"),
         "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(control.ca_file)],
    )  # fmt: skip
    poll_until(lambda: len(control.admin_json("relays", "list")) == 2, timeout_s=15, what="relay 2")
    return proc


def start_node(tmp: Path, host: Host, name: str, extra: list[str] | None = None) -> Node:
    n = Node(host, tmp / f"node-{name}", str(tmp / f"{name}.sock"), extra=extra or [])
    n.start()
    return n


def pings(src: Node, dst_ip: str, count: int = 1, wait_s: int = 1) -> bool:
    r = src.host.run(
        ["ping", "-c", str(count), "-i", "0.2", "-W", str(wait_s), dst_ip], check=False, timeout=30
    )
    return r.returncode == 0


def wait_mesh(nodes: list[Node], timeout_s: float) -> float:
    """Seconds until every ordered pair pings; AssertionError after ``timeout_s``."""
    start = time.monotonic()
    ips = {n.host.name: n.ip4() for n in nodes}
    pending = [(a, b) for a in nodes for b in nodes if a is not b]
    while True:
        failed = [(a, b) for a, b in pending if not pings(a, ips[b.host.name])]
        if not failed:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            names = [(a.host.name, b.host.name) for a, b in failed]
            raise AssertionError(f"no ping after {timeout_s} s between {names}")
        pending = failed


@dataclass
class FaultyNode(Node):
    """A weftd started through weftlab.faulty_weftd: ``inject_fault(task)`` fails one of
    its supervised tasks (the map stream, the path layer's loop, the netlink watcher)."""

    module = "weftlab.faulty_weftd"

    def inject_fault(self, task: str) -> None:
        import signal

        (self.state_dir / "inject-fault").write_text(task)
        self.proc.send_signal(signal.SIGUSR1)


def start_faulty_node(tmp: Path, host: Host, name: str) -> FaultyNode:
    n = FaultyNode(host, tmp / f"node-{name}", str(tmp / f"{name}.sock"))
    n.start()
    return n
