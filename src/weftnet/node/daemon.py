"""weftd as a tailnet node: logs in to a coordination server and follows its map.

States (as `weft status` shows them):

    NeedsLogin  no accepted node key: `weft up --login-server URL [--auth-key K]`
    Starting    logged in, waiting for the first map
    Running     the map is applied: addresses set, peers configured
    Stopped     `weft down`: no peers, no addresses; `weft up` resumes

The node key is the WireGuard key. The last map is kept in the state directory, so a
restarted weftd configures its peers at once and keeps the data plane running while the
server is unreachable; the map stream reconnects with backoff in the background.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from weftnet import controlbox, tailcfg
from weftnet.endpoint import Endpoint, try_parse_endpoint
from weftnet.magicsock.conn import MagicSock
from weftnet.magicsock.conn import first_guess as choose_endpoint  # noqa: F401 (moved)
from weftnet.node import localapi
from weftnet.node.controlclient import ControlClient, ControlError, backoff_delays, dump
from weftnet.node.engine import Engine
from weftnet.node.filter import PacketFilter
from weftnet.node.state import NodeState
from weftnet.node.whois import WhoisError, whois
from weftnet.wireguard.device import SPEC_CONFIG, DeviceConfig, Peer
from weftnet.wireguard.session import REJECT_AFTER_TIME_S

log = logging.getLogger("weftd")

DEFAULT_PORT = 41641
OVERLAY_ROUTES = [
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
]
PEER_KEEPALIVE_S = 25  # keeps NAT mappings open until path discovery takes this over
NETWORK_SETTLE_S = 0.1  # wait this long after a netlink event before re-checking
UP_WAIT_S = 15.0  # `weft up` with a key waits this long for the first map


def watch_netlink(loop: asyncio.AbstractEventLoop, on_event: Callable[[], None]) -> None:
    """Thread body: call ``on_event`` on ``loop`` for every address or route change."""
    from pyroute2 import IPRoute

    wanted = {"RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWROUTE", "RTM_DELROUTE"}
    try:
        with IPRoute() as ipr:
            ipr.bind()
            while not loop.is_closed():
                for msg in ipr.get():
                    if msg.get("event") in wanted and not loop.is_closed():
                        loop.call_soon_threadsafe(on_event)
    except (OSError, RuntimeError) as e:  # the loop closed under us, or netlink went away
        log.debug("netlink watcher stopped: %s", e)


def local_endpoints(port: int, exclude_ifname: str) -> list[str]:
    """The host's own addresses with our UDP port, for peers on the same network."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            name = names.get(msg["index"])
            addr = msg.get_attr("IFA_ADDRESS")
            if not addr or name in ("lo", exclude_ifname):
                continue
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local or any(ip in n for n in OVERLAY_ROUTES):
                continue
            out.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    return out


def _ep_text(ep: tuple[str, int]) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


def parse_endpoint(text: str) -> Endpoint | None:
    return try_parse_endpoint(text)


