"""WireGuard peers in lab hosts: keys, configuration files, wireguard-go and weftd.

Theory of operation
-------------------
A peer is an interface in a :class:`~weftlab.netlab.Host` run by one process:
Debian's ``wireguard-go`` (the reference userspace implementation) or our ``weftd``.

* ``wireguard-go -f IFNAME`` creates the TUN device and a UAPI socket at
  ``/var/run/wireguard/IFNAME.sock`` (private to each lab host, see netlab); then
  :func:`start_wireguard_go` configures it the way wg-quick would: ``wg setconf`` with
  keys, port and peers, ``ip addr add`` for each address, MTU, link up, and a route
  over the interface for every peer's AllowedIPs (except /0 routes: wg-quick's
  fwmark policy routing for those is not reproduced).
* ``weftd`` reads a wg-quick file (:func:`write_wg_quick_config`) and does all of that
  itself; :func:`start_weftd` starts it and waits until the interface is up.

Both return a :class:`PeerProcess` handle with ``stop()``; the lab kills whatever is
left when it closes. Processes write to a log file in the host's work directory, and
start-up errors quote it.

Overlay addresses come from Tailscale's ranges only: 100.64.0.0/10 (RFC 6598 shared
address space) and fd7a:115c:a1e0::/48 (a ULA); :func:`overlay_cidrs` gives peer
``n`` the pair ``100.64.0.n/32`` and ``fd7a:115c:a1e0::n/128`` (for ``n`` < 256).

API::

    keys = generate_keypair()                      # KeyPair(private=..., public=...)
    peer = Peer(public_key, allowed_ips=["100.64.0.2/32"], endpoint="198.18.0.2:51820")
    wg = start_wireguard_go(host, "wg0", keys.private, 51820, overlay_cidrs(1), [peer])
    write_wg_quick_config(path, keys.private, overlay_cidrs(1), 51820, 1420, [peer])
    weftd = start_weftd(host, "wg0", path)
    latest_handshakes(host, "wg0")                 # {public_key: unix seconds} (wg show)
    wg.stop()
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from weftlab.netlab import Host, poll_until

KEY_LEN = 32  # bytes in an X25519 key or a WireGuard preshared key
DEFAULT_MTU = 1420  # wg-quick's default: 1500 minus 80 bytes of IPv6+UDP+WireGuard
START_TIMEOUT_S = 15.0  # how long a peer process gets to bring its interface up
STOP_TIMEOUT_S = 5.0  # how long it gets after SIGTERM before SIGKILL
OVERLAY_V4 = ipaddress.IPv4Network("100.64.0.0/10")
OVERLAY_V6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
_LOG_TAIL_CHARS = 2000  # how much of a peer's log an error message quotes


class PeerStartError(RuntimeError):
    """A WireGuard peer process could not bring its interface up.

    The first line says why in one line; the rest is the tail of its log.
    """


# -- keys ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: str  # base64, as `wg genkey` prints it
    public: str  # base64, as `wg pubkey` prints it


def generate_private_key() -> str:
    """A new X25519 private key, clamped (RFC 7748 section 5) like ``wg genkey``."""
    raw = bytearray(secrets.token_bytes(KEY_LEN))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def public_key(private_key: str) -> str:
    """The public key of a base64 private key, like ``wg pubkey``."""
    raw = _decode_key(private_key)
    public = X25519PrivateKey.from_private_bytes(raw).public_key()
    return base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def generate_keypair() -> KeyPair:
    private = generate_private_key()
    return KeyPair(private=private, public=public_key(private))


def generate_preshared_key() -> str:
    """A new preshared key, like ``wg genpsk``."""
    return base64.b64encode(secrets.token_bytes(KEY_LEN)).decode()


def _decode_key(key: str) -> bytes:
    raw = base64.b64decode(key, validate=True)
    if len(raw) != KEY_LEN:
        raise ValueError(f"a WireGuard key is {KEY_LEN} bytes in base64, not {len(raw)} bytes")
    return raw


# -- addresses and configuration ---------------------------------------------------------


def overlay_ips(n: int) -> tuple[str, str]:
    """Peer ``n``'s overlay addresses: (``100.64.0.n``, ``fd7a:115c:a1e0::n``)."""
    if not 1 <= n < 2**16:
        raise ValueError(f"overlay peer number must be 1..65535, not {n}")
    return str(OVERLAY_V4[n]), str(OVERLAY_V6[n])


