"""weftnet as users install it: its wheel, built from a copy of this checkout, and a
fresh venv with only that wheel and its runtime dependencies (never the dev venv's
packages, never the dev extra). For tests/test_packaging.py and
tests/lab/test_clean_install.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the build reads: the product and the files pyproject.toml names. Not src/weftlab.
SOURCES = ("pyproject.toml", "README.md", "src/weftnet")
# Run the clean venv's programs under this: a PYTHONPATH=src of the test run (or a user
# site) would hand them this checkout instead of what the wheel installed.
CLEAN_ENV = ("env", "-u", "PYTHONPATH", "-u", "PYTHONHOME", "PYTHONNOUSERSITE=1")
BUILD_TIMEOUT_S = 180.0
INSTALL_TIMEOUT_S = 300.0  # pip may fetch every runtime dependency


def build_wheel(dest: Path) -> Path:
    """weftnet's wheel in ``dest``. The build runs in a copy of the sources, so it never
    writes build/ or egg-info into the checkout and sees nothing the sources don't hold."""
    tree = dest / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src, dst = REPO / name, tree / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    out = dest / "dist"
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(tree), "-w", str(out)]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    (wheel,) = out.glob("weftnet-*.whl")
    return wheel


def clean_venv(wheel: Path, venv: Path) -> float:
    """A new venv at ``venv`` with ``wheel`` installed as `pip install weftnet` would
    (dependencies from the configured indexes); the seconds pip took."""
    # The interpreter under this one's venv, so the new venv shares nothing with it.
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([*CLEAN_ENV, python, "-m", "venv", str(venv)], check=True, timeout=120)
    start = time.monotonic()
    r = subprocess.run(
        [*CLEAN_ENV, str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if r.returncode != 0:
        raise AssertionError(f"pip install {wheel.name} failed:\n{r.stdout}\n{r.stderr}")
    return time.monotonic() - start
