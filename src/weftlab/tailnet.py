"""A tailnet in the lab: a coordination server and weftd nodes in namespaces (used by
the tests and `make demo`)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weftlab.netlab import Host, poll_until
from weftlab.wgpeers import local_api_answers

CONTROL_PORT = 8080


@dataclass
class Control:
    host: Host
    data_dir: Path
    database_url: str | None = None
    proc: Any = None
    extra: list[str] = field(default_factory=list)  # more `serve` flags

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{CONTROL_PORT}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "weftnet.control.cli.main", "serve"]
        cmd += ["--listen", f"0.0.0.0:{CONTROL_PORT}", "--data-dir", str(self.data_dir)]
        cmd += ["--server-url", self.url]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        cmd += self.extra
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "a")  # noqa: SIM115
        self.proc = self.host.popen(cmd, stdout=log, stderr=log)
        poll_until(
            lambda: (self.data_dir / "admin.json").exists() and self._healthy(),
            timeout_s=30,
            what="the control server to answer /health",
        )

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"control server exited: {self.log()[-2000:]}")
        r = self.host.run(
            ["python3", "-c", f"import urllib.request as u; u.urlopen('{self.url}/health')"],
            check=False,
        )
        return r.returncode == 0

    def log(self) -> str:
        return (self.data_dir.parent / f"{self.data_dir.name}.log").read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def run_admin(self, *args: str) -> Any:
        """``weft-control ARGS --data-dir ...`` on the control host (a CompletedProcess)."""
        cmd = [sys.executable, "-m", "weftnet.control.cli.main", *args]
        return self.host.run([*cmd, "--data-dir", str(self.data_dir)], check=False, timeout=60)

    def admin(self, *args: str, check: bool = True) -> str:
        r = self.run_admin(*args)
        if check and r.returncode != 0:
            raise AssertionError(f"weft-control {' '.join(args)} failed: {r.stderr}{r.stdout}")
        return r.stdout

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin(*args, "--json"))


@dataclass
class Node:
    host: Host
    state_dir: Path
    socket: str
    proc: Any = None
    extra: list[str] = field(default_factory=list)

    def start(self) -> None:
        cmd = [sys.executable, "-m", "weftnet.node.main", "--state-dir", str(self.state_dir)]
        cmd += ["--socket", self.socket, "--tun", "weft0", *self.extra]
        log = open(f"{self.state_dir}.log", "a")  # noqa: SIM115
        self.proc = self.host.popen(cmd, stdout=log, stderr=log)
        poll_until(
            lambda: local_api_answers(self.socket) or self._died(),
            timeout_s=15,
            what=f"weftd on {self.host.name} to answer on its socket",
        )

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


def start_control(
    tmp: Path, host: Host, database_url: str | None = None, extra: list[str] | None = None
) -> Control:
    c = Control(host, tmp / "control", database_url, extra=extra or [])
    c.start()
    return c


def join(control: Control, nodes: list[Node], user: str = "alice") -> str:
    """Create ``user`` and a reusable auth key, and `weft up` every node with it (each
    named after its host). Returns the key."""
    control.admin("users", "create", user)
    key = control.admin("keys", "create", "--user", user, "--reusable").strip()
    assert key.startswith("weftkey-") and "\n" not in key
    for n in nodes:
        n.weft("up", "--login-server", control.url, "--auth-key", key, "--hostname", n.host.name)
    return key


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