def overlay_cidrs(n: int) -> list[str]:
    """Peer ``n``'s interface addresses as host routes: /32 and /128."""
    v4, v6 = overlay_ips(n)
    return [f"{v4}/32", f"{v6}/128"]


@dataclass(frozen=True)
class Peer:
    """One [Peer] section."""

    public_key: str
    allowed_ips: Sequence[str] = field(default_factory=list)
    endpoint: str | None = None  # "ip:port" or "[ipv6]:port"
    preshared_key: str | None = None
    persistent_keepalive: int | None = None  # seconds


def _peer_lines(peer: Peer) -> list[str]:
    lines = ["", "[Peer]", f"PublicKey = {peer.public_key}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {peer.preshared_key}")
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.allowed_ips:
        lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
    if peer.persistent_keepalive is not None:
        lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return lines


def wg_setconf_text(private_key: str, listen_port: int | None, peers: Sequence[Peer]) -> str:
    """A ``wg setconf`` file (wg(8) "CONFIGURATION FILE FORMAT": no Address or MTU)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    for peer in peers:
        lines += _peer_lines(peer)
    return "\n".join(lines) + "\n"


def wg_quick_config_text(
    private_key: str,
    addresses: Sequence[str],
    listen_port: int | None,
    mtu: int | None,
    peers: Sequence[Peer],
) -> str:
    """A wg-quick(8) file: the wg(8) format plus Address and MTU."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    if addresses:
        lines.append(f"Address = {', '.join(addresses)}")
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    if mtu is not None:
        lines.append(f"MTU = {mtu}")
    for peer in peers:
        lines += _peer_lines(peer)
    return "\n".join(lines) + "\n"


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was already there with other bits
    with os.fdopen(fd, "w") as file:
        file.write(text)


def write_wg_quick_config(
    path: str | os.PathLike[str],
    private_key: str,
    addresses: Sequence[str],
    listen_port: int | None,
    mtu: int | None,
    peers: Sequence[Peer],
) -> Path:
    """Write a wg-quick style file, mode 0600 (it holds a private key); return its path."""
    target = Path(path)
    _write_secret(target, wg_quick_config_text(private_key, addresses, listen_port, mtu, peers))
    return target


# -- processes -------------------------------------------------------------------------


@dataclass
class PeerProcess:
    """A running WireGuard implementation that owns interface ``ifname`` in ``host``."""

    kind: str  # "wireguard-go" or "weftd"
    host: Host
    ifname: str
    process: subprocess.Popen[Any]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (then SIGKILL), and wait until the interface is gone. Returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
        returncode = self.process.wait()
        poll_until(
            lambda: not link_exists(self.host, self.ifname),
            timeout_s=timeout_s,
            what=f"{self.ifname} on {self.host.name} to go away",
        )
        return returncode


def link_state(host: Host, ifname: str) -> dict[str, Any] | None:
    """``ip -j link show`` of one interface, or None when there is no such interface."""
    proc = host.run(["ip", "-j", "link", "show", "dev", ifname], check=False)
    if proc.returncode != 0:
        return None
    links: list[dict[str, Any]] = json.loads(proc.stdout)
    return links[0] if links else None


def link_exists(host: Host, ifname: str) -> bool:
    return link_state(host, ifname) is not None


def _link_up(host: Host, ifname: str) -> bool:
    state = link_state(host, ifname)
    return state is not None and "UP" in state.get("flags", [])


def _spawn(host: Host, kind: str, ifname: str, cmd: list[str], env: dict[str, str]) -> PeerProcess:
    log_path = host.workdir / f"{kind}-{ifname}.log"
    with open(log_path, "ab") as log:
        process = host.popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return PeerProcess(kind, host, ifname, process, log_path)


def _wait_until(
    peer: PeerProcess, ready: Callable[[], object], what: str, timeout_s: float
) -> None:
    """Poll ``ready()`` until true; raise PeerStartError if the process dies or time runs out."""

    def ready_or_dead() -> bool:
        return peer.process.poll() is not None or bool(ready())

    try:
        poll_until(ready_or_dead, timeout_s=timeout_s, what=what)
    except TimeoutError as err:
        peer.stop()
        raise _start_error(peer, str(err)) from None
    if peer.process.poll() is not None:
        raise _start_error(peer, f"{peer.kind} exited with code {peer.process.returncode}")


