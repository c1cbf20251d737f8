"""Which wireguard-go builds the benchmark compares, and which one is the baseline.

A build is given as ``PATH`` or ``PATH=LABEL``: by ``--wireguard-go`` (repeatable), else
by ``WEFT_BENCH_WIREGUARD_GO`` (entries separated by ":"), else the default: Debian's
``/usr/bin/wireguard-go`` plus the current upstream build kept beside the repository at
``../shared/tools/wireguard-go-20250522/wireguard-go`` when it exists.

A binary with a ``SHA256SUMS`` file in its directory that names it is checked against
it before use; a mismatch (or a SHA256SUMS that does not list it) is an error. The label
defaults to the version from the first line of ``PATH --version`` (e.g. "v0.0.20250522"
for "wireguard-go v0.0.20250522"), with ", Debian" added when dpkg says a package owns the file.

The ratio baseline is the build with the highest version number (the upstream build
when present, else Debian's); ties go to the first given.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "WEFT_BENCH_WIREGUARD_GO"
DEBIAN_WIREGUARD_GO = Path("/usr/bin/wireguard-go")
REPO_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_RELATIVE = Path("../shared/tools/wireguard-go-20250522/wireguard-go")


class BuildError(ValueError):
    """A wireguard-go build cannot be used: missing, not executable, or a bad hash."""


@dataclass(frozen=True)
class Spec:
    path: Path
    label: str | None = None


@dataclass(frozen=True)
class Build:
    path: Path
    label: str  # what the rows say, e.g. "v0.0.20250522" or "v0.0.20220316, Debian"
    version: str  # the first line of --version
    sha256: str


def parse_spec(text: str, base: Path = REPO_ROOT) -> Spec:
    """``PATH`` or ``PATH=LABEL``; a relative PATH is relative to ``base`` (the repo)."""
    path, sep, label = text.partition("=")
    if not path.strip():
        raise BuildError(f"wireguard-go build {text!r}: no path")
    if sep and not label.strip():
        raise BuildError(f"wireguard-go build {text!r}: empty label after '='")
    p = Path(path.strip()).expanduser()
    return Spec(p if p.is_absolute() else (base / p).resolve(), label.strip() or None)


def select_specs(cli: Sequence[str], env: Mapping[str, str], base: Path = REPO_ROOT) -> list[Spec]:
    """The builds asked for: the command line, else the environment, else the default."""
    if cli:
        return [parse_spec(item, base) for item in cli]
    from_env = [item for item in env.get(ENV_VAR, "").split(":") if item.strip()]
    if from_env:
        return [parse_spec(item, base) for item in from_env]
    specs = [Spec(DEBIAN_WIREGUARD_GO)]
    upstream = (base / UPSTREAM_RELATIVE).resolve()
    if upstream.exists():
        specs.append(Spec(upstream))
    return specs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256sums(path: Path) -> str:
    """The binary's SHA-256; checked against SHA256SUMS in its directory if there is one."""
    actual = sha256_file(path)
    sums = path.parent / "SHA256SUMS"
    if not sums.exists():
        return actual
    listed = {}
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            listed[fields[1].lstrip("*")] = fields[0].lower()
    expected = listed.get(path.name)
    if expected is None:
        raise BuildError(f"{path}: {sums} does not list {path.name}")
    if expected != actual:
        raise BuildError(f"{path}: SHA-256 {actual} does not match {sums} ({expected})")
    return actual


def ask_version(path: Path) -> str:
    try:
        proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10)
    except OSError as err:
        raise BuildError(f"{path} --version: {err}") from None
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise BuildError(f"{path} --version: exit {proc.returncode}, {proc.stderr.strip()[:200]}")
    return lines[0]


def debian_package(path: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["dpkg-query", "-S", str(path)], capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    if proc.returncode != 0 or ":" not in proc.stdout:
        return None
    return proc.stdout.split(":", 1)[0].strip()


def resolve(
    specs: Sequence[Spec],
    version_of: Callable[[Path], str] = ask_version,
    package_of: Callable[[Path], str | None] = debian_package,
) -> list[Build]:
    """Check every build (exists, executable, hash) and label it; labels are unique."""
    builds: list[Build] = []
    for spec in specs:
        path = spec.path
        if not path.is_file() or not os.access(path, os.X_OK):
            raise BuildError(f"wireguard-go build {path}: not an executable file")
        sha = verify_sha256sums(path)
        version = version_of(path)
        label = spec.label
        if label is None:
            label = version.removeprefix("wireguard-go ").strip() or version
            label += ", Debian" if package_of(path) else ""
        taken = {b.label for b in builds}
        unique, n = label, 2
        while unique in taken:
            unique, n = f"{label} #{n}", n + 1
        builds.append(Build(path, unique, version, sha))
    return builds


def version_key(version: str) -> tuple[int, ...]:
    """``wireguard-go v0.0.20250522`` -> (0, 0, 20250522); () without a number."""
    match = re.search(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match[0].split(".")) if match else ()


def baseline(builds: Sequence[Build]) -> Build | None:
    """The newest build by version number; the first of equals."""
    best: Build | None = None
    for build in builds:
        if best is None or version_key(build.version) > version_key(best.version):
            best = build
    return best
