"""The engine: one TUN device, one UDP socket, the data plane, and the timer.

Both ways of running weftd (a plain WireGuard peer from a file, or a tailnet node
driven by the coordination server) own one Engine. It is created and its interface
configured before the event loop starts (pyroute2's synchronous API runs an asyncio loop
of its own), then ``start()`` hooks it into the running loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Iterable

from weftnet.node.datapath import DataPlane, make_socket
from weftnet.node.tun import configure_interface, open_tun, set_addresses
from weftnet.wireguard.device import Device

log = logging.getLogger("weftd")

DEFAULT_MTU = 1420  # wg-quick's default: 1500 minus the largest WireGuard overhead (IPv6)
MAX_TIMER_WAIT_S = 1.0  # the timer wakes at least this often to pick up new deadlines

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Engine:
    def __init__(
        self,
        private_key: bytes,
        tun_name: str,
        port: int,
        mtu: int = DEFAULT_MTU,
        rekey_after_time_s: float | None = None,
    ) -> None:
        self.rekey_after_time_s = rekey_after_time_s
        self.mtu = mtu
        self.device = self._new_device(private_key)
        self.sock = make_socket(port)
        self.listen_port: int = self.sock.getsockname()[1]
        self.tun_fd, self.ifname = open_tun(tun_name)
        self.dp = DataPlane(self.device, self.tun_fd, self.sock)
        self.addresses: list[Interface] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_device(self, private_key: bytes) -> Device:
        kwargs = {}
        if self.rekey_after_time_s:
            kwargs["rekey_after_time_s"] = self.rekey_after_time_s
        device = Device(
            private_key, os.urandom, epoch_offset_s=time.time() - time.monotonic(), **kwargs
        )
        device.mtu = self.mtu
        return device

    def replace_device(self, private_key: bytes) -> Device:
        """A new identity (node key rotation): every peer and session starts over."""
        self.device = self._new_device(private_key)
        self.dp.device = self.device
        self.dp.config_changed()
        return self.device

    def configure(self, addresses: Iterable[Interface], routes: Iterable[Network]) -> None:
        """Set MTU, addresses and routes and bring the interface up (blocking netlink)."""
        self.addresses = list(addresses)
        configure_interface(self.ifname, self.addresses, self.mtu, routes)

    def update_addresses(self, addresses: Iterable[Interface]) -> None:
        """Make the interface's addresses exactly ``addresses`` (blocking netlink)."""
        self.addresses = list(addresses)
        set_addresses(self.ifname, self.addresses)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.dp.on_change = self.rearm
        loop.add_reader(self.tun_fd, self.dp.on_tun_readable)
        loop.add_reader(self.sock.fileno(), self.dp.on_udp_readable)
        self.rearm()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
            self._loop.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
        os.close(self.tun_fd)
        self.sock.close()

    def _tick(self) -> None:
        self._timer = None
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
        delay = max(delay, 0.0)
        if self._timer is not None:
            if self._timer.when() - loop.time() <= delay:
                return  # the armed timer fires soon enough
            self._timer.cancel()
        self._timer = loop.call_later(delay, self._tick)
