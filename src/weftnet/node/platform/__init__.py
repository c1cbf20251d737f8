"""The platform seam: what differs between operating systems (docs/platforms.md).

A backend gives the node daemon four things:

* the packet device (``make_engine``): a Linux TUN with virtio-net headers, or the
  in-process TCP/IP stack of ``--tun userspace-networking``;
* routes and the firewall (``route_manager``): policy routing and ``table inet weftd``
  on Linux; nothing in userspace mode;
* the OS's DNS configuration (``os_dns``): systemd-resolved or /etc/resolv.conf on Linux;
  nothing in userspace mode (the proxies ask the node's resolver in-process);
* the host's addresses and their changes (``local_endpoints``, ``network_watcher``):
  netlink on Linux; a portable socket probe, polled, in userspace mode.

Backends are imported only when chosen, so the userspace mode never imports fcntl,
pyroute2 or anything else Linux-only (tests/node/test_platform.py checks it). A macOS
(utun) or Windows (Wintun) backend is one more module here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

from weftnet.endpoint import Endpoint

USERSPACE = "userspace-networking"  # weftd --tun userspace-networking


class PlatformError(OSError):
    pass


class Platform(Protocol):
    name: str
    # Whether the resolver listens on sockets at 100.100.100.100:53 (False: it is asked
    # in-process only, by the proxies).
    dns_sockets: bool

    def make_engine(self, private_key: bytes, tun: str, port: int, **kw: Any) -> Any: ...

    def route_manager(self) -> Any: ...

    def os_dns(
        self,
        state_dir: str,
        ifname: str,
        mode: str,
        resolv_conf: str,
        on_base: Callable[[list[str]], None],
    ) -> Any: ...

    def local_endpoints(self, port: int, exclude_ifname: str) -> list[Endpoint]: ...

    def network_watcher(self, on_event: Callable[[], None]) -> Any: ...


def is_userspace(tun: str) -> bool:
    return tun == USERSPACE


def for_tun(tun: str) -> Platform:
    """The backend for ``--tun NAME`` on this operating system."""
    if is_userspace(tun):
        from weftnet.node.platform.userspace import UserspacePlatform

        return UserspacePlatform()
    if sys.platform.startswith("linux"):
        from weftnet.node.platform.linux import LinuxPlatform

        return LinuxPlatform()
    raise PlatformError(
        f"no TUN backend for {sys.platform} yet (docs/platforms.md): run `weftd --tun {USERSPACE}`"
    )
