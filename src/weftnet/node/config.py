"""weftd's configuration, built once from the command line (node.main)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig

DEFAULT_TUN = "weft0"
DEFAULT_STATE_DIR = "/var/lib/weft"  # root's
SYSTEM_SOCKET = "/run/weft/weftd.sock"  # root's local API


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)  # not on Windows
    return geteuid is not None and geteuid() == 0


def user_state_dir() -> str:
    """A user's own state directory: $XDG_STATE_HOME/weft, else ~/.local/state/weft."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "weft")


def default_state_dir() -> str:
    """/var/lib/weft for root; the user's own directory for anyone else."""
    return DEFAULT_STATE_DIR if _is_root() else user_state_dir()


def user_socket() -> str:
    """A user's own local API socket: $XDG_RUNTIME_DIR/weft/weftd.sock, else in the
    user's state directory."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "weft", "weftd.sock")
    return os.path.join(user_state_dir(), "weftd.sock")


def default_socket() -> str:
    """Where weftd listens by default: root's /run/weft/weftd.sock, or the user's own."""
    return SYSTEM_SOCKET if _is_root() else user_socket()


def client_socket() -> str:
    """Where `weft` looks by default: root's socket for root; for anyone else their own
    weftd's (userspace networking) when it exists, else root's."""
    if _is_root():
        return SYSTEM_SOCKET
    mine = user_socket()
    return mine if os.path.exists(mine) else SYSTEM_SOCKET


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
    # Userspace networking (docs/userspace.md): the proxies' listen addresses
    # ("127.0.0.1:1055"; None: off), a user:password file, and non-loopback listening.
    socks5_server: str | None = None
    http_proxy_listen: str | None = None
    proxy_auth_file: str | None = None
    proxy_allow_remote: bool = False
    # Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md); None: off.
    metrics_listen: str | None = None
    log_format: str = "text"  # or "json": one JSON object per line (weftnet.logformat)
    # Port mapping on the NAT router (docs/nat-traversal.md, "Port mapping").
    # Off here so that embedded daemons (tests) never talk to the host's real gateway;
    # weftd's command line turns it on unless --no-port-mapping.
    port_mapping: bool = False
    port_map_lease_s: int = 7200  # weftnet.portmap.mapper.DEFAULT_LEASE_S
