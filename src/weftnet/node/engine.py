"""The engine: one packet device, one UDP socket, the data plane, and the timer.

Both ways of running weftd (a plain WireGuard peer from a file, or a tailnet node
driven by the coordination server) own one Engine. It is created and its interface
configured before the event loop starts (pyroute2's synchronous API runs an asyncio loop
of its own), then ``start()`` hooks it into the running loop.

``BaseEngine`` is the portable part (device, socket, timer); ``Engine`` adds the Linux
TUN device (weftnet.node.tun, imported only when one is opened) and
``weftnet.node.platform.userspace.UserspaceEngine`` an in-process TCP/IP stack instead
(docs/platforms.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

from weftnet.node.datapath import Bind, DataPlane, UdpBind, make_socket, tso_max_size
from weftnet.wireguard.device import SPEC_CONFIG, Device, DeviceConfig

log = logging.getLogger("weftd")

DEFAULT_MTU = 1420  # wg-quick's default: 1500 minus the largest WireGuard overhead (IPv6)
MAX_TIMER_WAIT_S = 1.0  # the timer wakes at least this often to pick up new deadlines

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BaseEngine:
    """What every packet device shares: the WireGuard device, the UDP socket and the
    timer. A subclass makes ``self.dp`` and names the device (``ifname``)."""

    dp: DataPlane
    ifname: str
    mode = "tun"  # what `weft status` shows: "tun" or "userspace-networking"

    def __init__(
        self,
        private_key: bytes,
        port: int,
        mtu: int = DEFAULT_MTU,
        config: DeviceConfig = SPEC_CONFIG,
    ) -> None:
        self.config = config
        self.mtu = mtu
        self.device = self._new_device(private_key)
        self.sock = make_socket(port)
        self.listen_port: int = self.sock.getsockname()[1]
        self.addresses: list[Interface] = []
        # On the device too while the node has addresses, never the routes' source: the
        # resolver's service addresses (weftnet.node.dnsserver).
        self.service_addresses: list[Interface] = []
        self._timer = OneTimer(self._tick)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_device(self, private_key: bytes) -> Device:
        device = Device(
            private_key,
            os.urandom,
            epoch_offset_s=time.time() - time.monotonic(),
            config=self.config,
        )
        device.mtu = self.mtu
        return device

    def set_bind(self, bind: Bind | None) -> None:
        """Send and receive through ``bind`` (the tailnet's path layer); None: plain UDP."""
        self.dp.set_bind(bind if bind is not None else UdpBind())

    def replace_device(self, private_key: bytes) -> Device:
        """A new identity (node key rotation): every peer and session starts over."""
        for peer in self.device.peers.values():
            self.dp.retire_peer(peer)
        self.dp.counters.retired_initiations += self.device.handshakes_initiated
        self.device = self._new_device(private_key)
        self.dp.device = self.device
        self.dp.config_changed()
        return self.device

    def _all_addresses(self) -> list[Interface]:
        """The node's own first (routes take their source from the first of a family)."""
        if not self.addresses:
            return []
        return self.addresses + [a for a in self.service_addresses if a not in self.addresses]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.dp.on_change = self.rearm
        loop.add_reader(self.sock.fileno(), self.dp.on_udp_readable)
        self.rearm()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self._timer.cancel()
        self.sock.close()

    def _tick(self) -> None:
        self.dp.send_transmits(self.device.handle_timers(time.monotonic()))
        self.rearm()

    def rearm(self) -> None:
        """Arm the one timer at the device's next deadline (at most a second away)."""
        loop = self._loop
        if loop is None:
            return
        now = time.monotonic()
        deadline = self.device.next_deadline()
        delay = MAX_TIMER_WAIT_S if deadline is None else min(deadline - now, MAX_TIMER_WAIT_S)
        self._timer.arm(loop, max(delay, 0.0))


class Engine(BaseEngine):
    """The Linux TUN device (virtio-net headers, GSO) configured through netlink."""

    def __init__(
        self,
        private_key: bytes,
        tun_name: str,
        port: int,
        mtu: int = DEFAULT_MTU,
        config: DeviceConfig = SPEC_CONFIG,
    ) -> None:
        from weftnet.node import tun  # Linux-only (fcntl, pyroute2): only when a TUN opens

        self._tun = tun
        super().__init__(private_key, port, mtu, config)
        try:
            self.tun_fd, self.ifname = self._tun.open_tun(tun_name)
        except BaseException:
            self.sock.close()
            raise
        self.dp = DataPlane(self.device, self.tun_fd, self.sock)
        # The three methods below run on executor threads (the map and the resolver each
        # change addresses): one at a time, each computing the whole address list and
        # applying it, so one never removes what the other has just added.
        self._netlink = threading.Lock()

    def configure(self, addresses: Iterable[Interface], routes: Iterable[Network]) -> None:
        """Set MTU, addresses and routes and bring the interface up (blocking netlink)."""
        with self._netlink:
            self.addresses = list(addresses)
            self._tun.configure_interface(
                self.ifname, self._all_addresses(), self.mtu, routes, tso_max_size(self.mtu)
            )

    def update_addresses(self, addresses: Iterable[Interface]) -> None:
        """Make the interface's addresses exactly ``addresses`` and, when there are any,
        the service addresses after them (blocking netlink)."""
        with self._netlink:
            self.addresses = list(addresses)
            self._tun.set_addresses(self.ifname, self._all_addresses())

    def set_service_addresses(self, addresses: Iterable[Interface]) -> None:
        """Keep ``addresses`` on the interface next to the node's own (blocking netlink)."""
        with self._netlink:
            self.service_addresses = list(addresses)
            self._tun.set_addresses(self.ifname, self._all_addresses())

    def start(self) -> None:
        # The TUN's reader first, as before the platform seam (same order in the loop).
        asyncio.get_running_loop().add_reader(self.tun_fd, self.dp.on_tun_readable)
        super().start()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
        super().close()
        os.close(self.tun_fd)


class OneTimer:
    """One timer re-armed to the earliest deadline asked for (aioquic's shell re-arms one
    ``call_at(get_timer())``). It keeps its own deadline: uvloop's ``call_later(0, ...)``
    returns a plain Handle, which has no ``when()``."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._handle: asyncio.Handle | None = None
        self._at = 0.0  # when the armed handle fires, in loop time

    def arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Fire in ``delay`` seconds, unless already armed to fire sooner."""
        at = loop.time() + delay
        if self._handle is not None:
            if self._at <= at:
                return  # the armed timer fires soon enough
            self._handle.cancel()
        self._at = at
        self._handle = loop.call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()
