"""weftd's configuration, built once from the command line (node.main)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TUN = "weft0"
DEFAULT_STATE_DIR = "/var/lib/weft"


@dataclass(frozen=True)
class NodeConfig:
    state_dir: str = DEFAULT_STATE_DIR  # keys, prefs, the pinned server key, the last map
    tun: str = DEFAULT_TUN  # the TUN interface to create
    port: int | None = None  # UDP port; None: 41641 (tailnet) or the file's (wg-config)
    socket: str | None = None  # the local API; None: DEFAULT_SOCKET (none with wg_config)
    wg_config: str | None = None  # a wg-quick file: run as a plain WireGuard peer
    rekey_after_s: float | None = None  # tests only: a shorter REKEY_AFTER_TIME
    verbose: bool = False
