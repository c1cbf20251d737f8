"""weftd with a fault-injection hook, for lab tests only (never installed as a command).

    python -m weftlab.faulty_weftd <weftd arguments>

runs the normal tailnet daemon and adds one thing: on SIGUSR1 it reads a task name
from ``<state-dir>/inject-fault`` and calls ``Supervisor.inject_fault(name)``, so a lab
test can fail a supervised task ("map", "paths", "netmon", "login") inside a real weftd
and watch it come back. The product (weft, the local API) has no way to reach this.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from weftnet.node.daemon import NodeDaemon
from weftnet.node.main import build_daemon, parse_args, setup_logging

FAULT_FILE = "inject-fault"

log = logging.getLogger("weftd.faulty")


async def run_with_faults(daemon: NodeDaemon) -> None:
    request = daemon.state.directory / FAULT_FILE

    def inject() -> None:
        name = Path(request).read_text().strip()
        hit = daemon.supervisor.inject_fault(name)
        log.warning("fault injection into %s: %s", name, "done" if hit else "no such task")

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, inject)
    await daemon.run()


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    setup_logging(config)
    daemon = build_daemon(config)
    if not isinstance(daemon, NodeDaemon):
        sys.exit("faulty_weftd: tailnet mode only")
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_with_faults(daemon))


if __name__ == "__main__":
    main()
