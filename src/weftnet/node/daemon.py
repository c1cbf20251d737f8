"""weftd as a tailnet node: logs in to a coordination server and follows its map.

The parts, each in its own module: ``backend`` (the state machine: NeedsLogin, Stopped,
Starting, Running), ``mapstream`` (the supervised map stream and what a refusal means),
``mapsession`` (frames folded into a NetworkMap), ``reconcile`` and ``peers`` (the
device's peers made the map's), ``netmon`` (netlink and local endpoints),
``supervisor`` (every long-running task restarted on failure) and ``status`` (what
`weft status` shows). This module wires them and answers the local API (docs/node.md).

The node key is the WireGuard key. The last map is kept in the state directory, so a
restarted weftd configures its peers at once and keeps the data plane running while the
server is unreachable; the map stream reconnects with backoff in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from weftnet import serverkey, tailcfg, tls
from weftnet.dns.osconfig import NodeDNSState
from weftnet.endpoint import Endpoint
from weftnet.magicsock.conn import MagicSock
from weftnet.node import localapi, netmon, platform, routeprefs
from weftnet.node.api import Answer, NodeApi, error, ok
from weftnet.node.backend import Backend, State
from weftnet.node.config import NodeConfig
from weftnet.node.controlclient import (
    ControlClient,
    ControlError,
    backoff_delays,
    parse_login_servers,
)
from weftnet.node.dnsserver import DnsServer, Listen
from weftnet.node.filter import PacketFilter
from weftnet.node.localnets import LocalDestinations
from weftnet.node.mapsession import MapSession
from weftnet.node.mapstream import MapStream
from weftnet.node.metrics import NodeMetrics
from weftnet.node.peers import PeerTable
from weftnet.node.reconcile import Routes
from weftnet.node.routeplan import Desired
from weftnet.node.routeprefs import RoutePrefError
from weftnet.node.state import NodeState
from weftnet.node.supervisor import Supervisor
from weftnet.node.trust import ServerTrust, parse_server_key
from weftnet.portmap.mapper import PortMapper

log = logging.getLogger("weftd")

DEFAULT_PORT = 41641
UP_WAIT_S = 15.0  # `weft up` waits this long for the state to change
# The route flags of `weft up` and `weft set` (docs/routes.md), as prefs and request keys.
ROUTE_PREFS = (
    "advertise_routes",
    "advertise_exit_node",
    "accept_routes",
    "exit_node",
    "exit_node_allow_lan_access",
    "snat_subnet_routes",
)


def login_trust(req: dict[str, Any]) -> tuple[str | None, ServerTrust]:
    """The auth key to send (without its server fingerprint) and what verifies the
    server's key, from a `weft up` request; ValueError for a malformed --server-key."""
    auth_key, fingerprint = None, None
    if req.get("auth_key"):
        auth_key, fingerprint = serverkey.split_auth_key(str(req["auth_key"]))
    key_text = req.get("server_key")
    return auth_key, ServerTrust(
        server_key=parse_server_key(str(key_text)) if key_text else None,
        fingerprint=fingerprint,
        allow_insecure_http=bool(req.get("allow_insecure_http")),
    )


