"""weftd: the node daemon.

Two ways to run it:

    weftd [--state-dir DIR] [--socket PATH] [--tun NAME] [--port N] [--tls-ca FILE]
          [--dns-mode auto|resolved|direct|off] [--metrics-listen HOST:PORT]
          [--log-format text|json]
        a tailnet node: `weft up --login-server URL` joins it to a coordination server,
        which then tells it its addresses and peers;

    weftd --tun userspace-networking [--socks5-server ADDR:PORT]
          [--outbound-http-proxy-listen ADDR:PORT] [--proxy-auth-file FILE]
        a tailnet node without TUN, root, routes or DNS changes: programs reach the
        tailnet through the proxies, peers reach 127.0.0.1 (docs/userspace.md);

    weftd --wg-config /etc/wireguard/wg0.conf [--tun NAME] [--socket PATH]
        a plain WireGuard peer from a wg-quick style file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from typing import Any

from weftnet import fastpath, logformat, tls, version
from weftnet.dns import osconfig
from weftnet.metrics import http as metrics_http
from weftnet.node import localapi, platform
from weftnet.node.config import DEFAULT_TUN, NodeConfig, default_state_dir
from weftnet.node.daemon import NodeDaemon
from weftnet.node.engine import DEFAULT_MTU
from weftnet.node.metrics import NodeMetrics
from weftnet.node.proxy.listen import ListenError, check_listen
from weftnet.node.wgconfig import ConfigError, WgConfig, load_wg_config
from weftnet.portmap.mapper import DEFAULT_LEASE_S
from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig

log = logging.getLogger("weftd")


def parse_args(argv: list[str] | None) -> NodeConfig:
    p = argparse.ArgumentParser(prog="weftd", description="weftnet node daemon")
    version.add_flag(p)
    p.add_argument("--wg-config", metavar="FILE", help="run a plain WireGuard peer from FILE")
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keys and state (default: /var/lib/weft for root, else"
        " $XDG_STATE_HOME/weft or ~/.local/state/weft)",
    )
    p.add_argument(
        "--tun",
        default=DEFAULT_TUN,
        metavar="NAME",
        help=f"TUN interface name, or {platform.USERSPACE} for no TUN (no root needed)",
    )
    p.add_argument(
        "--socket",
        default=None,
        metavar="PATH",
        help="local API socket path (default: /run/weft/weftd.sock for root, else"
        " $XDG_RUNTIME_DIR/weft/weftd.sock or the state directory's)",
    )
    p.add_argument(
        "--socks5-server",
        metavar="ADDR:PORT",
        help="userspace networking: a SOCKS5 proxy into the tailnet (e.g. 127.0.0.1:1055)",
    )
    p.add_argument(
        "--outbound-http-proxy-listen",
        metavar="ADDR:PORT",
        help="userspace networking: an HTTP proxy (CONNECT and plain) into the tailnet",
    )
    p.add_argument(
        "--proxy-auth-file",
        metavar="FILE",
        help="user:password lines the proxies require (SOCKS5 and Proxy-Authorization Basic)",
    )
    p.add_argument(
        "--proxy-allow-remote",
        action="store_true",
        help="let the proxies listen on a non-loopback address",
    )
    p.add_argument("--port", type=int, default=None, help="UDP port")
    p.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="CA certificates (PEM) that https:// control servers and relays must chain to"
        " (default: the system's store; SSL_CERT_FILE is honoured)",
    )
    p.add_argument(
        "--dns-mode",
        choices=osconfig.MODES,
        default="auto",
        help="how to point the OS at the tailnet's DNS: systemd-resolved, /etc/resolv.conf"
        " (direct), or not at all (default: auto, from what the host runs)",
    )
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", help=argparse.SUPPRESS)
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; plain"
        " http: keep it on loopback or a management network; `weft metrics` needs none)",
    )
    p.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="text",
        help="log lines as text (the default) or one JSON object per line",
    )
    p.add_argument(
        "--no-port-mapping",
        action="store_true",
        help="do not ask the NAT router for a port mapping (UPnP IGD, NAT-PMP, PCP)",
    )
    p.add_argument(
        "--port-map-lease",
        type=int,
        default=DEFAULT_LEASE_S,
        metavar="SECONDS",
        help=f"the lease to ask for a port mapping (renewed at half-life; default"
        f" {DEFAULT_LEASE_S})",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not 1 <= args.port_map_lease <= 2**31 - 1:
        p.error("--port-map-lease must be from 1 to 2147483647 seconds")
    if args.port is not None and not 0 <= args.port <= 65535:
        p.error("--port must be from 0 to 65535")
    try:
        tls.client_context(args.tls_ca)
    except tls.TlsError as e:
        p.error(str(e))
    if args.metrics_listen is not None:
        try:
            metrics_http.parse_listen(args.metrics_listen)
        except metrics_http.ListenError as e:
            p.error(str(e))
    userspace = platform.is_userspace(args.tun)
    for flag, value in (
        ("--socks5-server", args.socks5_server),
        ("--outbound-http-proxy-listen", args.outbound_http_proxy_listen),
    ):
        if value is None:
            continue
        if not userspace:
            p.error(f"{flag} needs --tun {platform.USERSPACE}")
        try:
            check_listen(value, allow_remote=args.proxy_allow_remote, flag=flag)
        except ListenError as e:
            p.error(str(e))
    if args.proxy_auth_file is not None:
        from weftnet.node.proxy.auth import AuthError, load_auth_file

        try:
            load_auth_file(args.proxy_auth_file)
        except AuthError as e:
            p.error(str(e))
    return NodeConfig(
        state_dir=args.state_dir or default_state_dir(),
        tun=args.tun,
        port=args.port,
        socket=args.socket,
        wg_config=args.wg_config,
        verbose=args.verbose,
        tls_ca=args.tls_ca,
        dns_mode=args.dns_mode,
        resolv_conf=args.resolv_conf,
        socks5_server=args.socks5_server,
        http_proxy_listen=args.outbound_http_proxy_listen,
        proxy_auth_file=args.proxy_auth_file,
        proxy_allow_remote=args.proxy_allow_remote,
        metrics_listen=args.metrics_listen,
        log_format=args.log_format,
        port_mapping=not args.no_port_mapping,
        port_map_lease_s=args.port_map_lease,
    )


class WgDaemon:
    """A plain WireGuard peer from a wg-quick file."""

    def __init__(self, cfg: WgConfig, config: NodeConfig) -> None:
        self.cfg = cfg
        self.config = config
        port = config.port if config.port is not None else cfg.interface.listen_port
        from weftnet.node.engine import Engine

        if platform.is_userspace(config.tun):
            raise ValueError(f"--wg-config runs on a TUN device, not {platform.USERSPACE}")
        self.engine = Engine(
            cfg.interface.private_key,
            config.tun,
            port or 0,
            cfg.interface.mtu or DEFAULT_MTU,
            config.device,
        )
        for pc in cfg.peers:
            self.engine.device.add_peer(
                pc.public_key,
                [str(n) for n in pc.allowed_ips],
                preshared_key=pc.preshared_key,
                endpoint=pc.endpoint,
                persistent_keepalive_s=pc.persistent_keepalive_s,
            )
        routes = [n for pc in cfg.peers for n in pc.allowed_ips]
        self.engine.configure(cfg.interface.addresses, routes)
        self.metrics = NodeMetrics(self.engine)

    async def run(self) -> None:
        engine = self.engine
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        metrics = await self.metrics.listen(self.config.metrics_listen)
        engine.start()
        server = None
        if self.config.socket:
            server = await localapi.serve(self.config.socket, localapi.make_handler(self))
        log.info(
            "weftd up: interface %s, UDP port %d, %d peer(s)",
            engine.ifname,
            engine.listen_port,
            len(engine.device.peers),
        )
        # Peers with an endpoint and a persistent keepalive speak first, like wg-quick.
        now = time.monotonic()
        for peer in engine.device.peers.values():
            if peer.persistent_keepalive_s and peer.endpoint:
                engine.dp.send_transmits(engine.device.send_keepalive(peer, now))
        try:
            await stop.wait()
        finally:
            log.info("weftd stopping")
            if metrics is not None:
                metrics.close()
            if server is not None and self.config.socket:
                server.close()
                await localapi.cleanup(self.config.socket)
            engine.close()

    async def api_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": localapi.wg_status(self.engine)}

    async def api_metrics(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": self.metrics.text()}


def build_daemon(config: NodeConfig) -> WgDaemon | NodeDaemon:
    """The daemon for ``config`` (exits with a one-line error for a bad wg-quick file)."""
    if config.wg_config:
        try:
            cfg = load_wg_config(config.wg_config)
        except ConfigError as e:
            print(f"weftd: {e}", file=sys.stderr)
            sys.exit(2)
        warn_if_readable_by_others(config.wg_config)
    geteuid = getattr(os, "geteuid", None)
    if not platform.is_userspace(config.tun) and geteuid is not None and geteuid() != 0:
        print(
            "weftd: must run as root (it creates a TUN device);"
            f" without root: weftd --tun {platform.USERSPACE}",
            file=sys.stderr,
        )
        sys.exit(1)
    return WgDaemon(cfg, config) if config.wg_config else NodeDaemon(config)


def warn_if_readable_by_others(path: str) -> None:
    """The file holds a private key: say so when others may read it, as wg-quick does."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        print(
            f"weftd: warning: {path} holds a private key and is readable by others"
            f" (mode {mode & 0o777:o}): chmod 600 {path}",
            file=sys.stderr,
        )


def setup_logging(config: NodeConfig) -> None:
    logformat.configure(
        config.log_format,
        logging.DEBUG if config.verbose else logging.INFO,
        "%(asctime)s weftd %(levelname)s %(name)s %(message)s",
    )


def loop_factory() -> Any:
    """uvloop's event loop where it is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None, device_config: DeviceConfig = SPEC_CONFIG) -> None:
    """weftd; ``device_config`` is WireGuard's timers (the spec's; a lab may shorten them)."""
    config = dataclasses.replace(parse_args(argv), device=device_config)
    setup_logging(config)
    try:
        choice = os.environ.get("WEFT_DATAPATH", "")
        if choice:  # "python": the pure reference data path, for comparison and debugging
            fastpath.use(choice.lower())
        if fastpath.IMPLEMENTATION != "c":
            log.warning("data path: pure Python (%s); throughput is a fraction of the C one",
                        "WEFT_DATAPATH" if choice else "weftnet.fastpath._fastpath not built")  # fmt: skip
        daemon = build_daemon(config)
        # uvloop only for our own loop: pyroute2 runs a stock asyncio loop internally.
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(daemon.run())
    except (OSError, ValueError) as e:
        print(f"weftd: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
