"""The userspace mode's services, started with the daemon: the SOCKS5 and HTTP proxies
(when asked for) and incoming forwarding to loopback (always)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from weftnet.node.config import NodeConfig
from weftnet.node.proxy.auth import Credentials, load_auth_file
from weftnet.node.proxy.httpproxy import HttpProxy
from weftnet.node.proxy.incoming import TcpForwarder, UdpNat
from weftnet.node.proxy.listen import check_listen
from weftnet.node.proxy.resolve import Dialer
from weftnet.node.proxy.socks5 import Socks5Server, UdpAssociations

log = logging.getLogger("weftd.userspace")


class UserspaceServices:
    def __init__(
        self,
        config: NodeConfig,
        net: Any,
        resolve_name: Callable[[str], list[str]],
        routable: Callable[[str], bool] | None = None,
        my_addresses: Callable[[], list[str]] = lambda: [],
    ) -> None:
        self.config = config
        self.net = net
        creds = None
        if config.proxy_auth_file:
            creds = Credentials(load_auth_file(config.proxy_auth_file))
        self.dialer = Dialer(net, resolve_name, routable)
        self.udp_assoc = UdpAssociations(net, my_addresses)
        self.socks5 = Socks5Server(self.dialer, creds, self.udp_assoc)
        self.http = HttpProxy(self.dialer, creds)
        self.tcp_in = TcpForwarder()
        self.udp_in = UdpNat(net.send_udp, unreachable=getattr(net, "refuse_udp", None))
        self.listening: list[str] = []  # "SOCKS5 on 127.0.0.1:1055"
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        self.net.on_tcp_connection(self.tcp_in.handle, accept=self.tcp_in.accept)
        self.net.on_udp_datagram(self._udp)
        self.udp_in.start()
        allow = self.config.proxy_allow_remote
        for kind, text, handler in (
            ("SOCKS5", self.config.socks5_server, self.socks5.handle),
            ("HTTP proxy", self.config.http_proxy_listen, self.http.handle),
        ):
            if not text:
                continue
            host, port = check_listen(text, allow_remote=allow, flag=kind)
            server = await asyncio.start_server(handler, host, port, limit=1 << 16)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            shown = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
            self.listening.append(f"{kind} on {shown}")
            log.info("%s listening on %s", kind, shown)

    def _udp(self, payload: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """To a SOCKS5 UDP association's port, or else forwarded to loopback."""
        if not self.udp_assoc.datagram(payload, src, dst):
            self.udp_in.datagram(payload, src, dst)

    async def close(self) -> None:
        self.net.on_tcp_connection(None)
        self.net.on_udp_datagram(None)
        self.udp_in.close()
        for server in self._servers:
            server.close()
        self._servers.clear()

    def status(self) -> dict[str, Any]:
        return {
            "listening": list(self.listening),
            "socks5": {"connections": self.socks5.connections, "refused": self.socks5.refused},
            "http_proxy": {"connections": self.http.connections, "refused": self.http.refused},
            "incoming_tcp": {"forwarded": self.tcp_in.forwarded, "reset": self.tcp_in.refused},
            "incoming_udp": {
                "datagrams": self.udp_in.forwarded,
                "replies": self.udp_in.replies,
                "unreachable": self.udp_in.refused,
                "flows": len(self.udp_in.flows),
            },
            "socks5_udp_associations": len(self.udp_assoc.by_port),
        }