class NodeDaemon:
    def __init__(self, args: argparse.Namespace, device_config: DeviceConfig = SPEC_CONFIG) -> None:
        self.args = args
        self.state = NodeState.load(args.state_dir)
        self.engine = Engine(
            self.state.node_private,
            args.tun,
            args.port if args.port is not None else DEFAULT_PORT,
            config=device_config,
        )
        self.engine.configure([], OVERLAY_ROUTES)
        # Nothing gets in (but replies) until a map, or the cached one, says what may.
        self.packet_filter = PacketFilter([])
        self.engine.dp.filter = self.packet_filter
        self.magic: MagicSock | None = None
        self.socket_path = args.socket or localapi.DEFAULT_SOCKET
        self.backend_state = "NeedsLogin"
        self.control: ControlClient | None = None
        self.map_task: asyncio.Task[None] | None = None
        self.login_task: asyncio.Task[None] | None = None
        self.auth_url: str | None = None
        self.last_error: str | None = None
        self.online = False  # the map stream is connected
        self.self_node: dict[str, Any] | None = None
        self.peers: dict[int, dict[str, Any]] = {}  # node id -> Node (as JSON)
        self.dns_domain: str | None = None
        self._peer_by_id: dict[int, Peer] = {}
        self._first_map = asyncio.Event()
        self._net_check: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self._first_map = asyncio.Event()
        self.engine.start()
        self.magic = MagicSock(self.engine, self.state.node_private)
        self.magic.start()
        self._watch = threading.Thread(
            target=watch_netlink, args=(loop, self._network_event), daemon=True
        )
        self._watch.start()
        server = await localapi.serve(self.socket_path, self.handle_request)
        log.info(
            "weftd up: interface %s, UDP port %d, state %s",
            self.engine.ifname,
            self.engine.listen_port,
            self.state.directory,
        )
        prefs = self.state.prefs
        if prefs.registered and prefs.login_server:
            cached = self.state.load_netmap()
            if cached and prefs.want_running:
                await self._apply(tailcfg.MapResponse.model_validate(cached), persist=False)
                log.info("applied the last network map (%d peers)", len(self.peers))
            self.control = ControlClient(self.state, prefs.login_server)
            if prefs.want_running:
                self.backend_state = "Running" if cached else "Starting"
                self._start_map_loop()
            else:
                self.backend_state = "Stopped"
        try:
            await stop.wait()
        finally:
            log.info("weftd stopping")
            for task in (self.map_task, self.login_task):
                if task is not None:
                    task.cancel()
            server.close()
            await localapi.cleanup(self.socket_path)
            if self.magic is not None:
                await self.magic.close()
            if self.control is not None:
                await self.control.close()
            self.engine.close()

    def _network_event(self) -> None:
        """A netlink address/route event (debounced): re-check our endpoints."""
        if self._net_check is not None and not self._net_check.done():
            return
        self._net_check = asyncio.ensure_future(self._check_network())

    async def _check_network(self) -> None:
        await asyncio.sleep(NETWORK_SETTLE_S)  # let a burst of events settle
        loop = asyncio.get_running_loop()
        eps = await loop.run_in_executor(
            None, local_endpoints, self.engine.listen_port, self.engine.ifname
        )
        if self.magic is not None:
            self.magic.network_changed([ep for e in eps if (ep := parse_endpoint(e))])

    # -- the local API ----------------------------------------------------------------

    async def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, "result": self.status()}
        if cmd == "up":
            return await self.up(req)
        if cmd == "down":
            return await self.down()
        if cmd == "logout":
            return await self.logout()
        if cmd == "ip":
            return {"ok": True, "result": [str(a.ip) for a in self.engine.addresses]}
        if cmd == "ping":
            return await self.disco_ping(str(req.get("target", "")), float(req.get("timeout", 2)))
        if cmd == "netcheck":
            return await self.netcheck()
        if cmd == "whois":
            try:
                found = whois(self.self_node, self.peers.values(), str(req.get("ip", "")))
            except WhoisError as e:
                return {"ok": False, "error": str(e)}
            return {"ok": True, "result": found}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def up(self, req: dict[str, Any]) -> dict[str, Any]:
        server = req.get("login_server") or self.state.prefs.login_server
        if not server:
            return {"ok": False, "error": "no coordination server: pass --login-server URL"}
        if not str(server).startswith(("http://", "https://")):
            return {"ok": False, "error": f"--login-server must be an http(s) URL, not {server!r}"}
        hostname = req.get("hostname") or self.state.prefs.hostname or socket.gethostname()
        auth_key = req.get("auth_key")
        prefs = self.state.prefs
        other = prefs.login_server and prefs.login_server.rstrip("/") != server.rstrip("/")
        if other and prefs.registered:
            return {
                "ok": False,
                "error": f"logged in to {prefs.login_server}: run `weft logout` first",
            }
        if self.control is None or self.control.url != server.rstrip("/"):
            if self.control is not None:
                await self.control.close()
            self.control = ControlClient(self.state, server)
        prefs.login_server = server.rstrip("/")
        prefs.hostname = hostname
        if prefs.registered and not auth_key:
            prefs.want_running = True
            self.state.save_prefs()
            self._start_map_loop()
            return await self._wait_running()
        try:
            resp = await self.control.register(auth_key=auth_key, hostname=hostname)
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        if resp.error:
            return {"ok": False, "error": resp.error}
        if resp.machine_authorized:
            self._logged_in()
            return await self._wait_running()
        if resp.auth_url:
            self.auth_url = resp.auth_url
            self.backend_state = "NeedsLogin"
            if self.login_task is not None:
                self.login_task.cancel()
            self.login_task = asyncio.create_task(self._wait_login(resp.auth_url, hostname))
            return {"ok": True, "result": {"state": "NeedsLogin", "auth_url": resp.auth_url}}
        return {"ok": False, "error": "the server neither accepted nor offered a login"}

    def _logged_in(self) -> None:
        prefs = self.state.prefs
        prefs.registered = True
        prefs.want_running = True
        self.state.save_prefs()
        self.auth_url = None
        self.backend_state = "Starting"
        self._start_map_loop()

    async def _wait_running(self) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_map.wait(), UP_WAIT_S)
        if self.backend_state == "Running":
            return {"ok": True, "result": {"state": "Running"}}
        msg = self.last_error or "no network map from the server yet"
        return {"ok": True, "result": {"state": self.backend_state, "message": msg}}

    async def _wait_login(self, auth_url: str, hostname: str) -> None:
        assert self.control is not None
        delays = backoff_delays()
        while True:
            try:
                resp = await self.control.register(hostname=hostname, followup=auth_url)
            except ControlError as e:
                self.last_error = str(e)
                await asyncio.sleep(next(delays))
                continue
            if resp.error:
                self.last_error = resp.error
                self.backend_state = "NeedsLogin"
                return
            if resp.machine_authorized:
                self._logged_in()
                return

    def _find_peer(self, target: str) -> int | None:
        for pid, n in self.peers.items():
            ips = [a.split("/")[0] for a in n["addresses"]]
            if target in ips or target in (n.get("given_name"), n.get("name")):
                return pid
        return None

    async def disco_ping(self, target: str, timeout_s: float) -> dict[str, Any]:
        pid = self._find_peer(target)
        if pid is None or self.magic is None:
            return {"ok": False, "error": f"no peer {target!r} in the tailnet (see weft status)"}
        n = self.peers[pid]
        result = await self.magic.ping(pid, timeout_s)
        name = n.get("given_name") or n["name"]
        ip = n["addresses"][0].split("/")[0]
        if result is None:
            return {"ok": True, "result": {"peer": name, "ip": ip, "timeout": True}}
        kind, where, seconds = result
        return {
            "ok": True,
            "result": {"peer": name, "ip": ip, "path": kind, "via": where,
                       "latency_ms": round(seconds * 1000, 2)},
        }  # fmt: skip

    async def netcheck(self) -> dict[str, Any]:
        magic = self.magic
        if magic is None or not magic.stun_servers():
            return {"ok": False, "error": "no STUN servers known yet: is this node up?"}
        return await magic.netcheck()

    async def down(self) -> dict[str, Any]:
        self.state.prefs.want_running = False
        self.state.save_prefs()
        await self._stop_map_loop()
        await self._clear_network()
        self.backend_state = "Stopped"
        return {"ok": True, "result": {"state": "Stopped"}}

    async def logout(self) -> dict[str, Any]:
        if self.control is not None and self.state.prefs.registered:
            with contextlib.suppress(ControlError):
                await self.control.register(logout=True, hostname=self.state.prefs.hostname or "")
        await self._stop_map_loop()
        await self._clear_network()
        prefs = self.state.prefs
        prefs.registered = False
        prefs.want_running = False
        prefs.login_server = None
        self.state.save_prefs()
        self.state.save_netmap(None)
        self._set_filter([])
        self.engine.replace_device(self.state.rotate_node_key())
        if self.magic is not None:
            await self.magic.close()
        self.magic = MagicSock(self.engine, self.state.node_private)
        self.magic.start()
        self.backend_state = "NeedsLogin"
        return {"ok": True, "result": {"state": "NeedsLogin"}}

    # -- the map stream ---------------------------------------------------------------

    def _start_map_loop(self) -> None:
        if self.map_task is None or self.map_task.done():
            self.map_task = asyncio.create_task(self._map_loop())

    async def _stop_map_loop(self) -> None:
        if self.map_task is not None:
            self.map_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.map_task
            self.map_task = None
        self.online = False

    async def _map_loop(self) -> None:
        assert self.control is not None and self.magic is not None
        loop = asyncio.get_running_loop()
        delays = backoff_delays()
        while True:
            magic = self.magic
            home = magic.relays.home
            restart = False
            try:
                endpoints = await loop.run_in_executor(
                    None, local_endpoints, self.engine.listen_port, self.engine.ifname
                )
                magic.local_endpoints = [ep for e in endpoints if (ep := parse_endpoint(e))]
                reported = magic.endpoints()
                magic.published_endpoints = reported
                magic.endpoints_changed.clear()
                hostname = self.state.prefs.hostname or socket.gethostname()
                stream = self.control.map_stream(
                    [_ep_text(ep) for ep in reported],
                    hostname,
                    disco_key=magic.disco_key_text,
                    home_relay=home,
                )
                try:
                    while True:
                        resp = await self._next_or_change(stream, magic.endpoints_changed)
                        if resp is None:
                            restart = magic.endpoints_changed.is_set()
                            break  # the stream ended, or STUN found a new public address
                        if not self.online:
                            self.online = True
                            delays = backoff_delays()
                            log.info("connected to %s", self.control.url)
                        if resp.error:
                            await self._server_said_no(resp.error)
                            return
                        if resp.keepalive:
                            continue
                        if resp.relay_map is not None:
                            await magic.relays.update(resp.relay_map)
                            if await magic.relays.measure() != home:
                                restart = True  # tell the server (so our peers) our home
                        await self._apply(resp)
                        if restart:
                            break
                finally:
                    await stream.aclose()
            except ControlError as e:
                self.last_error = str(e)
                log.warning("%s", e)
            if restart:
                continue
            self.online = False
            await asyncio.sleep(next(delays))

    @staticmethod
    async def _next_or_change(
        stream: AsyncGenerator[tailcfg.MapResponse, None], changed: asyncio.Event
    ) -> tailcfg.MapResponse | None:
        """The next frame, or None when the stream ends or ``changed`` is set first."""
        nxt = asyncio.ensure_future(anext(stream))
        # However this ends (even cancelled from outside), the frame's outcome is consumed.
        nxt.add_done_callback(lambda f: f.cancelled() or f.exception())
        chg = asyncio.ensure_future(changed.wait())
        try:
            done, _ = await asyncio.wait({nxt, chg}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            chg.cancel()
            if not nxt.done():
                nxt.cancel()
        if nxt not in done:
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, ControlError):
                await nxt
            return None
        try:
            return nxt.result()
        except StopAsyncIteration:
            return None

    async def _server_said_no(self, error: str) -> None:
        log.warning("the coordination server says: %s", error)
        self.last_error = error
        self.online = False
        await self._clear_network()
        self.state.prefs.registered = False
        self.state.save_prefs()
        self.state.save_netmap(None)
        self._set_filter([])
        self.backend_state = "NeedsLogin"

    async def _clear_network(self) -> None:
        for pid in list(self._peer_by_id):
            self._remove_peer(pid)
        self.peers.clear()
        self.self_node = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.update_addresses, [])

    # -- applying a map ---------------------------------------------------------------

    async def _apply(self, resp: tailcfg.MapResponse, persist: bool = True) -> None:
        if resp.node is not None:
            new_self = dump(resp.node)
            if self.self_node is None or new_self["addresses"] != self.self_node["addresses"]:
                addrs = [ipaddress.ip_interface(a) for a in new_self["addresses"]]
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.engine.update_addresses, addrs)
            self.self_node = new_self
        if resp.dns_domain is not None:
            self.dns_domain = resp.dns_domain
        if resp.peers is not None:
            self.peers = {n.id: dump(n) for n in resp.peers}
        for n in resp.peers_changed:
            self.peers[n.id] = dump(n)
        for pid in resp.peers_removed:
            self.peers.pop(pid, None)
        if resp.packet_filter is not None:
            self._set_filter(resp.packet_filter)
        self._reconcile()
        if persist:
            self.state.save_netmap(
                {
                    "node": self.self_node,
                    "peers": list(self.peers.values()),
                    "dns_domain": self.dns_domain,
                    "packet_filter": [dump(r) for r in self.packet_filter.rules],
                }
            )
        if self.self_node is not None and self.self_node.get("expired"):
            self.backend_state = "NeedsLogin"
            self.last_error = "this node's key has expired: run `weft up` to log in again"
        elif self.state.prefs.want_running:
            self.backend_state = "Running"
            self._first_map.set()

    def _set_filter(self, rules: list[tailcfg.FilterRule]) -> None:
        """New rules from the next packet on (flows this node started keep going)."""
        if rules == self.packet_filter.rules:
            return  # a full map after a reconnect: keep the cached verdicts
        self.packet_filter.set_rules(rules)
        if self.packet_filter.ignored:
            log.warning("packet filter: ignored bad CIDRs %s", self.packet_filter.ignored)
        log.info("packet filter: %d rule(s)", len(rules))

    def _remove_peer(self, pid: int) -> None:
        peer = self._peer_by_id.pop(pid, None)
        if self.magic is not None:
            self.magic.remove_peer(pid)
        if peer is not None:
            self.engine.device.remove_peer(peer.public_key)

    def _reconcile(self) -> None:
        """Make the device's peers exactly the map's (expired ones left out)."""
        device = self.engine.device
        now = time.monotonic()
        wanted = {
            pid: n
            for pid, n in self.peers.items()
            if not n.get("expired") and (self.self_node is None or pid != self.self_node["id"])
        }
        if self.self_node is not None and self.self_node.get("expired"):
            wanted = {}
        for pid in list(self._peer_by_id):
            if pid not in wanted:
                self._remove_peer(pid)
        transmits = []
        for pid, n in wanted.items():
            try:
                key = controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, n["node_key"])
            except ValueError:
                log.warning("peer %s has a malformed node key; ignored", n.get("name"))
                continue
            peer = self._peer_by_id.get(pid)
            if peer is not None and peer.public_key != key:
                self._remove_peer(pid)  # the peer logged in again with a new node key
                peer = None
            mine = (self.self_node or {}).get("endpoints") or []
            if peer is None:
                if key == device.identity.public_key or key in device.peers:
                    continue
                peer = device.add_peer(
                    key, n["allowed_ips"], persistent_keepalive_s=PEER_KEEPALIVE_S
                )
                self._peer_by_id[pid] = peer
                if self.magic is not None:
                    self.magic.set_peer(tailcfg.Node.model_validate(n), peer, mine)
                # Speak first: a node behind NAT opens its mapping, and the peer learns it.
                transmits += device.send_keepalive(peer, now)
                continue
            device.set_allowed_ips(peer, n["allowed_ips"])
            if self.magic is not None:
                self.magic.set_peer(tailcfg.Node.model_validate(n), peer, mine)
        self.engine.dp.config_changed()
        if transmits:
            self.engine.dp.send_transmits(transmits)
        self.engine.rearm()

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        wall = time.time()
        peers = []
        for pid, n in sorted(self.peers.items()):
            peer = self._peer_by_id.get(pid)
            last = peer.last_handshake_at if peer else None
            fresh = last is not None and now - last < REJECT_AFTER_TIME_S
            kind, endpoint, relay = (
                self.magic.path_of(pid) if self.magic is not None else ("none", None, None)
            )
            if not fresh:
                kind = "none"  # no working session: nothing flows on any path yet
            peers.append(
                {
                    "id": pid,
                    "hostname": n["given_name"] or n["name"],
                    "ips": [a.split("/")[0] for a in n["addresses"]],
                    "online": n.get("online", False),
                    "path": kind,
                    "endpoint": endpoint,
                    "relay": relay,
                    "home_relay": n.get("home_relay"),
                    "rx_bytes": peer.rx_bytes if peer else 0,
                    "tx_bytes": peer.tx_bytes if peer else 0,
                    "last_handshake": None if last is None else wall - (now - last),
                    "expired": n.get("expired", False),
                }
            )
        me = self.self_node or {}
        return {
            "backend_state": self.backend_state,
            "auth_url": self.auth_url,
            "error": self.last_error if self.backend_state != "Running" else None,
            "self": {
                "hostname": me.get("given_name") or self.state.prefs.hostname,
                "ips": [str(a.ip) for a in self.engine.addresses],
                "online": self.online,
                "login_server": self.state.prefs.login_server,
            },
            "peers": peers,
            "dns_domain": self.dns_domain,
            "home_relay": self.magic.relays.home if self.magic is not None else None,
            "relay_latency_ms": {
                k: round(v * 1000, 2)
                for k, v in (self.magic.relays.latency.items() if self.magic else [])
            },
            "packet_filter_rules": len(self.packet_filter.rules),
            "counters": localapi.counters(self.engine),
        }
