"""`weft version` and the --version of the three programs (issue 16)."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import pytest

from weftnet import __version__, tailcfg, version
from weftnet.cli.main import main as weft
from weftnet.control.cli.main import main as weft_control
from weftnet.node.main import main as weftd


def test_the_version_is_the_installed_packages() -> None:
    assert version.package_version() == metadata.version("weftnet") == __version__


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
