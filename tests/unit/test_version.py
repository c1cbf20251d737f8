"""`weft version` and the --version of the three programs (issue 16)."""

from __future__ import annotations

import json
import platform
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from weftnet import __version__, tailcfg, version
from weftnet.cli.main import main as weft
from weftnet.control.cli.main import main as weft_control
from weftnet.node.main import main as weftd


def test_the_source_tree_and_the_package_agree_on_the_version() -> None:
    """pyproject.toml's version (what pip installs) is weftnet.__version__ (the fallback)."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == __version__


def test_the_version_is_the_installed_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version.metadata, "version", lambda name: "9.8.7")
    assert version.package_version() == "9.8.7"


def test_without_an_installed_package_the_source_trees_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version.metadata, "version", missing)
    assert version.package_version() == __version__


def test_weft_version(capsys: pytest.CaptureFixture[str]) -> None:
    weft(["--socket", "/nonexistent/weftd.sock", "version"])  # weftd need not run
    assert capsys.readouterr().out.splitlines() == [
        f"weft {__version__}",
        f"  capability version: {tailcfg.CAPABILITY_VERSION}",
        f"  python: {platform.python_version()} ({platform.python_implementation()})",
    ]
    weft(["version", "--json"])
    assert json.loads(capsys.readouterr().out) == {
        "version": __version__,
        "capability_version": tailcfg.CAPABILITY_VERSION,
        "python": platform.python_version(),
    }


@pytest.mark.parametrize(
    ("main", "prog"), [(weft, "weft"), (weftd, "weftd"), (weft_control, "weft-control")]
)
def test_every_program_has_a_version_flag(
    main: object, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])  # type: ignore[operator]
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{prog} {__version__}\n")
    assert f"capability version: {tailcfg.CAPABILITY_VERSION}" in out
