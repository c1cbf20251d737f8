"""The Linux backend: a TUN device with virtio-net headers and GSO (node.tun, through
node.engine.Engine), routes and policy routing and the nftables table
(node.routing), systemd-resolved or /etc/resolv.conf (node.osdns), and netlink for the
host's addresses (node.netmon). Each is imported here, never by the userspace mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weftnet.endpoint import Endpoint


class LinuxPlatform:
    name = "linux"
    dns_sockets = True

    def make_engine(self, private_key: bytes, tun: str, port: int, **kw: Any) -> Any:
        from weftnet.node.engine import Engine

        return Engine(private_key, tun, port, **kw)

    def route_manager(self) -> Any:
        from weftnet.node import routing

        return routing.RouteManager()

    def os_dns(
        self,
        state_dir: str,
        ifname: str,
        mode: str,
        resolv_conf: str,
        on_base: Callable[[list[str]], None],
    ) -> Any:
        from weftnet.node.osdns import OSDNS

        return OSDNS(state_dir, ifname, mode=mode, resolv_conf=resolv_conf, on_base=on_base)

    def local_endpoints(self, port: int, exclude_ifname: str) -> list[Endpoint]:
        from weftnet.node import netmon

        return netmon.local_endpoints(port, exclude_ifname)

    def network_watcher(self, on_event: Callable[[], None]) -> Any:
        from weftnet.node import netmon

        return netmon.NetlinkWatcher(on_event)