def _start_error(peer: PeerProcess, what: str) -> PeerStartError:
    tail = peer.log()[-_LOG_TAIL_CHARS:]
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    reason = f"{what} before {peer.ifname} came up on {peer.host.name}"
    if last:
        reason += f": {last}"
    return PeerStartError(f"{reason}\n--- {peer.log_path} ---\n{tail}")


def start_wireguard_go(
    host: Host,
    ifname: str,
    private_key: str,
    listen_port: int | None,
    address_cidrs: Sequence[str],
    peers: Sequence[Peer] = (),
    mtu: int = DEFAULT_MTU,
    *,
    log_level: str = "error",
    timeout_s: float = START_TIMEOUT_S,
    binary: str = "wireguard-go",
) -> PeerProcess:
    """Run wireguard-go (Debian's from PATH, or ``binary``) in ``host`` and configure it
    as wg-quick would."""
    env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL=log_level)
    peer = _spawn(host, "wireguard-go", ifname, [binary, "-f", ifname], env)
    socket_path = host.run_dir / f"{ifname}.sock"
    _wait_until(
        peer,
        lambda: socket_path.exists() and link_exists(host, ifname),
        f"wireguard-go's UAPI socket {ifname}.sock",
        timeout_s,
    )
    try:
        conf = host.workdir / f"wireguard-go-{ifname}.conf"
        _write_secret(conf, wg_setconf_text(private_key, listen_port, peers))
        host.run(["wg", "setconf", ifname, str(conf)])
        for cidr in address_cidrs:
            host.run(["ip", "addr", "add", cidr, "dev", ifname])
        host.run(["ip", "link", "set", "dev", ifname, "mtu", str(mtu), "up"])
        add_peer_routes(host, ifname, peers)
    except BaseException:
        peer.stop()
        raise
    return peer


def add_peer_routes(host: Host, ifname: str, peers: Sequence[Peer]) -> None:
    """Route every peer's AllowedIPs over ``ifname``, as wg-quick does (but skip /0)."""
    for peer in peers:
        for allowed in peer.allowed_ips:
            network = ipaddress.ip_network(allowed, strict=False)
            if network.prefixlen == 0:
                continue
            family = "-6" if network.version == 6 else "-4"
            host.run(["ip", family, "route", "replace", str(network), "dev", ifname])


def start_weftd(
    host: Host,
    ifname: str,
    config_path: str | os.PathLike[str],
    extra_args: Sequence[str] = (),
    *,
    timeout_s: float = START_TIMEOUT_S,
    launcher: str = "weftnet.node.main",
) -> PeerProcess:
    """Run weftd in ``host`` with a wg-quick file; return once ``ifname`` is up and, with
    ``--socket PATH`` among ``extra_args``, once its local API listens there.
    ``launcher``: the module to run (weftlab.weftd_config for shortened timers).

    Raises PeerStartError quoting weftd's output if it exits or times out first.
    """
    cmd = [sys.executable, "-m", launcher, "--wg-config", str(config_path)]
    cmd += ["--tun", ifname, *extra_args]
    args = list(extra_args)
    sock = args[args.index("--socket") + 1] if "--socket" in args[:-1] else None
    peer = _spawn(host, "weftd", ifname, cmd, dict(os.environ))
    _wait_until(peer, lambda: _link_up(host, ifname), f"weftd to bring {ifname} up", timeout_s)
    if sock is not None:
        _wait_until(peer, lambda: local_api_answers(sock), f"weftd to answer on {sock}", timeout_s)
    return peer


def local_api_answers(path: str) -> bool:
    """weftd's local API socket accepts connections (a stale file from a killed weftd
    does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def latest_handshakes(host: Host, ifname: str) -> dict[str, int]:
    """``wg show IFNAME latest-handshakes``: public key -> unix seconds (0: none yet).

    Needs a UAPI socket, so it works on wireguard-go (and on weftd only if it has one).
    """
    out = host.run(["wg", "show", ifname, "latest-handshakes"]).stdout
    return {key: int(seconds) for key, seconds in (line.split() for line in out.splitlines())}