class NodeDaemon:
    def __init__(
        self,
        config: NodeConfig,
        engine_factory: Callable[..., Any] | None = None,  # None: the platform's device
        control_factory: Callable[[NodeState, str], Any] | None = None,
        local_endpoints: Callable[[int, str], list[Endpoint]] | None = None,
        watch_netlink: bool = True,  # watch the host's addresses (roaming)
        dns_listen: list[Listen] | None = None,  # None: the service addresses, port 53
        routes: Any = None,  # None: the platform's (a routing.RouteManager on Linux)
        plat: platform.Platform | None = None,  # None: the one for config.tun
    ) -> None:
        self.config = config
        self.platform = plat if plat is not None else platform.for_tun(config.tun)
        self.userspace = platform.is_userspace(config.tun)
        self.state = NodeState.load(config.state_dir)
        port = DEFAULT_PORT if config.port is None else config.port
        make_engine = engine_factory or self.platform.make_engine
        self.engine = make_engine(self.state.node_private, config.tun, port, config=config.device)
        self.engine.configure([], netmon.OVERLAY_ROUTES)
        # Nothing gets in (but replies) until a map, or the cached one, says what may.
        self.packet_filter = PacketFilter([])
        self.engine.dp.filter = self.packet_filter
        self.supervisor = Supervisor()
        self.backend = Backend()
        self.session = MapSession()
        self.peers = PeerTable(self.engine)
        # Subnet routes and exit nodes in the kernel (docs/routes.md): see "Routes" below.
        self.routes = routes if routes is not None else self.platform.route_manager()
        self.lan: tuple[str, ...] = ()  # the underlay networks this host is on
        # The resolver at 100.100.100.100 (docs/dns.md): the first map starts it. In
        # userspace mode it listens nowhere and answers the proxies in-process.
        self.dns = DnsServer(
            self.engine,
            self.supervisor,
            listen=dns_listen,
            serve_sockets=self.platform.dns_sockets or dns_listen is not None,
        )
        self.magic: MagicSock | None = None
        self.control: Any = None  # a ControlClient once a login server is known
        self.stream: MapStream | None = None
        self._control_factory = control_factory or functools.partial(
            ControlClient, tls_ca=config.tls_ca
        )
        self._endpoints_of = local_endpoints or self.platform.local_endpoints
        self._watch_netlink = watch_netlink
        # OS DNS (resolv.conf or systemd-resolved): see "OS DNS" below.
        self.osdns = self.platform.os_dns(
            config.state_dir,
            self.engine.ifname,
            config.dns_mode,
            config.resolv_conf,
            self._dns_base_resolvers,
        )
        # Userspace mode: the SOCKS5/HTTP proxies and incoming forwarding (node.proxy).
        self.services: Any = None
        self.metrics = NodeMetrics(self.engine, lambda: self.magic)
        # Port mapping on the NAT router (weftnet.portmap): runs while the node is up.
        self.portmap = (
            PortMapper(lambda: self.engine.listen_port, self._portmapped,
                       lease_s=config.port_map_lease_s)
            if config.port_mapping
            else None
        )  # fmt: skip

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        # Before the control client's first request: a crash may have left our
        # resolv.conf behind, and the login server's name must resolve the OS's way.
        self.osdns.recover()
        # What a crashed weftd left (rules, table 52, table inet weftd): removed, and put
        # back by the cached map below.
        await asyncio.get_running_loop().run_in_executor(None, self.routes.cleanup)
        self.supervisor.spawn("osdns", self.osdns.watch)
        self.engine.start()
        self._new_magic()
        if self._watch_netlink:
            watcher = self.platform.network_watcher(
                netmon.Debounced(self._local_endpoints, self._network_changed).event
            )
            self.supervisor.spawn("netmon", watcher.run)
        if self.userspace and hasattr(self.engine, "net"):
            from weftnet.node.proxy.services import UserspaceServices

            self.services = UserspaceServices(
                self.config,
                self.engine.net,
                self.resolve_name,
                self.routable,
                lambda: [str(a.ip) for a in self.engine.addresses],
            )
            await self.services.start()
        prefs = self.state.prefs
        registered = prefs.registered and bool(prefs.login_server)
        cached = self.state.load_netmap() if registered and prefs.want_running else None
        if registered:
            await self._use_server(str(prefs.login_server))
            if cached:
                await self._apply(tailcfg.MapResponse.model_validate(cached), persist=False)
                log.info("applied the last network map (%d peers)", len(self.peers.by_id))
            if prefs.want_running:
                self._start_map()
        self.backend.restored(registered, prefs.want_running, cached is not None)

    async def run(self) -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        metrics = await self.metrics.listen(self.config.metrics_listen)  # a taken port: stop
        await self.start()
        path = self.config.socket or localapi.default_socket()
        server = await localapi.serve(path, localapi.make_handler(NodeApi(self)))
        log.info("weftd up: %s, UDP port %d, state %s, local API %s",
                 self.mode_text(), self.engine.listen_port, self.state.directory,
                 path)  # fmt: skip
        try:
            await stop.wait()
        finally:
            log.info("weftd stopping")
            server.close()
            if metrics is not None:
                metrics.close()
            await localapi.cleanup(path)
            await self.close()

    def resolve_name(self, name: str) -> list[str]:
        """The tailnet addresses of MagicDNS ``name`` from the node's own resolver data
        (IPv4 first); [] when the name is not the tailnet's."""
        from weftnet.node.proxy.resolve import tailnet_addresses

        return tailnet_addresses(self.dns.resolver.table, name)

    def routable(self, ip: str) -> bool:
        """Whether a peer's allowed IPs cover ``ip`` (the proxies go nowhere else)."""
        packed = ipaddress.ip_address(ip).packed
        return self.engine.device.allowed_ips.lookup(packed) is not None

    async def close(self) -> None:
        await self._stop_port_mapping()
        if self.services is not None:
            await self.services.close()
        if self.magic is not None:
            await self.magic.close()  # its loop ends by itself before the supervisor stops
        await self.supervisor.close()
        await self._os_dns_off("weftd exiting")  # after the map and the watch stopped
        await self._routes_off()
        if self.control is not None:
            await self.control.close()
        self.engine.close()

    def _new_magic(self) -> None:
        old = self.magic
        self.magic = MagicSock(
            self.engine,
            self.state.node_private,
            self.supervisor.spawn,
            tls_context=tls.client_context(self.config.tls_ca),
        )
        if old is not None:  # a counter that only grows (metrics), across re-logins
            self.magic.path_changes = old.path_changes
        if self.portmap is not None and self.portmap.mapping is not None:
            self.magic.set_portmapped(self.portmap.mapping.external)
        self.magic.start()

    async def _use_server(self, url: str) -> None:
        if self.control is None or self.control.login_server != url:
            if self.control is not None:
                await self.control.close()
            self.control = self._control_factory(self.state, url)

    async def _local_endpoints(self) -> list[Endpoint]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, self._endpoints_of, self.engine.listen_port, self.engine.ifname
        )

    def _network_changed(self, eps: list[Endpoint]) -> None:
        if self.portmap is not None and (self.magic is None or eps != self.magic.local_endpoints):
            self.portmap.network_changed()
        if self.magic is not None:
            self.magic.network_changed([ep for ep in eps])  # (list is invariant)

    def _portmapped(self, ep: Endpoint | None) -> None:
        if self.magic is not None:
            self.magic.set_portmapped(ep)

    async def _stop_port_mapping(self) -> None:
        """No mapping left on the gateway: `weft down`, logout, shutdown."""
        if self.portmap is not None:
            await self.supervisor.stop("portmap")
            await self.portmap.release()

    # -- the state changes the local API asks for (node.api) ---------------------------

    async def up(self, req: dict[str, Any]) -> Answer:
        prefs = self.state.prefs
        server = str(req.get("login_server") or prefs.login_server or "")
        if not server:
            return error("no coordination server: pass --login-server URL")
        try:
            server = ",".join(parse_login_servers(server))
        except ValueError as e:
            return error(str(e))
        if prefs.login_server and prefs.login_server != server and prefs.registered:
            return error(f"logged in to {prefs.login_server}: run `weft logout` first")
        try:
            auth_key, trust = login_trust(req)
        except ValueError as e:
            return error(str(e))
        try:
            advertised_changed = self._change_route_prefs(req)
        except RoutePrefError as e:
            return error(str(e))
        await self._use_server(server)
        prefs.login_server = server
        prefs.hostname = req.get("hostname") or prefs.hostname or socket.gethostname()
        if req.get("accept_dns") is not None:
            prefs.accept_dns = bool(req["accept_dns"])
        self.state.save_prefs()
        if prefs.registered and not auth_key:
            if self.backend.state is State.Running and self.supervisor.is_running("map"):
                await self._update_os_dns()  # --accept-dns may have changed
                await self._route_prefs_changed(advertised_changed)
                warning = self.forwarding_warning()
                return ok({"state": "Running", **({"warning": warning} if warning else {})})
            prefs.want_running = True
            self.state.save_prefs()
            self.backend.starting()
            return await self._wait_running(self._start_map())
        try:
            resp = await self.control.register(
                auth_key=auth_key, hostname=prefs.hostname, trust=trust
            )
        except ControlError as e:
            return error(str(e))
        if resp.error:
            return error(resp.error)
        warning = getattr(self.control, "warning", None) or self.forwarding_warning()
        if resp.machine_authorized or (resp.node is not None and not resp.auth_url):
            # Not authorized with a node: registered, waiting for the device's approval;
            # the map stream brings the approval (NeedsMachineAuth until then).
            answer = await self._wait_running(self._logged_in())
            if warning:
                answer["result"]["warning"] = warning
            return answer
        if resp.auth_url:
            url, hostname = resp.auth_url, prefs.hostname
            self.backend.login_offered(url)
            self.supervisor.spawn("login", lambda: self._wait_login(url, hostname))
            return ok({"state": "NeedsLogin", "auth_url": url, "warning": warning})
        return error("the server neither accepted nor offered a login")

    async def _wait_running(self, since: int) -> Answer:
        """The outcome of a transition started at generation ``since``."""
        state = await self.backend.wait_change(since, UP_WAIT_S)
        if state is State.Running:
            return ok({"state": "Running"})
        if state is State.NeedsMachineAuth:
            return ok({"state": state.value, "admin_url": self.admin_url()})
        why = self.backend.error or (self.stream and self.stream.last_error)
        return ok({"state": state.value, "message": why or "no network map from the server yet"})

    def _logged_in(self) -> int:
        prefs = self.state.prefs
        prefs.registered = prefs.want_running = True
        self.state.save_prefs()
        self.backend.login_approved()
        return self._start_map()

    async def _wait_login(self, auth_url: str, hostname: str) -> None:
        delays = backoff_delays()
        while True:
            try:
                resp = await self.control.register(hostname=hostname, followup=auth_url)
            except ControlError as e:
                self.backend.error = str(e)
                await asyncio.sleep(next(delays))
                continue
            if resp.error:
                self.backend.login_failed(resp.error)
            elif resp.machine_authorized or resp.node is not None:
                self._logged_in()  # (waiting for the device's approval if not authorized)
            else:
                continue  # the long poll ended without an answer: ask again
            return

    async def set(self, req: dict[str, Any]) -> Answer:
        """`weft set`: change the prefs given (the route flags, --accept-dns), keep the
        login; a running node re-applies them at once."""
        try:
            advertised_changed = self._change_route_prefs(req)
        except RoutePrefError as e:
            return error(str(e))
        if req.get("accept_dns") is not None:
            self.state.prefs.accept_dns = bool(req["accept_dns"])
            await self._update_os_dns()
        self.state.save_prefs()
        await self._route_prefs_changed(advertised_changed)
        return ok({"prefs": self.route_prefs(), "warning": self.forwarding_warning()})

    async def down(self) -> Answer:
        self.state.prefs.want_running = False
        self.state.save_prefs()
        await self._os_dns_off("weft down")
        await self._routes_off()
        await self._stop_following()
        self.backend.stopped()
        return ok({"state": "Stopped"})

    async def logout(self) -> Answer:
        prefs = self.state.prefs
        if self.control is not None and prefs.registered:
            with contextlib.suppress(ControlError):
                await self.control.register(logout=True, hostname=prefs.hostname or "")
        await self.supervisor.stop("map")  # no frame re-applies the OS's DNS after this
        await self._os_dns_off("weft logout")  # before the resolver stops
        await self._routes_off()
        await self._stop_following()
        prefs.registered = prefs.want_running = False
        prefs.login_server = None
        self.state.save_prefs()
        self._forget_map()
        self.engine.replace_device(self.state.rotate_node_key())
        if self.magic is not None:
            await self.magic.close()
        self._new_magic()
        self.backend.logged_out()
        return ok({"state": "NeedsLogin"})

    # -- the map ------------------------------------------------------------------------

    def _start_map(self) -> int:
        """Follow the map stream (again); the backend generation to wait past."""
        self.stream = MapStream(
            self.control,
            lambda: self.magic,
            lambda: self.state.prefs.hostname or socket.gethostname(),
            self._local_endpoints,
            self._apply,
            self._server_logged_out,
            lambda: routeprefs.advertised(
                self.state.prefs.advertise_routes, self.state.prefs.advertise_exit_node
            ),
        )
        self.supervisor.spawn("map", self.stream.run)
        if self.portmap is not None and not self.supervisor.is_running("portmap"):
            self.supervisor.spawn("portmap", self.portmap.run)
        return self.backend.generation

    async def _stop_following(self) -> None:
        await self.supervisor.stop("map")
        await self._stop_port_mapping()
        await self.supervisor.stop("login")
        self.peers.clear(self.magic)
        self.session = MapSession()
        await self.dns.stop()
        await self._set_addresses([])

    def _forget_map(self) -> None:
        self.state.save_netmap(None)
        self._set_filter([])

    async def _server_logged_out(self, why: str) -> None:
        await self._stop_port_mapping()
        await self._os_dns_off(f"the server says: {why}")
        await self._routes_off()
        self.peers.clear(self.magic)
        self.session = MapSession()
        await self.dns.stop()
        await self._set_addresses([])
        self.state.prefs.registered = False
        self.state.save_prefs()
        self._forget_map()
        self.backend.logged_out(why)

    async def _apply(self, resp: tailcfg.MapResponse, persist: bool = True) -> None:
        old = self.session.netmap.self_node
        nm = self.session.apply(resp)
        me = nm.self_node
        if me is not None and (old is None or old.addresses != me.addresses):
            await self._set_addresses([ipaddress.ip_interface(a) for a in me.addresses])
        if me is not None:
            served = [ip for ip in me.allowed_ips if ip not in me.addresses]
            self.engine.dp.local = LocalDestinations(me.addresses, served)
        if nm.packet_filter is not None:
            self._set_filter(nm.packet_filter)
        await self._apply_peers()
        await self.dns.apply(me, list(nm.peers.values()), nm.dns)
        if persist:
            self.state.save_netmap(nm.to_cache())
        await self._update_os_dns()
        self.backend.map_applied(nm.self_expired, nm.self_authorized)

    async def _set_addresses(self, addrs: list[Any]) -> None:
        """Exactly ``addrs`` on the interface, and the overlay routes back: the kernel
        drops an interface's IPv4 routes with its last IPv4 address (`weft down`)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.update_addresses, addrs)
        if addrs:
            await loop.run_in_executor(None, self.engine.configure, addrs, netmon.OVERLAY_ROUTES)

    def _set_filter(self, rules: list[tailcfg.FilterRule]) -> None:
        """New rules from the next packet on (flows this node started keep going)."""
        if rules == self.packet_filter.rules:
            return  # a full map after a reconnect: keep the cached verdicts
        self.packet_filter.set_rules(rules)
        if self.packet_filter.ignored:
            log.warning("packet filter: ignored bad CIDRs %s", self.packet_filter.ignored)
        log.info("packet filter: %d rule(s)", len(rules))

    # -- OS DNS (weftnet.node.osdns; docs/dns.md, "OS configuration") -------------------

    def _os_dns_state(self) -> NodeDNSState:
        prefs = self.state.prefs
        if not prefs.registered:
            return NodeDNSState.logged_out
        if self.session.netmap.self_expired:
            return NodeDNSState.expired
        return NodeDNSState.up if prefs.want_running else NodeDNSState.down

    async def _update_os_dns(self) -> None:
        """The OS's DNS made what the map and prefs say (or given back)."""
        # An OSError is logged and in Health; the next map or `weft up` tries again.
        with contextlib.suppress(OSError):
            await self.osdns.update(
                self.session.netmap.dns, self.state.prefs.accept_dns, self._os_dns_state()
            )

    async def _os_dns_off(self, why: str) -> None:
        try:
            await self.osdns.deconfigure(why)
        except OSError as e:
            log.warning("dns: could not give the OS its DNS back (%s): %s", why, e)

    def _dns_base_resolvers(self, servers: list[str]) -> None:
        """The nameservers the OS had before weftd: quad-100's fallback."""
        self.dns.set_base_resolvers(servers)

    # -- Routes (docs/routes.md): node.routeprefs checks, reconcile accepts, routing
    # -- installs ------------------------------------------------------------------------

    def _change_route_prefs(self, req: dict[str, Any]) -> bool:
        """The route flags ``req`` gives, checked together and then stored (not saved);
        whether what this node advertises changed. RoutePrefError: nothing changed."""
        prefs = self.state.prefs
        given = {k: req[k] for k in ROUTE_PREFS if req.get(k) is not None}
        routes = prefs.advertise_routes
        if "advertise_routes" in given:
            routes = routeprefs.parse_routes(given["advertise_routes"])
        exit_node = prefs.exit_node
        if "exit_node" in given:
            exit_node = str(given["exit_node"]).strip()
            nm = self.session.netmap
            if exit_node and nm.self_node is not None:  # before the first map: checked later
                chosen = routeprefs.find_exit_node(exit_node, nm.self_node, nm.peers.values())
                exit_node = routeprefs.node_ips(chosen)[0] if chosen.addresses else exit_node
        if given.get("exit_node_allow_lan_access") and not exit_node:
            raise RoutePrefError("--exit-node-allow-lan-access can only be used with --exit-node")
        before = routeprefs.advertised(prefs.advertise_routes, prefs.advertise_exit_node)
        prefs.advertise_routes = routes
        prefs.exit_node = exit_node
        for k in ("advertise_exit_node", "accept_routes", "exit_node_allow_lan_access",
                  "snat_subnet_routes"):  # fmt: skip
            if k in given:
                setattr(prefs, k, bool(given[k]))
        return before != routeprefs.advertised(prefs.advertise_routes, prefs.advertise_exit_node)

    async def _route_prefs_changed(self, advertised_changed: bool) -> None:
        if advertised_changed and self.supervisor.is_running("map"):
            self._start_map()  # a new map request carries the new Hostinfo.routable_ips
        if self.session.netmap.self_node is not None:
            await self._apply_peers()

    def route_prefs(self) -> dict[str, Any]:
        p = self.state.prefs
        return {k: getattr(p, k) for k in ROUTE_PREFS}

    async def _apply_peers(self) -> None:
        """The map's peers on the device with the routes this node accepts, then the
        kernel's routes made to match."""
        loop = asyncio.get_running_loop()
        self.lan = tuple(
            await loop.run_in_executor(None, self.routes.local_prefixes, self.engine.ifname)
        )
        prefs, nm = self.state.prefs, self.session.netmap
        exit_node = (
            routeprefs.resolve_exit_node(prefs.exit_node, nm.peers.values())
            if prefs.exit_node
            else None
        )
        self.peers.apply(
            nm,
            self.magic,
            Routes(
                accept_routes=prefs.accept_routes,
                exit_node_id=exit_node.id if exit_node is not None else None,
                local_prefixes=self.lan,
                advertised=tuple(prefs.advertise_routes),
            ),
        )
        await loop.run_in_executor(None, self.routes.apply, self._desired())

    def _desired(self) -> Desired:
        p = self.state.prefs
        return Desired(
            ifname=self.engine.ifname,
            subnet_routes=tuple(self.peers.subnet_routes),
            exit_node=bool(p.exit_node),
            exit_routes=self.peers.exit_routes,
            allow_lan=p.exit_node_allow_lan_access,
            lan_prefixes=self.lan,
            serve_routes=tuple(p.advertise_routes),
            serve_exit=p.advertise_exit_node,
            snat_subnet_routes=p.snat_subnet_routes,
        )

    async def _routes_off(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.routes.remove)

    def mode_text(self) -> str:
        """How this node reaches the tailnet, for `weft status` and the log."""
        if not self.userspace:
            return f"interface {self.engine.ifname}"
        text = "userspace networking"
        if self.services is not None and self.services.listening:
            text += "; " + "; ".join(self.services.listening)
        return text

    def admin_url(self) -> str:
        """Where an admin approves this device (the console's machines page)."""
        return f"{(self.state.prefs.login_server or '').rstrip('/')}/admin"

    def forwarding_warning(self) -> str | None:
        p = self.state.prefs
        if not p.advertise_routes and not p.advertise_exit_node:
            return None
        if self.userspace:
            return (
                "userspace networking: this node has no kernel routing, so it cannot serve"
                " the subnet routes or exit node it advertises"
            )
        v4, v6 = self.routes.forwarding()
        return routeprefs.forwarding_warning(p.advertise_routes, p.advertise_exit_node, v4, v6)

    def route_health(self) -> list[str]:
        out = self.routes.health()
        if warning := self.forwarding_warning():
            out.append(warning)
        p = self.state.prefs
        running = self.backend.state is State.Running
        if running and p.exit_node and not self.peers.exit_routes:
            out.append(
                f"exit node {p.exit_node} is not in the map or offers no exit route: internet"
                " traffic is blocked (`weft set --exit-node=` to stop using it)"
            )
        return out
