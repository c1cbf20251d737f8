"""systemd-resolved inside one lab host, never installed on the machine (lab only).

Research spec dns-routes.md 4.1 E1: ``make install`` fetches the Debian package with
``apt-get download`` and unpacks it with ``dpkg -x`` into a cache directory (``python -m
weftlab.resolved fetch``; no maintainer scripts run, the machine's /etc/resolv.conf is
untouched); tests never download anything. A process started through
``wrap(...)`` runs in a private mount namespace of the host's network namespace with:
a tmpfs on /run, a copy of /etc/passwd and /etc/group that knows the systemd-resolve
user, the D-Bus policy for org.freedesktop.resolve1, a resolved.conf with no global or
fallback servers and LLMNR/mDNS off (so resolved never asks anything outside the lab),
its own ``dbus-daemon --system``, and resolved; then it execs the command (weftd) with
``resolvectl`` on PATH. ``ResolvedNode`` is a lab weftd started that way, and
``resolvectl(node, ...)`` runs resolvectl in its namespaces.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weftlab.tailnet import Node

CACHE = Path("/var/tmp/weftlab-systemd-resolved")  # the unpacked package, kept across runs
PACKAGE = "systemd-resolved"

# Runs as: sh -c SETUP sh WORKDIR ROOT command...   (inside `unshare -m`)
SETUP = r"""
set -e
W=$1; R=$2; shift 2
mkdir -p "$W"
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /run/systemd /run/weft /run/wireguard
cp /etc/passwd "$W/passwd"; cp /etc/group "$W/group"
grep -q '^systemd-resolve:' "$W/passwd" ||
    echo 'systemd-resolve:x:990:990::/:/usr/sbin/nologin' >> "$W/passwd"
grep -q '^systemd-resolve:' "$W/group" || echo 'systemd-resolve:x:990:' >> "$W/group"
mount --bind "$W/passwd" /etc/passwd
mount --bind "$W/group" /etc/group
mkdir -p "$W/dbus" "$W/etc-systemd"
cp -a /usr/share/dbus-1/system.d/. "$W/dbus/" 2>/dev/null || true
cp "$R/usr/share/dbus-1/system.d/org.freedesktop.resolve1.conf" "$W/dbus/"
mount --bind "$W/dbus" /usr/share/dbus-1/system.d
printf '[Resolve]\nDNS=\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n' \
    > "$W/etc-systemd/resolved.conf"
mount --bind "$W/etc-systemd" /etc/systemd
dbus-daemon --system --fork --nopidfile
i=0; while [ ! -S /run/dbus/system_bus_socket ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
"$R/lib/systemd/systemd-resolved" > "$W/resolved.log" 2>&1 &
i=0
while [ $i -lt 50 ]; do
    busctl --system call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
        NameHasOwner s org.freedesktop.resolve1 2>/dev/null | grep -q true && break
    sleep 0.1; i=$((i+1))
done
export PATH="$R/usr/bin:$PATH"
exec "$@"
"""

# resolv.conf as resolved's stub mode writes it: what detection expects on such a host.
STUB_RESOLV_CONF = (
    "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n"
    "# Do not edit.\n"
    "nameserver 127.0.0.53\n"
    "options edns0 trust-ad\n"
    "search .\n"
)


class ResolvedUnavailable(RuntimeError):
    pass


def unpacked() -> Path:
    """The unpacked systemd-resolved package (``make install`` put it in CACHE)."""
    root = CACHE / "root"
    if (root / "lib/systemd/systemd-resolved").exists():
        return root
    raise ResolvedUnavailable(
        f"no unpacked {PACKAGE} in {CACHE}: run `make install` (it fetches the Debian package)"
    )


def fetch() -> Path:
    """Download the Debian package and unpack it into CACHE (once; ``make install``)."""
    root = CACHE / "root"
    if (root / "lib/systemd/systemd-resolved").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        download = ["apt-get", "download", PACKAGE]
        r = subprocess.run(download, cwd=tmp, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            r = subprocess.run(download, cwd=tmp, capture_output=True, text=True, timeout=300)
        debs = glob.glob(os.path.join(tmp, f"{PACKAGE}_*.deb"))
        if r.returncode != 0 or not debs:
            raise ResolvedUnavailable(f"apt-get download {PACKAGE} failed: {r.stderr.strip()}")
        staging = Path(tmp) / "root"
        subprocess.run(["dpkg", "-x", debs[0], str(staging)], check=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    return root


def wrap(workdir: Path, cmd: list[str]) -> list[str]:
    """``cmd`` run with its own D-Bus and systemd-resolved (see the module doc)."""
    root = unpacked()
    return ["unshare", "-m", "--propagation", "private",
            "sh", "-c", SETUP, "sh", str(workdir), str(root), *cmd]  # fmt: skip


@dataclass
class ResolvedNode(Node):
    """A lab weftd on a host that runs systemd-resolved (in weftd's mount namespace)."""

    def command(self, cmd: list[str]) -> list[str]:
        return wrap(Path(f"{self.state_dir}-resolved"), cmd)

    def resolvectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """resolvectl in weftd's mount namespace (its bus and resolved)."""
        ctl = str(unpacked() / "usr/bin/resolvectl")
        argv = ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--", ctl, "--no-pager", *args]
        r: subprocess.CompletedProcess[str] = subprocess.run(
            argv, capture_output=True, text=True, timeout=20
        )
        if check and r.returncode != 0:
            raise AssertionError(f"resolvectl {' '.join(args)}: {r.stderr}{r.stdout}")
        return r

    def _in_ns(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--", *argv]

    def resolved_pid(self) -> int:
        r = subprocess.run(
            self._in_ns("busctl", "--system", "call", "org.freedesktop.DBus",
                        "/org/freedesktop/DBus", "org.freedesktop.DBus",
                        "GetConnectionUnixProcessID", "s", "org.freedesktop.resolve1"),
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return int(r.stdout.split()[1])

    def restart_resolved(self) -> None:
        """Kill systemd-resolved (by its pid) and start it again in the same namespaces."""
        os.kill(self.resolved_pid(), 9)
        log = open(f"{self.state_dir}-resolved/resolved.log", "a")  # noqa: SIM115
        subprocess.Popen(
            self._in_ns(str(unpacked() / "lib/systemd/systemd-resolved")),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip  (the lab kills it with the namespace's other processes)

    def resolved_log(self) -> str:
        return Path(f"{self.state_dir}-resolved/resolved.log").read_text(errors="replace")


def start_resolved_node(tmp: Path, host: Any, name: str, extra: list[str] | None = None) -> Node:
    n = ResolvedNode(host, tmp / f"node-{name}", str(tmp / f"{name}.sock"), extra=extra or [])
    n.start()
    return n


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m weftlab.resolved fetch")
    print(f"systemd-resolved for the lab, unpacked in {fetch()}")
