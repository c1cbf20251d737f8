"""``weft-control serve`` with a policy clock a test can move (lab only, not the product).

Run as ``python -m weftlab.control_clock --clock-file PATH serve [serve flags...]``. It
builds the product's ``ServeOptions`` from the same command line (``cli.main``) and
injects ``policy_clock=FileClock(PATH)``: policy schedules are judged at the system
clock plus the offset stored in PATH. Keys, logins and requests keep the real clock.
A test moves the clock with ``set_clock(PATH, now)`` (``Control.set_policy_clock``); the
server's hub notices on its next tick (0.1 s) and pushes the changed filters, like it
does when the real clock crosses a schedule edge or steps back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class FileClock:
    """``time.time()`` plus the offset in a JSON file ``{"offset_s": X}`` (0 without one).
    Reads the file again only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._offset_s = 0.0

    def __call__(self) -> float:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._offset_s = None, 0.0
        else:
            stamp = (st.st_mtime_ns, st.st_ino)
            if stamp != self._stamp:
                try:
                    self._offset_s = float(json.loads(self.path.read_text())["offset_s"])
                    self._stamp = stamp
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # a file being replaced: keep the last offset
        return time.time() + self._offset_s


def set_clock(path: Path, now: float) -> None:
    """Make a ``FileClock`` on ``path`` read ``now`` at once, and run on from there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"offset_s": now - time.time()}))
    os.replace(tmp, path)  # atomic: the server never reads half a file


def main(argv: Sequence[str] | None = None) -> int:
    from weftnet.control.cli import main as cli

    ours = argparse.ArgumentParser(prog="python -m weftlab.control_clock")
    ours.add_argument("--clock-file", type=Path, required=True)
    known, rest = ours.parse_known_args(argv)
    args = cli.build_parser().parse_args(rest)
    if args.command != "serve":
        ours.error("only `serve` runs with a policy clock")
    try:
        options = cli.serve_options(args)
    except cli.UsageError as e:
        print(f"{cli.PROG}: {e}", file=sys.stderr)
        return 2
    options = dataclasses.replace(options, policy_clock=FileClock(known.clock_file))
    return cli.run_serve(options)


if __name__ == "__main__":
    sys.exit(main())
