"""Stand-ins for the daemon's outside world: an Engine without a TUN, and a control
server in memory. Shared by the node tests (imported, never a test module itself)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from weftlab.fakes import SeededEntropy
from weftnet import controlbox, tailcfg
from weftnet.node.config import NodeConfig
from weftnet.node.controlclient import ControlError
from weftnet.node.daemon import NodeDaemon
from weftnet.node.datapath import DataPlane, UdpBind, make_socket
from weftnet.node.state import NodeState
from weftnet.wireguard import crypto
from weftnet.wireguard.device import Device

SERVER = "http://control.test:8080"


class FakeEngine:
    """What NodeDaemon uses of an Engine: a real DataPlane on a socketpair and a
    loopback UDP socket, no TUN and no netlink."""

    def __init__(self, private_key: bytes, tun: str, port: int, **_: Any) -> None:
        self.device = Device(private_key, SeededEntropy("me"))
        self.tun_end, self.tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock = make_socket(0)
        self.dp = DataPlane(self.device, self.tun.fileno(), self.sock)
        self.listen_port = self.sock.getsockname()[1]
        self.ifname = tun
        self.addresses: list[Any] = []
        self.routes: list[Any] = []
        self.service_addresses: list[Any] = []

    def start(self) -> None:
        pass

    def set_bind(self, bind: Any) -> None:
        self.dp.set_bind(bind if bind is not None else UdpBind())

    def configure(self, addresses: Any, routes: Any) -> None:
        self.addresses = list(addresses)
        self.routes = list(routes)

    def update_addresses(self, addresses: Any) -> None:
        self.addresses = list(addresses)
        if not any(a.version == 4 for a in self.addresses):
            self.routes = [r for r in self.routes if r.version != 4]  # as the kernel does

    def set_service_addresses(self, addresses: Any) -> None:
        self.service_addresses = list(addresses)

    def replace_device(self, private_key: bytes) -> Device:
        self.device = Device(private_key, SeededEntropy("me again"))
        self.dp.device = self.device
        return self.device

    def rearm(self) -> None:
        pass

    def close(self) -> None:
        for s in (self.tun_end, self.tun, self.sock):
            s.close()


def key_text(seed: str) -> str:
    key = crypto.public_key(crypto.generate_private_key(SeededEntropy(seed)))
    return controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, key)


def node(
    nid: int,
    name: str,
    ips: list[str],
    user: str | None = "alice",
    tags: list[str] | None = None,
    node_key: str | None = None,
    **more: Any,
) -> tailcfg.Node:
    cidrs = [ip + ("/32" if "." in ip else "/128") for ip in ips]
    return tailcfg.Node(
        id=nid,
        name=name,
        given_name=name + "-1" if name == "laptop" else name,
        user=tailcfg.UserInfo(id=7, name=user) if user else None,
        tags=tags or [],
        node_key=node_key or key_text(name),
        addresses=cidrs,
        allowed_ips=cidrs,
        online=True,
        os="linux",
        client_version="0.1.0",
        **more,
    )


class FakeServer:
    """A coordination server in memory. Each map stream first gets ``frames`` (what
    ``full()`` builds, unless set otherwise), then whatever ``push`` sends."""

    def __init__(self, me: tailcfg.Node, peers: list[tailcfg.Node]) -> None:
        self.me = me
        self.peers = peers
        self.authorized = True  # register answers machine_authorized
        self.refusal: tailcfg.MapResponse | None = None  # sent instead of maps, then end
        self.unreachable = False
        self.first_frame_delay_s = 0.05
        self.streams: list[list[str]] = []  # the endpoints each stream reported
        self.routable_ips: list[list[str]] = []  # Hostinfo.routable_ips of each stream
        self.registers: list[dict[str, Any]] = []
        self._queues: list[asyncio.Queue[tailcfg.MapResponse]] = []

    def full(self) -> tailcfg.MapResponse:
        return tailcfg.MapResponse(node=self.me, peers=self.peers, packet_filter=[])

    def push(self, frame: tailcfg.MapResponse) -> None:
        for q in self._queues:
            q.put_nowait(frame)

    def client(self, state: NodeState, url: str) -> FakeControl:
        return FakeControl(self, url)


class FakeControl:
    def __init__(self, server: FakeServer, url: str) -> None:
        self.server = server
        self.url = url.rstrip("/")
        self.login_server = self.url

    async def close(self) -> None:
        pass

    def fail_over(self) -> bool:
        return False

    async def register(self, **kw: Any) -> tailcfg.RegisterResponse:
        self.server.registers.append(kw)
        if self.server.unreachable:
            raise ControlError("cannot reach the coordination server")
        if kw.get("logout"):
            return tailcfg.RegisterResponse(machine_authorized=False, node_key_expired=True)
        if not self.server.me.machine_authorized:  # registered, waiting for approval
            return tailcfg.RegisterResponse(machine_authorized=False, node=self.server.me)
        return tailcfg.RegisterResponse(machine_authorized=self.server.authorized)

    async def map_stream(
        self, endpoints: list[str], hostname: str, **kw: Any
    ) -> AsyncGenerator[tailcfg.MapResponse, None]:
        server = self.server
        server.streams.append(endpoints)
        server.routable_ips.append(kw.get("routable_ips") or [])
        if server.unreachable:
            raise ControlError("map stream broke: unreachable")
        await asyncio.sleep(server.first_frame_delay_s)
        if server.refusal is not None:
            yield server.refusal
            return
        q: asyncio.Queue[tailcfg.MapResponse] = asyncio.Queue()
        server._queues.append(q)
        try:
            yield server.full()
            while True:
                yield await q.get()
        finally:
            server._queues.remove(q)


class FakeRoutes:
    """What NodeDaemon uses of a routing.RouteManager, recording instead of touching
    this host's kernel: the last desired state (None: removed)."""

    def __init__(self) -> None:
        self.desired: Any = None
        self.lan = ["192.168.1.0/24"]
        self.ip_forward: tuple[bool | None, bool | None] = (True, True)
        self.cleanups = 0

    def apply(self, desired: Any) -> None:
        self.desired = desired

    def remove(self) -> None:
        self.desired = None

    def cleanup(self) -> None:
        self.cleanups += 1
        self.desired = None

    def health(self) -> list[str]:
        return []

    def local_prefixes(self, ifname: str) -> list[str]:
        return self.lan

    def forwarding(self) -> tuple[bool | None, bool | None]:
        return self.ip_forward


def make_daemon(tmp_path: Path, server: FakeServer, **kw: Any) -> NodeDaemon:
    config = NodeConfig(state_dir=str(tmp_path / "state"), tun="weft-test", port=0,
                        socket=str(tmp_path / "weftd.sock"), dns_mode="direct",
                        resolv_conf=str(tmp_path / "resolv.conf"))  # fmt: skip
    kw.setdefault("local_endpoints", lambda port, ifname: [])
    kw.setdefault("dns_listen", [("127.0.0.1", 0)])  # the resolver, on a free port
    kw.setdefault("routes", FakeRoutes())  # never this host's routing tables
    return NodeDaemon(
        config,
        engine_factory=FakeEngine,
        control_factory=server.client,
        watch_netlink=False,
        **kw,
    )
