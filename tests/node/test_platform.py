"""The platform seam (docs/platforms.md): the userspace mode runs with every Linux-only
module unimportable (fcntl, pyroute2, nftables, the TUN, routing and OS DNS modules) and
without uvloop; the daemon wires the userspace backend (no routes, no OS DNS, no
resolver sockets) and its proxies; user state and socket paths."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from weftnet.node import config, platform

ROOT = Path(__file__).resolve().parent.parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.abc, sys, tempfile

    BLOCKED = ("fcntl", "pyroute2", "nftables", "uvloop", "weftnet.node.tun",
               "weftnet.node.routing", "weftnet.node.osdns")

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if blocked(name):
                raise ImportError(f"{name} is Linux-only: blocked by the test")
            return None

    for name in list(sys.modules):
        if blocked(name):
            del sys.modules[name]
    sys.meta_path.insert(0, Block())

    from tests.node.fakenet import FakeNet
    from weftnet.node import main
    from weftnet.node.config import NodeConfig
    from weftnet.node.daemon import NodeDaemon
    from weftnet.node.platform.userspace import UserspaceEngine

    assert main.loop_factory() is None  # no uvloop: asyncio's loop

    async def scenario():
        state = tempfile.mkdtemp()
        cfg = NodeConfig(state_dir=state, tun="userspace-networking", port=0,
                         socket=state + "/weftd.sock", socks5_server="127.0.0.1:0",
                         http_proxy_listen="127.0.0.1:0")
        d = NodeDaemon(cfg, engine_factory=lambda *a, **kw: UserspaceEngine(
            *a, net_factory=FakeNet, **kw))
        await d.start()
        assert d.engine.net.started
        text = d.mode_text()
        assert text.startswith("userspace networking; SOCKS5 on 127.0.0.1:"), text
        assert "HTTP proxy on 127.0.0.1:" in text, text
        assert d.dns.serve_sockets is False
        await d.close()
        assert d.engine.net.closed

    asyncio.run(scenario())
    bad = sorted(m for m in sys.modules if blocked(m))
    assert not bad, bad
    print("ok")
    """
)


def test_userspace_mode_imports_nothing_linux_only() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


def test_backends_by_tun_name() -> None:
    assert platform.for_tun("userspace-networking").name == "userspace-networking"
    assert platform.for_tun("weft0").name == "linux"


def test_user_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "_is_root", lambda: False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert config.default_state_dir() == str(tmp_path / ".local/state/weft")
    assert config.default_socket() == str(tmp_path / ".local/state/weft/weftd.sock")
    assert config.client_socket() == config.SYSTEM_SOCKET  # no user weftd runs
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert config.default_state_dir() == str(tmp_path / "st/weft")
    sock = tmp_path / "run/weft/weftd.sock"
    assert config.default_socket() == str(sock)
    sock.parent.mkdir(parents=True)
    sock.touch()
    assert config.client_socket() == str(sock)
    monkeypatch.setattr(config, "_is_root", lambda: True)
    assert config.default_state_dir() == "/var/lib/weft"
    assert config.default_socket() == config.client_socket() == "/run/weft/weftd.sock"


def test_weftd_flags_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from weftnet.node.main import parse_args

    cfg = parse_args(["--tun", "userspace-networking", "--socks5-server", "127.0.0.1:1055",
                      "--outbound-http-proxy-listen", "[::1]:1056"])  # fmt: skip
    assert (cfg.socks5_server, cfg.http_proxy_listen) == ("127.0.0.1:1055", "[::1]:1056")
    with pytest.raises(SystemExit):
        parse_args(["--tun", "userspace-networking", "--socks5-server", "0.0.0.0:1055"])
    assert "--proxy-allow-remote" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--socks5-server", "127.0.0.1:1055"])  # a TUN node has no proxies
    assert "needs --tun userspace-networking" in capsys.readouterr().err
    cfg = parse_args(["--tun", "userspace-networking", "--socks5-server", "0.0.0.0:1055",
                      "--proxy-allow-remote"])  # fmt: skip
    assert cfg.proxy_allow_remote


def test_userspace_node_warns_that_it_cannot_route(tmp_path: Path) -> None:
    from tests.node.fakenet import FakeNet
    from weftnet.node.daemon import NodeDaemon
    from weftnet.node.platform.userspace import UserspaceEngine

    cfg = config.NodeConfig(state_dir=str(tmp_path / "st"), tun="userspace-networking", port=0)
    d = NodeDaemon(cfg, engine_factory=lambda *a, **kw: UserspaceEngine(
        *a, net_factory=FakeNet, **kw))  # fmt: skip
    assert d.forwarding_warning() is None
    d.state.prefs.advertise_exit_node = True
    warning = d.forwarding_warning()
    assert warning is not None and "cannot serve" in warning
    d.engine.close()
