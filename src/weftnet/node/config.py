"""weftd's configuration, built once from the command line (node.main)."""

from __future__ import annotations

from dataclasses import dataclass

from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig

DEFAULT_TUN = "weft0"
DEFAULT_STATE_DIR = "/var/lib/weft"


@dataclass(frozen=True)
class NodeConfig:
    state_dir: str = DEFAULT_STATE_DIR  # keys, prefs, the pinned server key, the last map
    tun: str = DEFAULT_TUN  # the TUN interface to create
    port: int | None = None  # UDP port; None: 41641 (tailnet) or the file's (wg-config)
    socket: str | None = None  # the local API; None: DEFAULT_SOCKET (none with wg_config)
    wg_config: str | None = None  # a wg-quick file: run as a plain WireGuard peer
    device: DeviceConfig = SPEC_CONFIG  # WireGuard's timers and limits (the spec's)
    verbose: bool = False
    # The CAs that https:// servers (control, relays) must chain to; None: the system's
    # store (SSL_CERT_FILE/SSL_CERT_DIR honoured). weftnet.tls.
    tls_ca: str | None = None
    # OS DNS (docs/dns.md, "OS configuration"): auto | resolved | direct | off, and the
    # resolv.conf direct mode manages (another path only for tests).
    dns_mode: str = "auto"
    resolv_conf: str = "/etc/resolv.conf"
