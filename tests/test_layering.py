"""Negative dependency tests: which packages may import what (like Tailscale's
tstest/deptest). The AST of every module under src/ is read; nothing is imported.

- Pure packages (protocol codecs and state machines, the control server's domain rules,
  the access policy, the packet filter) import no I/O, clock, randomness, threads,
  web framework or database: time and entropy come in as arguments.
- The store imports nothing from the server or the CLI; the domain nothing from the
  service, store, server or CLI.
- The product (weftnet) never imports the lab (weftlab) or the tests.

A listed exception must say why it is one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Modules that do I/O, read a clock, draw randomness or serve HTTP/SQL.
IMPURE = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "random",
        "os",
        "subprocess",
        "threading",
        "fastapi",
        "starlette",
        "sqlalchemy",
        "httpx",
        "uvicorn",
        "pyroute2",
        "selectors",
    }
)

# A package name stands for itself and everything under it; a module name for itself.
PURE = (
    "weftnet.wireguard",
    "weftnet.disco",
    "weftnet.stun",  # the codec (stun/__init__.py); stun.server is the I/O shell
    "weftnet.relay.protocol",
    "weftnet.relay.upgrade",  # the upgrade request's text and relay URLs
    "weftnet.relay.meshauth",  # the mesh secret's proofs (HMAC); the I/O is relay.mesh
    "weftnet.magicsock.pathfinder",
    "weftnet.magicsock.birthday",  # birthday probing; its I/O is magicsock.traversal
    "weftnet.magicsock.quietopen",
    "weftnet.endpoint",
    "weftnet.tailcfg",
    "weftnet.controlbox",  # sealing shared by node and server
    "weftnet.control.policy",
    "weftnet.control.domain",
    "weftnet.node.filter",
    "weftnet.node.localnets",
    "weftnet.node.mapsession",
    "weftnet.node.reconcile",
    "weftnet.node.routeprefs",  # route flags checked; the kernel side is node.routing
    "weftnet.node.routeplan",
    "weftnet.marks",
    "weftnet.netstack",  # the userspace TCP/IP stack; its asyncio shell is node.userspace
    "weftnet.dns",  # the resolver's decisions and name table; its I/O is node.dnsserver
    "weftnet.fastpath",  # the data plane's batch functions (and their C twin)
    "weftnet.node.offload",  # checksums and TCP segmentation
    "weftnet.node.vnet",  # the virtio-net header's layout
    "weftnet.portmap.errors",
    "weftnet.portmap.natpmp",  # port mapping's wire formats; the I/O is portmap.client
    "weftnet.portmap.pcp",
    "weftnet.portmap.upnp",
)
NOT_PURE = ("weftnet.stun.server",)

# module -> {impure import: why it may stay}. Empty today: every pure module passes.
ALLOWED: dict[str, dict[str, str]] = {}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, absolute (relative imports resolved), wherever in
    the file the import statement is (functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # "from pkg import mod" imports pkg.mod when mod is a module.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def under(module: str, roots: tuple[str, ...] | str) -> bool:
    roots = (roots,) if isinstance(roots, str) else roots
    return any(module == r or module.startswith(r + ".") for r in roots)


ALL = dict(modules())


def test_the_walk_finds_the_packages_it_checks() -> None:
    for root in (*PURE, "weftnet.control.store", "weftnet.control.server", "weftlab"):
        assert any(under(m, root) for m in ALL), f"{root}: no such module (renamed?)"


@pytest.mark.parametrize(
    "name", sorted(m for m in ALL if under(m, PURE) and not under(m, NOT_PURE))
)
def test_pure_modules_do_no_io(name: str) -> None:
    allowed = ALLOWED.get(name, {})
    bad = sorted(
        m for m in imports(name, ALL[name]) if m.split(".")[0] in IMPURE and m not in allowed
    )
    assert not bad, f"{name} imports {bad}: take time, entropy and I/O as arguments"


def test_pure_modules_import_only_pure_weftnet_modules() -> None:
    """Purity is transitive: a pure module that imported an I/O module would do I/O."""
    pure = {m for m in ALL if under(m, PURE) and not under(m, NOT_PURE)}
    bad = []
    for name in sorted(pure):
        for m in imports(name, ALL[name]):
            # "from weftnet.control import policy" names the package weftnet.control too;
            # package __init__s above the pure ones are checked to import nothing below.
            if m in ALL and under(m, "weftnet") and m not in pure and m not in PARENTS:
                bad.append(f"{name} -> {m}")
    assert not bad, bad


PARENTS = (
    "weftnet",
    "weftnet.control",
    "weftnet.relay",
    "weftnet.magicsock",
    "weftnet.node",
    "weftnet.portmap",
)


@pytest.mark.parametrize("name", PARENTS)
def test_packages_above_pure_modules_import_nothing(name: str) -> None:
    assert not {m for m in imports(name, ALL[name]) if m != "__future__"}


def _forbidden(importer_roots: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for name, path in ALL.items():
        if under(name, importer_roots):
            out += [f"{name} -> {m}" for m in imports(name, path) if under(m, forbidden)]
    return sorted(out)


def test_the_store_does_not_import_the_server_or_the_cli() -> None:
    assert not _forbidden(
        "weftnet.control.store", ("weftnet.control.server", "weftnet.control.cli")
    )


def test_the_domain_imports_no_layer_above_it() -> None:
    above = tuple(f"weftnet.control.{p}" for p in ("service", "store", "server", "cli"))
    assert not _forbidden("weftnet.control.domain", above)


def test_the_service_does_not_import_the_server_or_the_cli() -> None:
    assert not _forbidden(
        "weftnet.control.service", ("weftnet.control.server", "weftnet.control.cli")
    )


def test_the_product_never_imports_the_lab_or_the_tests() -> None:
    assert not _forbidden("weftnet", ("weftlab", "tests"))


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    # A module the walk never sees, so a checker that found nothing fails here.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from . import netmap\n\ndef f():\n    import time\n    from ..server import hub\n"
    )
    found = imports("weftnet.control.domain.probe", probe)
    assert {"time", "weftnet.control.domain.netmap", "weftnet.control.server.hub"} <= found
    assert under("weftnet.control.domain.netmap", "weftnet.control.domain")
    assert not under("weftnet.control.domainx", "weftnet.control.domain")
