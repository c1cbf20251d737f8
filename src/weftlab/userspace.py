"""A weftd in userspace-networking mode run by an unprivileged user in a lab namespace.

The user (``LAB_USER``, created with useradd when missing) gets its own home under the
host's work directory and runs weftd with no capabilities (setpriv: real and effective
ids, no groups, empty inheritable and bounding sets, no_new_privs). In the command's
private mount namespace (``ip netns exec`` gives each command one) /dev/net is an empty
tmpfs, so there is no TUN to open at all, and a non-traversable directory above the
Python interpreter (pyenv under /root) is replaced by a tmpfs that holds just the
interpreter's tree: nothing changes on the host itself.

weftd gets no --state-dir or --socket: the defaults for a user are exercised
(~/.local/state/weft and its weftd.sock), and ``weft`` run as the user finds the socket
by itself.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import shlex
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weftlab.netlab import Host
from weftlab.tailnet import Node
from weftlab.testca import lab_ca

LAB_USER = "weftuser"


def ensure_user(name: str = LAB_USER) -> tuple[int, int]:
    """(uid, gid) of ``name``, created as a system user without a home if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def _hidden_ancestor(path: str) -> tuple[str, str] | None:
    """The first directory above ``path`` that others cannot traverse, and its child on
    the way to ``path`` (("/root", "/root/.pyenv")); None when all are traversable."""
    parts = Path(path).resolve().parts
    for i in range(1, len(parts) - 1):
        d = Path(*parts[: i + 1])
        if not d.stat().st_mode & stat.S_IXOTH:
            return str(d), str(Path(*parts[: i + 2]))
    return None


def unprivileged_argv(uid: int, gid: int, cmd: list[str], home: str) -> list[str]:
    """``cmd`` as uid/gid without capabilities, with no /dev/net/tun in sight."""
    steps = ["mount -t tmpfs -o mode=0755 tmpfs /dev/net"]
    hidden = _hidden_ancestor(os.path.realpath(sys.executable))
    if hidden is not None:
        top, keep = hidden
        steps += [
            "x=$(mktemp -d)",
            f'mount --bind {shlex.quote(keep)} "$x"',
            f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(top)}",
            f"mkdir -p {shlex.quote(keep)}",
            f'mount --bind "$x" {shlex.quote(keep)}',
        ]
    env = f"HOME={shlex.quote(home)} XDG_RUNTIME_DIR= XDG_STATE_HOME= USER={LAB_USER}"
    priv = (
        f"setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all"
        " --bounding-set=-all --no-new-privs"
    )
    script = " && ".join(steps) + f' && exec env {env} {priv} -- "$@"'
    return ["sh", "-c", script, "sh", *cmd]


@dataclass
class UserspaceNode(Node):
    """weftd --tun userspace-networking as LAB_USER; ``socket`` is where it listens."""

    home: Path = Path()
    uid: int = 0
    gid: int = 0

    def argv(self) -> list[str]:
        ca = self.home / "ca.pem"
        shutil.copy(lab_ca().ca_file, ca)
        os.chown(ca, self.uid, self.gid)
        profile = os.environ.get("WEFTLAB_PROFILE")  # cProfile output for weftd, if set
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        cmd = [sys.executable, *prof, "-m", self.module, "--tun", "userspace-networking"]
        return [*cmd, "--tls-ca", str(ca), *self.extra]

    def command(self, cmd: list[str]) -> list[str]:
        return self.as_user(cmd)

    def as_user(self, cmd: list[str]) -> list[str]:
        return unprivileged_argv(self.uid, self.gid, cmd, str(self.home))

    def run_as_user(self, cmd: list[str], check: bool = False, timeout: float = 60) -> Any:
        return self.host.run(self.as_user(cmd), check=check, timeout=timeout)

    def weft_as_user(self, *args: str) -> Any:
        """`weft` as the user, without --socket: it finds the user's weftd by itself."""
        return self.run_as_user([sys.executable, "-m", "weftnet.cli.main", *args])


def start_userspace_node(host: Host, extra: list[str] | None = None) -> UserspaceNode:
    uid, gid = ensure_user()
    os.chmod(host.lab.workdir, 0o711)  # traversable, not listable, for the user
    os.chmod(host.workdir, 0o711)
    home = host.workdir / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, uid, gid)
    state = home / ".local" / "state" / "weft"  # weftd's default for the user
    for d in (home / ".local", state.parent):  # weftd makes the last one itself
        d.mkdir(mode=0o700, exist_ok=True)
        os.chown(d, uid, gid)
    node = UserspaceNode(
        host,
        state,
        str(state / "weftd.sock"),
        extra=extra or [],
        home=home,
        uid=uid,
        gid=gid,
    )
    node.start()
    return node


def http_server(host: Host, bind: str, port: int, root: Path, text: str) -> None:
    """Python's http.server on ``host`` serving ``text`` as /hello.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hello.txt").write_text(text)
    host.popen([sys.executable, "-m", "http.server", str(port), "--bind", bind,
                "--directory", str(root)])  # fmt: skip
    host.wait_listening(port, proto="tcp")


def curl(host: Host, *args: str, timeout: int = 10) -> tuple[int, str]:
    """curl on ``host``: (exit code, output and errors)."""
    r = host.run(["curl", "-sS", "--max-time", str(timeout), *args], check=False,
                 timeout=timeout + 20)  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def random_file(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; their SHA-256 (hex)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Download:
    code: int  # curl's exit code
    output: str  # curl's messages
    seconds: float
    size: int  # bytes written
    sha256: str

    def mbit_s(self) -> float:
        return self.size * 8 / 1e6 / self.seconds if self.seconds else 0.0


def download(host: Host, url: str, out: Path, *args: str, timeout: int = 120) -> Download:
    """curl ``url`` on ``host`` into ``out`` (``args``: proxy options, --limit-rate...)."""
    out.unlink(missing_ok=True)
    start = time.monotonic()
    code, output = curl(host, *args, "-o", str(out), url, timeout=timeout)
    seconds = time.monotonic() - start
    size = out.stat().st_size if out.exists() else 0
    return Download(code, output, seconds, size, sha256_file(out) if out.exists() else "")
