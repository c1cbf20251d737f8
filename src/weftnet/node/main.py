"""weftd: the node daemon.

This release runs a plain WireGuard interface from a wg-quick style file:

    weftd --wg-config /etc/wireguard/wg0.conf --tun weft0

It creates the TUN device, sets its addresses, MTU and routes for every peer's
AllowedIPs, and serves a root-only local API on a unix socket (``weft status``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from weftnet.node import localapi
from weftnet.node.datapath import DataPlane, make_socket
from weftnet.node.tun import TunError, configure_interface, open_tun
from weftnet.node.wgconfig import ConfigError, WgConfig, load_wg_config
from weftnet.wireguard.device import Device

log = logging.getLogger("weftd")

DEFAULT_TUN = "weft0"
DEFAULT_SOCKET = "/run/weft/weftd.sock"
DEFAULT_MTU = 1420  # wg-quick's default: 1500 minus the largest WireGuard overhead (IPv6)
MAX_TIMER_WAIT_S = 1.0  # the timer wakes at least this often to pick up new deadlines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="weftd", description="weftnet node daemon")
    p.add_argument("--wg-config", metavar="FILE", help="run a plain WireGuard peer from FILE")
    p.add_argument("--tun", default=DEFAULT_TUN, metavar="NAME", help="TUN interface name")
    p.add_argument("--socket", default=None, metavar="PATH", help="local API socket path")
    p.add_argument("--port", type=int, default=None, help="UDP port (overrides ListenPort)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument(
        "--rekey-after-seconds",
        type=float,
        default=None,
        help=argparse.SUPPRESS,  # testing only: shorten REKEY_AFTER_TIME
    )
    args = p.parse_args(argv)
    if args.port is not None and not 0 <= args.port <= 65535:
        p.error("--port must be from 0 to 65535")
    if args.wg_config is None:
        p.error("--wg-config FILE is required in this version")
    return args


class Daemon:
    def __init__(self, cfg: WgConfig, args: argparse.Namespace) -> None:
        self.cfg = cfg
        self.args = args
        kwargs = {}
        if args.rekey_after_seconds:
            kwargs["rekey_after_time_s"] = args.rekey_after_seconds
        self.device = Device(
            cfg.interface.private_key,
            os.urandom,
            epoch_offset_s=time.time() - time.monotonic(),
            **kwargs,
        )
        self.device.mtu = cfg.interface.mtu or DEFAULT_MTU
        for pc in cfg.peers:
            self.device.add_peer(
                pc.public_key,
                [str(n) for n in pc.allowed_ips],
                preshared_key=pc.preshared_key,
                endpoint=pc.endpoint,
                persistent_keepalive_s=pc.persistent_keepalive_s,
            )
        self._timer: asyncio.TimerHandle | None = None
        self.stop_event: asyncio.Event

    def setup(self) -> None:
        """Socket, TUN device, addresses and routes; before the event loop starts
        (pyroute2's synchronous API runs a loop of its own)."""
        port = self.args.port if self.args.port is not None else self.cfg.interface.listen_port
        self.sock = make_socket(port or 0)
        self.listen_port = self.sock.getsockname()[1]
        self.tun_fd, self.ifname = open_tun(self.args.tun)
        routes = [n for pc in self.cfg.peers for n in pc.allowed_ips]
        configure_interface(self.ifname, self.cfg.interface.addresses, self.device.mtu, routes)
        self.dp = DataPlane(self.device, self.tun_fd, self.sock)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        fd, sock, ifname = self.tun_fd, self.sock, self.ifname
        self.stop_event = asyncio.Event()
        self.dp.on_change = self._rearm
        loop.add_reader(fd, self.dp.on_tun_readable)
        loop.add_reader(sock.fileno(), self.dp.on_udp_readable)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_event.set)
        server = None
        if self.args.socket:
            server = await localapi.serve(self.args.socket, self)
        log.info(
            "weftd up: interface %s, UDP port %d, %d peer(s)",
            ifname,
            self.listen_port,
            len(self.device.peers),
        )
        # Peers with an endpoint and a persistent keepalive speak first, like wg-quick.
        now = time.monotonic()
        for peer in self.device.peers.values():
            if peer.persistent_keepalive_s and peer.endpoint:
                self.dp.send_transmits(self.device.send_keepalive(peer, now))
        self._rearm()
        try:
            await self.stop_event.wait()
        finally:
            log.info("weftd stopping")
            loop.remove_reader(fd)
            loop.remove_reader(sock.fileno())
            if server is not None:
                server.close()
                await localapi.cleanup(self.args.socket)
            os.close(fd)
            sock.close()

    def _tick(self) -> None:
        self._timer = None
        self.dp.send_transmits(self.device.handle_timers(time.monotonic()))
        self._rearm()

    def _rearm(self) -> None:
        now = time.monotonic()
        deadline = self.device.next_deadline()
        delay = MAX_TIMER_WAIT_S if deadline is None else min(deadline - now, MAX_TIMER_WAIT_S)
        if self._timer is not None:
            if self._timer.when() - asyncio.get_running_loop().time() <= max(delay, 0):
                return  # the armed timer fires soon enough
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._tick)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s weftd %(levelname)s %(message)s",
    )
    try:
        cfg = load_wg_config(args.wg_config)
    except ConfigError as e:
        print(f"weftd: {e}", file=sys.stderr)
        sys.exit(2)
    if os.geteuid() != 0:
        print("weftd: must run as root (it creates a TUN device)", file=sys.stderr)
        sys.exit(1)
    import uvloop

    try:
        daemon = Daemon(cfg, args)
        daemon.setup()
        # uvloop only for our own loop: pyroute2 runs a stock asyncio loop internally.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(daemon.run())
    except (TunError, OSError, ValueError) as e:
        print(f"weftd: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
