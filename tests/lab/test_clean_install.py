"""Issue 16: weftnet as users install it. Its wheel goes into a fresh venv with
`pip install` and no dev extra (runtime dependencies from the configured indexes, nothing
from the dev venv); that venv's weft-control serves, its weftd joins with an auth key
from its weft-control, and talks to a node run from this checkout."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from weftlab import secrets
from weftlab.control import start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.tailnet import pings, start_node
from weftlab.testca import lab_ca
from weftlab.userspace import curl, http_server
from weftlab.wgpeers import local_api_answers
from weftlab.wheel import CLEAN_ENV, INSTALL_TIMEOUT_S, build_wheel, clean_venv
from weftnet import __version__

# The first test also builds the wheel and installs it: about 5 s and 20 s here, from
# this machine's package indexes (weftlab.wheel bounds pip at INSTALL_TIMEOUT_S).
pytestmark = [pytest.mark.lab, pytest.mark.timeout(INSTALL_TIMEOUT_S + 180)]

# How the installed weftd runs: userspace networking (no TUN, nothing Linux-only), its
# SOCKS5 proxy the way out to the tailnet.
SOCKS = "127.0.0.1:1055"
WEFTD_MODE = ["--tun", "userspace-networking", "--socks5-server", SOCKS]


@pytest.fixture(scope="session")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a venv with the wheel installed: built once per session."""
    where = tmp_path_factory.mktemp("clean-install")
    start = time.monotonic()
    wheel = build_wheel(where)
    built_s = time.monotonic() - start
    pip_s = clean_venv(wheel, where / "venv")
    print(f"wheel {wheel.name} built in {built_s:.1f} s; pip install took {pip_s:.1f} s")
    return where / "venv" / "bin"


def run(host: Host | None, argv: Sequence[str | Path]) -> subprocess.CompletedProcess[str]:
    """``argv`` of the clean venv, in ``host`` (None: here)."""
    cmd = [*CLEAN_ENV, *map(str, argv)]
    if host is not None:
        return host.run(cmd, timeout=60)
    # Not in this checkout, where `python -c` would find its packages.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True, cwd="/")


def test_the_clean_venv_has_the_programs_and_no_dev_or_lab_package(venv_bin: Path) -> None:
    for program in ("weftd", "weft", "weft-control"):
        out = run(None, [venv_bin / program, "--version"]).stdout
        assert out.startswith(f"{program} {__version__}\n"), out
    info = json.loads(run(None, [venv_bin / "weft", "version", "--json"]).stdout)
    assert info["version"] == __version__
    python = venv_bin / "python"
    for absent in ("weftlab", "pytest", "hypothesis", "ruff", "mypy", "playwright"):
        r = subprocess.run([*CLEAN_ENV, python, "-c", f"import {absent}"], capture_output=True,
                           timeout=60, cwd="/")  # fmt: skip
        assert r.returncode != 0, f"{absent} is importable in the clean venv"
    where = run(None, [python, "-c", "import weftnet; print(weftnet.__file__)"]).stdout
    assert where.startswith(str(venv_bin.parent)), where  # not this checkout's


def test_installed_weft_control_and_weftd_make_a_tailnet(
    lab: Lab, tmp_path: Path, venv_bin: Path
) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl_host, fresh, peer = (lab.host(name, inet) for name in ("ctl", "fresh", "peer"))
    control = start_control(
        ctl_host, tmp_path / "control", program=[*CLEAN_ENV, str(venv_bin / "weft-control")]
    )
    weft_control = [venv_bin / "weft-control"]
    data_dir = ["--data-dir", control.data_dir]
    run(ctl_host, [*weft_control, "users", "create", "alice", *data_dir])
    key = run(ctl_host, [*weft_control, "keys", "create", "--user", "alice", "--reusable",
                         *data_dir])  # fmt: skip
    key_text = key.stdout.strip()
    secrets.remember(key_text)  # no log may hold it
    assert key_text.startswith("weftkey-")

    state, sock = tmp_path / "node-fresh", str(tmp_path / "fresh.sock")
    argv = [venv_bin / "weftd", "--state-dir", state, "--socket", sock, *WEFTD_MODE]
    argv += ["--tls-ca", lab_ca().ca_file]
    with open(f"{state}.log", "a") as log:
        proc = fresh.popen([*CLEAN_ENV, *map(str, argv)], stdout=log, stderr=log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"weftd exited: {Path(f'{state}.log').read_text()[-2000:]}")
        return local_api_answers(sock)

    poll_until(answers, timeout_s=15, what="the installed weftd to answer on its socket")
    weft = [venv_bin / "weft", "--socket", sock]
    run(fresh, [*weft, "up", "--login-server", control.url, "--auth-key", key_text,
                "--hostname", "fresh", "--timeout", "30"])  # fmt: skip
    status = json.loads(run(fresh, [*weft, "status", "--json"]).stdout)
    assert status["backend_state"] == "Running"
    assert status["self"]["hostname"] == "fresh"
    ip = status["self"]["ips"][0]
    assert ip.startswith("100.")
    mode, mine, *_ = run(fresh, [*weft, "status"]).stdout.splitlines()
    assert mode == f"# userspace networking; SOCKS5 on {SOCKS}", mode
    assert mine.startswith(ip) and " fresh " in mine and " self" in mine, mine
    assert run(fresh, [*weft, "version"]).stdout.startswith(f"weft {__version__}\n")

    # A TUN node run from this checkout joins with the same key: packets flow both ways
    # (its ping is answered by the installed weftd's own stack; its web server is reached
    # through the installed weftd's SOCKS5 proxy, by name).
    other = start_node(tmp_path, peer, "peer")
    other.weft("up", "--login-server", control.url, "--auth-key", key_text, "--hostname", "peer")
    poll_until(lambda: pings(other, ip), timeout_s=10, what="a ping from peer to fresh")
    http_server(peer, "::", 8000, tmp_path / "www", "hello from peer\n")
    url = "http://peer:8000/hello.txt"
    assert curl(fresh, "--socks5-hostname", SOCKS, url) == (0, "hello from peer\n")
