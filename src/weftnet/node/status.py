"""What the local API answers about the node: `weft status`, its Health list, `weft
ping`. Built from the daemon's parts; nothing here changes them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from weftnet import fastpath, tailcfg
from weftnet.endpoint import format_endpoint
from weftnet.node import localapi, routeprefs
from weftnet.node.backend import State
from weftnet.node.mapsession import NetworkMap
from weftnet.wireguard.session import REJECT_AFTER_TIME_S

if TYPE_CHECKING:
    from weftnet.magicsock.conn import MagicSock
    from weftnet.node.daemon import NodeDaemon


def ips(n: tailcfg.Node) -> list[str]:
    return [a.split("/")[0] for a in n.addresses]


def find_peer(netmap: NetworkMap, target: str) -> tailcfg.Node | None:
    """A peer by one of its overlay addresses or its name."""
    for n in netmap.peers.values():
        if target in ips(n) or target in (n.given_name, n.name):
            return n
    return None


def health(d: NodeDaemon) -> list[str]:
    """Current problems, in words; empty when all is well."""
    out = d.supervisor.health()
    if d.backend.state in (State.Starting, State.Running) and d.stream is not None:
        out += d.stream.health(time.monotonic())
    out += [str(skip) for skip in d.peers.skipped]
    if d.magic is not None:
        out += d.magic.health()
    out += d.dns.health()
    out += d.osdns.health()
    out += d.route_health()
    return out


def exit_nodes(d: NodeDaemon) -> list[dict[str, Any]]:
    """`weft exit-node list`: the peers whose allowed IPs hold a /0 for this node."""
    chosen = d.state.prefs.exit_node
    return [
        {
            "id": n.id,
            "hostname": n.given_name or n.name,
            "ips": ips(n),
            "online": n.online,
            "selected": bool(chosen) and routeprefs.matches(n, chosen),
        }
        for _, n in sorted(d.session.netmap.peers.items())
        if routeprefs.is_exit_node(n)
    ]


def routes_status(d: NodeDaemon) -> dict[str, Any]:
    """`status` -> "routes": what this node advertises and what it installed."""
    return {
        **d.route_prefs(),
        "installed": d.peers.subnet_routes,
        "exit_routes": list(d.peers.exit_routes),
        "lan": list(d.lan),
        "forwarding": d.forwarding_warning() or "ok",
        "serving": list(d.session.netmap.self_node.primary_routes)
        if d.session.netmap.self_node is not None
        else [],
    }


def dns_status(d: NodeDaemon) -> dict[str, Any]:
    """`weft dns status`: the OS side (osdns), the server's config, the resolver."""
    out = d.osdns.status()
    out["accept_dns"] = d.state.prefs.accept_dns
    out["resolver"] = d.dns.status()
    return out


def node_status(d: NodeDaemon) -> dict[str, Any]:
    now = time.monotonic()
    wall = time.time()
    nm = d.session.netmap
    dns = nm.dns
    domain = dns.domain if dns is not None and dns.magic_dns and dns.domain else None

    def dns_name(name: str | None) -> str | None:
        """The MagicDNS name (FQDN) ``name`` answers to, if MagicDNS is on."""
        return f"{name}.{domain}" if name and domain else None

    peers = []
    for pid, n in sorted(nm.peers.items()):
        peer = d.peers.by_id.get(pid)
        last = peer.last_handshake_at if peer else None
        kind, endpoint, relay = d.magic.path_of(pid) if d.magic else ("none", None, None)
        if last is None or now - last >= REJECT_AFTER_TIME_S:
            kind = "none"  # no working session: nothing flows on any path yet
        peers.append(
            {
                "id": pid,
                "hostname": n.given_name or n.name,
                "dns_name": dns_name(n.given_name),
                "ips": ips(n),
                "online": n.online,
                "path": kind,
                "endpoint": endpoint,
                "relay": relay,
                "home_relay": n.home_relay,
                "nat_traversal": d.magic.traversal_of(pid) if d.magic else None,
                "rx_bytes": peer.rx_bytes if peer else 0,
                "tx_bytes": peer.tx_bytes if peer else 0,
                "last_handshake": None if last is None else wall - (now - last),
                "expired": n.expired,
                "primary_routes": list(n.primary_routes),
                "exit_node_option": routeprefs.is_exit_node(n),
            }
        )
    me = nm.self_node
    running = d.backend.state is State.Running
    return {
        "backend_state": d.backend.state.value,
        # "tun" or "userspace-networking", and how this node reaches the tailnet.
        "mode": getattr(d.engine, "mode", "tun"),
        "mode_text": d.mode_text(),
        "userspace": d.services.status() if d.services is not None else None,
        "auth_url": d.backend.auth_url,
        # Where an admin approves this device, while it waits (NeedsMachineAuth).
        "admin_url": d.admin_url() if d.backend.state is State.NeedsMachineAuth else None,
        "error": None if running else d.backend.error or (d.stream and d.stream.last_error),
        "health": health(d),
        "self": {
            "hostname": (me.given_name if me else None) or d.state.prefs.hostname,
            "dns_name": dns_name(me.given_name if me else None),
            "ips": [str(a.ip) for a in d.engine.addresses],
            "online": d.stream is not None and d.stream.online,
            "login_server": d.state.prefs.login_server,
            # The control URL in use (one of login_server's, with several replicas).
            "control_url": d.control.url if d.control is not None else None,
            # Who owns this node (None for a tagged node, or before the first map).
            "user": me.user.name if me is not None and me.user is not None else None,
            "endpoints": endpoints_status(d.magic) if d.magic is not None else [],
        },
        "peers": peers,
        "dns_domain": nm.dns_domain,
        "home_relay": d.magic.relays.home if d.magic else None,
        # region -> the relay of it this node is connected to (a region may be a mesh)
        "relay_servers": d.magic.relays.servers() if d.magic else {},
        "relay_latency_ms": {
            k: round(v * 1000, 2) for k, v in (d.magic.relays.latency.items() if d.magic else [])
        },
        "routes": routes_status(d),
        # The NAT router's port mapping (weftnet.portmap); None with --no-port-mapping.
        "port_mapping": d.portmap.status() if d.portmap is not None else None,
        "packet_filter_rules": len(d.packet_filter.rules),
        "counters": localapi.counters(d.engine),
        "datapath": fastpath.IMPLEMENTATION,  # "c", or "python" where the extension is not built
        "dns": d.dns.status(),
    }


def endpoints_status(magic: MagicSock) -> list[dict[str, str]]:
    """The endpoints this node publishes, each with its kind (Tailscale's endpoint
    types): "portmap" (the NAT router's mapping), "stun" (what a STUN server saw) or
    "local" (an interface address)."""
    kinds = dict.fromkeys(magic.local_endpoints, "local")
    kinds |= dict.fromkeys((m for m, _ in magic.stun_results.values()), "stun")
    if magic.portmapped is not None:
        kinds[magic.portmapped] = "portmap"
    return [
        {"endpoint": format_endpoint(ep), "type": kinds.get(ep, "local")}
        for ep in magic.published_endpoints
    ]


def ping_answer(n: tailcfg.Node, result: tuple[str, str, float] | None) -> dict[str, Any]:
    name, ip = n.given_name or n.name, ips(n)[0] if n.addresses else "?"
    if result is None:
        return {"peer": name, "ip": ip, "timeout": True}
    kind, where, seconds = result
    return {
        "peer": name,
        "ip": ip,
        "path": kind,
        "via": where,
        "latency_ms": round(seconds * 1000, 2),
    }
