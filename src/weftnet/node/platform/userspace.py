"""The userspace backend (``weftd --tun userspace-networking``): no TUN, no root, no
netlink, no nftables, no resolv.conf.

Packets that pass the packet filter go to an in-process TCP/IP stack
(weftnet.node.userspace.net.UserspaceNet) instead of a TUN device; what the stack sends
goes through the filter's flow tracking and WireGuard as if read from a TUN
(datapath.StackDataPlane). Programs on this host reach the tailnet through the SOCKS5
and HTTP proxies, and peers reach services on 127.0.0.1 through the incoming forwarder
(weftnet.node.proxy, docs/userspace.md). Routes, the firewall and the OS's DNS are left
alone; the resolver answers the proxies in-process.

Only portable modules are imported here (socket, asyncio): this is what runs on macOS,
Windows, in containers and CI jobs without /dev/net/tun.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from weftnet.endpoint import Endpoint, canonical
from weftnet.node.datapath import StackDataPlane
from weftnet.node.engine import DEFAULT_MTU, BaseEngine, Interface, Network
from weftnet.node.platform import USERSPACE
from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig

log = logging.getLogger("weftd.userspace")

OVERLAY = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))
# Where the probe "connects" a UDP socket to learn the source address the OS would pick
# (no packet is sent): the default route's, then any other it may have.
PROBE_TARGETS = ("192.0.2.1", "2001:db8::1", "8.8.8.8", "2001:4860:4860::8888")
POLL_S = 5.0  # the host's addresses are looked at this often (no netlink here)


class UserspaceEngine(BaseEngine):
    """The engine with the userspace TCP/IP stack as its packet device."""

    mode = USERSPACE

    def __init__(
        self,
        private_key: bytes,
        tun_name: str = USERSPACE,
        port: int = 0,
        mtu: int = DEFAULT_MTU,
        config: DeviceConfig = SPEC_CONFIG,
        net_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(private_key, port, mtu, config)
        self.ifname = USERSPACE
        self.dp: StackDataPlane = StackDataPlane(self.device, self.sock)
        if net_factory is None:
            from weftnet.node.userspace.net import UserspaceNet

            net_factory = UserspaceNet
        self.net = net_factory(self.dp.send_packets, mtu=mtu)
        self.dp.deliver = self.net.deliver

    def configure(self, addresses: Iterable[Interface], routes: Iterable[Network]) -> None:
        """The stack answers for ``addresses``; routes mean nothing without a kernel."""
        self.update_addresses(addresses)

    def update_addresses(self, addresses: Iterable[Interface]) -> None:
        self.addresses = list(addresses)
        self.net.set_addresses(list(self.addresses))

    def set_service_addresses(self, addresses: Iterable[Interface]) -> None:
        """The resolver is asked in-process here: nothing listens at 100.100.100.100."""
        self.service_addresses = list(addresses)

    def start(self) -> None:
        super().start()
        self.net.start()

    def close(self) -> None:
        self.net.close()
        super().close()


class NullRoutes:
    """No routes, rules or firewall: what a RouteManager does, as nothing."""

    def apply(self, desired: Any) -> None:
        pass

    def remove(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def health(self) -> list[str]:
        return []

    def local_prefixes(self, ifname: str) -> list[str]:
        return []

    def forwarding(self) -> tuple[bool | None, bool | None]:
        return (None, None)  # subnet routing needs a kernel: not in this mode


class NullOSDNS:
    """The OS's DNS is left alone: MagicDNS names work through the proxies only."""

    mode = "off"

    def recover(self) -> None:
        pass

    async def watch(self) -> None:
        await asyncio.Event().wait()  # nothing to watch, until cancelled

    async def update(self, dns: Any, accept_dns: bool, state: Any) -> None:
        pass

    async def deconfigure(self, why: str) -> None:
        pass

    def health(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {
            "mode": "off",
            "why": "userspace networking: the OS's DNS is not changed; the proxies resolve"
            " MagicDNS names",
            "accept_dns": None,
            "configured": False,
            "os": {
                "nameservers": [],
                "search_domains": [],
                "match_domains": [],
                "default_route": False,
            },
            "resolv_conf": None,
            "rename_broken": False,
            "backup": False,
            "base_resolvers": [],
            "reapplied": 0,
            "server": None,
            "health": [],
        }


def probe_addresses(targets: Iterable[str] = PROBE_TARGETS) -> list[str]:
    """The source addresses the OS picks toward ``targets`` (UDP connect sends nothing):
    a portable stand-in for listing interfaces over netlink."""
    found: list[str] = []
    for target in targets:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))
                ip = s.getsockname()[0]
        except OSError:
            continue
        if ip not in found:
            found.append(ip)
    return found


def local_endpoints(
    port: int, exclude_ifname: str = "", extra: Iterable[str] = ()
) -> list[Endpoint]:
    """This host's usable addresses with ``port`` (not loopback, link-local or overlay)."""
    out: list[Endpoint] = []
    for text in probe_addresses((*PROBE_TARGETS, *extra)):
        ip = ipaddress.ip_address(text.split("%")[0])
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            continue
        if any(ip in n for n in OVERLAY):
            continue
        ep = canonical((str(ip), port))
        if ep not in out:
            out.append(ep)
    return out


class PollingWatcher:
    """Calls ``on_event`` when the probed addresses change (roaming without netlink)."""

    def __init__(self, on_event: Callable[[], None], interval_s: float = POLL_S) -> None:
        self.on_event = on_event
        self.interval_s = interval_s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = await loop.run_in_executor(None, probe_addresses)
        while True:
            await asyncio.sleep(self.interval_s)
            now = await loop.run_in_executor(None, probe_addresses)
            if now != last:
                last = now
                self.on_event()


class UserspacePlatform:
    name = USERSPACE
    dns_sockets = False

    def make_engine(self, private_key: bytes, tun: str, port: int, **kw: Any) -> Any:
        return UserspaceEngine(private_key, tun, port, **kw)

    def route_manager(self) -> Any:
        return NullRoutes()

    def os_dns(
        self,
        state_dir: str,
        ifname: str,
        mode: str,
        resolv_conf: str,
        on_base: Callable[[list[str]], None],
    ) -> Any:
        return NullOSDNS()

    def local_endpoints(self, port: int, exclude_ifname: str) -> list[Endpoint]:
        return local_endpoints(port, exclude_ifname)

    def network_watcher(self, on_event: Callable[[], None]) -> Any:
        return PollingWatcher(on_event)
