"""weft-control: the coordination server (coming with the control-plane work)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    print(
        "weft-control: the coordination server is not part of this release yet;"
        " run weftd --wg-config FILE for a plain WireGuard peer",
        file=sys.stderr,
    )
    sys.exit(2)
