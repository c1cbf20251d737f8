"""Commands meet bad input with one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=30)


def test_weftd_names_the_bad_config_line(tmp_path: Path) -> None:
    cfg = tmp_path / "wg0.conf"
    cfg.write_text(
        "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nListenPort = abc\n"
    )
    r = run("weftnet.node.main", "--wg-config", str(cfg))
    assert r.returncode == 2
    assert "line 3" in r.stderr and "ListenPort" in r.stderr
    assert "Traceback" not in r.stderr
    assert "yAnz5TF" not in r.stderr  # the private key is never echoed


def test_weftd_missing_config(tmp_path: Path) -> None:
    r = run("weftnet.node.main", "--wg-config", str(tmp_path / "nope.conf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.conf" in r.stderr


def test_weftd_bad_flag() -> None:
    r = run("weftnet.node.main", "--port", "70000", "--wg-config", "x")
    assert r.returncode == 2 and "--port" in r.stderr


def test_weft_without_daemon(tmp_path: Path) -> None:
    r = run("weftnet.cli.main", "--socket", str(tmp_path / "none.sock"), "status")
    assert r.returncode == 1
    assert "weftd is not running" in r.stderr and "Traceback" not in r.stderr


def test_weftd_warns_about_a_private_key_file_others_can_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weftnet.node.main import warn_if_readable_by_others

    cfg = tmp_path / "wg0.conf"
    cfg.write_text("[Interface]\n")
    cfg.chmod(0o644)
    warn_if_readable_by_others(str(cfg))
    assert "readable by others (mode 644): chmod 600" in capsys.readouterr().err
    cfg.chmod(0o600)
    warn_if_readable_by_others(str(cfg))
    assert capsys.readouterr().err == ""
