"""What `weft version`, `weftd --version` and `weft-control --version` print: the
installed package's version, the capability version this build speaks to the
coordination server (tailcfg.CAPABILITY_VERSION), and the Python running it."""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata
from typing import Any

from weftnet import __version__, tailcfg

DISTRIBUTION = "weftnet"


def package_version() -> str:
    """The installed distribution's version; the source tree's when none is installed
    (run from a checkout with PYTHONPATH=src)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


def info() -> dict[str, str | int]:
    return {
        "version": package_version(),
        "capability_version": tailcfg.CAPABILITY_VERSION,
        "python": platform.python_version(),
    }


def text(prog: str) -> str:
    """Three lines: ``PROG VERSION``, the capability version, the Python version."""
    i = info()
    return (
        f"{prog} {i['version']}\n"
        f"  capability version: {i['capability_version']}\n"
        f"  python: {i['python']} ({platform.python_implementation()})"
    )


def add_flag(parser: argparse.ArgumentParser) -> None:
    """``--version``: :func:`text` as it is (argparse's own action reflows it to one line)."""
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(text(parser.prog))
        sys.exit(0)
