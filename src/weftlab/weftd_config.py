"""weftd with WireGuard timers a lab chooses, kept out of the product.

weftd always runs the spec's timers; a lab test that wants to see a rekey within seconds
starts weftd through this launcher instead, which builds the DeviceConfig and calls
weftd's main with it::

    python -m weftlab.weftd_config --rekey-after-seconds 1 --wg-config wg0.conf ...

Options it does not know are weftd's.
"""

from __future__ import annotations

import argparse
import dataclasses

from weftnet.node.main import main as weftd_main
from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig


def device_config(argv: list[str] | None) -> tuple[DeviceConfig, list[str]]:
    """The DeviceConfig from the lab's options, and the rest (weftd's arguments)."""
    p = argparse.ArgumentParser(prog="weftlab.weftd_config", add_help=False, allow_abbrev=False)
    p.add_argument("--rekey-after-seconds", type=float, default=None)
    p.add_argument("--rekey-after-messages", type=int, default=None)
    known, rest = p.parse_known_args(argv)
    changes: dict[str, float | int] = {}
    if known.rekey_after_seconds is not None:
        changes["rekey_after_time_s"] = known.rekey_after_seconds
    if known.rekey_after_messages is not None:
        changes["rekey_after_messages"] = known.rekey_after_messages
    return dataclasses.replace(SPEC_CONFIG, **changes), rest  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    config, rest = device_config(argv)
    weftd_main(rest, config)


if __name__ == "__main__":
    main()
