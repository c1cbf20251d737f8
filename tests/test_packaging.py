"""weftnet as users install it (issue 16): the wheel holds the product and only the
product, with its runtime dependencies and not the dev tools; the systemd units pass
`systemd-analyze verify` and agree with the programs' default paths."""

from __future__ import annotations

import email
import shutil
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from weftlab.wheel import REPO, build_wheel
from weftnet.control.cli.main import DEFAULT_DATA_DIR
from weftnet.node.config import DEFAULT_STATE_DIR
from weftnet.node.localapi import DEFAULT_SOCKET

UNITS = REPO / "packaging" / "systemd"
UNIT_NAMES = ("weftd.service", "weft-control.service")
INSTALL_PREFIX = "/opt/weftnet/bin/"  # where the units expect the programs (README)
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEV_TOOLS = ("pytest", "hypothesis", "ruff", "mypy", "playwright")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("wheel"))) as z:
        yield z


def test_the_wheel_holds_every_file_of_the_product(wheel: zipfile.ZipFile) -> None:
    """Code, the console's templates and static files, the Alembic migrations."""
    src = REPO / "src"
    product = {
        p.relative_to(src).as_posix()
        for p in (src / "weftnet").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    names = set(wheel.namelist())
    assert product - names == set()
    for needed in (
        "weftnet/control/server/console/templates/base.html",
        "weftnet/control/server/console/static/console.css",
        "weftnet/control/store/migrations/env.py",
        "weftnet/control/store/migrations/versions/0001_initial.py",
    ):
        assert needed in names


def test_the_wheel_holds_nothing_but_the_product(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert tops == {"weftnet", "weftnet-0.1.0.dist-info"}  # no weftlab, no tests


def test_the_wheel_needs_the_runtime_dependencies_and_no_dev_tool(
    wheel: zipfile.ZipFile,
) -> None:
    meta = email.message_from_bytes(wheel.read("weftnet-0.1.0.dist-info/METADATA"))
    requires = meta.get_all("Requires-Dist") or []
    always = [r for r in requires if "extra ==" not in r]
    assert always == PYPROJECT["project"]["dependencies"]
    for tool in DEV_TOOLS:
        assert not [r for r in always if r.startswith(tool)], f"{tool} is a runtime dependency"
        assert any(r.startswith(tool) and 'extra == "dev"' in r for r in requires), tool


def test_the_wheel_installs_the_three_programs(wheel: zipfile.ZipFile) -> None:
    text = wheel.read("weftnet-0.1.0.dist-info/entry_points.txt").decode()
    for line in (
        "weftd = weftnet.node.main:main",
        "weft = weftnet.cli.main:main",
        "weft-control = weftnet.control.cli.main:main",
    ):
        assert line in text


def _unit(name: str) -> dict[str, str]:
    """The unit's Key=value lines (the last wins, as with systemd)."""
    out = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install systemd"  # a failure, never a skip
    return subprocess.run(
        [tool, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _installed_copies(tmp_path: Path, text_of: dict[str, str] | None = None) -> list[Path]:
    """The units as installed: ExecStart's programs must exist for `verify`, so stand-ins
    go where the units' /opt/weftnet/bin/ programs would be."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in PYPROJECT["project"]["scripts"]:
        stub = bin_dir / program
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    out = []
    for name in UNIT_NAMES:
        text = (text_of or {}).get(name) or (UNITS / name).read_text()
        assert INSTALL_PREFIX in text
        (tmp_path / name).write_text(text.replace(INSTALL_PREFIX, f"{bin_dir}/"))
        out.append(tmp_path / name)
    return out


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    r = _verify(_installed_copies(tmp_path))
    # verify exits 0 on unknown keys and bad values: any word about our units fails.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if ".service" in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_the_check_catches_a_misspelled_setting(tmp_path: Path) -> None:
    text = (UNITS / "weftd.service").read_text()
    bad = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    r = _verify(_installed_copies(tmp_path, {"weftd.service": bad}))
    assert "Unknown key 'NoNewPrivilege'" in r.stderr


def test_the_units_use_the_programs_default_paths() -> None:
    weftd, control = _unit("weftd.service"), _unit("weft-control.service")
    assert f"/var/lib/{weftd['StateDirectory']}" == DEFAULT_STATE_DIR
    assert f"/run/{weftd['RuntimeDirectory']}" == str(Path(DEFAULT_SOCKET).parent)
    assert f"--state-dir {DEFAULT_STATE_DIR} --socket {DEFAULT_SOCKET}" in weftd["ExecStart"]
    assert f"/var/lib/{control['StateDirectory']}" == DEFAULT_DATA_DIR
    assert f"--data-dir {DEFAULT_DATA_DIR}" in control["ExecStart"]
    assert weftd["ExecStart"].startswith(f"{INSTALL_PREFIX}weftd ")
    assert control["ExecStart"].startswith(f"{INSTALL_PREFIX}weft-control serve ")


def test_weftd_keeps_only_the_network_capabilities() -> None:
    weftd, control = _unit("weftd.service"), _unit("weft-control.service")
    assert set(weftd["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN",  # TUN, routes, rules, nftables
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",  # MagicDNS on port 53
    }
    # With ProtectClock= systemd allows only listed devices: the TUN device must be one.
    assert weftd["DeviceAllow"] == "/dev/net/tun rw"
    assert control["DynamicUser"] == "yes"
    assert control["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    for unit in (weftd, control):
        assert unit["NoNewPrivileges"] == "yes"
        assert unit["ProtectSystem"] == "strict"
        assert unit["Restart"] == "on-failure"
