"""The name table of the node's resolver, built from the network map. Pure.

Theory of operation (research/dns-routes.md §2.6.3 "Name table"). The table is rebuilt
from scratch on every map apply; it is the map, so the policy that limits which peers a
node sees also limits which names it can resolve. With MagicDNS on:

* ``<given_name>.<domain>.`` and the bare ``<given_name>.`` name the v4 and v6
  addresses of this node and of every peer in the map; expired peers are left out, and
  with this node's own key expired there are no names at all (nothing is reachable);
* every address of a named node has a PTR to its FQDN;
* the authoritative ("local") zones are the domain, the 64 reverse zones
  ``64.100.in-addr.arpa`` .. ``127.100.in-addr.arpa`` and the ULA's reverse zone.

With or without MagicDNS: every extra record, every split route with an empty list of
resolvers (answered here, Tailscale's empty route) and every extra-record name that no
route covers (Tailscale's ``coverExtraRecords``) are authoritative too.

Names are kept lowercased, absolute ("r1.weft.internal."), so lookups are one dict get.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.reversename

from weftnet import tailcfg
from weftnet.dns import SERVICE_V4, SERVICE_V6

# The name quad-100 answers for its own addresses, both ways (Tailscale's
# magicdns.localhost-tailscale-daemon.).
SELF_NAME = "magicdns.localhost-weftd."
# The tailnet's reverse zones: 100.64.0.0/10 is 64..127 in the second octet, and the
# ULA fd7a:115c:a1e0::/48 is this nibble zone.
REVERSE_ZONES_V4 = tuple(f"{n}.100.in-addr.arpa." for n in range(64, 128))
REVERSE_ZONE_V6 = "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa."

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def absolute(name: str) -> str:
    """``name`` lowercased with exactly one trailing dot ("" and "." are the root)."""
    name = name.strip().lower().rstrip(".")
    return name + "."


def is_under(name: str, zone: str) -> bool:
    """Whether absolute ``name`` is ``zone`` or below it (both lowercased, absolute)."""
    return zone == "." or name == zone or name.endswith("." + zone)


def reverse_name(ip: IPAddress) -> str:
    """The PTR owner of ``ip``, lowercased ("1.0.64.100.in-addr.arpa.")."""
    return dns.reversename.from_address(str(ip)).to_text().lower()


@dataclass
class Host:
    """The addresses of one name: A before AAAA, each ascending (deterministic answers)."""

    v4: list[ipaddress.IPv4Address] = field(default_factory=list)
    v6: list[ipaddress.IPv6Address] = field(default_factory=list)

    def add(self, ip: IPAddress) -> None:
        family = self.v4 if isinstance(ip, ipaddress.IPv4Address) else self.v6
        if ip not in family:
            family.append(ip)  # type: ignore[arg-type]
            family.sort()


@dataclass(frozen=True)
class NameTable:
    hosts: dict[str, Host] = field(default_factory=dict)  # absolute lowercased name
    ptr: dict[str, str] = field(default_factory=dict)  # reverse name -> absolute FQDN
    zones: tuple[str, ...] = ()  # authoritative zones, most specific first
    # Names that exist without records of their own: the zones' apexes and the empty
    # non-terminals between an apex and a name in ``hosts`` (NOERROR, not NXDOMAIN).
    nodata: frozenset[str] = frozenset()

    def zone_of(self, name: str) -> str | None:
        """The most specific authoritative zone holding absolute ``name``, if any."""
        for zone in self.zones:
            if is_under(name, zone):
                return zone
        return None


def node_ips(node: tailcfg.Node) -> list[IPAddress]:
    """A node's overlay addresses ("100.64.0.1/32" -> 100.64.0.1); malformed ones skipped."""
    out: list[IPAddress] = []
    for text in node.addresses:
        try:
            out.append(ipaddress.ip_interface(text).ip)
        except ValueError:
            continue
    return out


def valid_name(name: str) -> bool:
    """Whether ``name`` makes a DNS name (labels 1..63 octets, 255 in all)."""
    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, ValueError):
        return False
    return bool(name.strip("."))


def _record_ip(rec: tailcfg.DNSRecord) -> IPAddress | None:
    """The address of an A or AAAA extra record; None for another type or a bad value."""
    try:
        ip = ipaddress.ip_address(rec.value.strip())
    except ValueError:
        return None
    kind = rec.type.upper()
    if (kind == "A" and ip.version != 4) or (kind == "AAAA" and ip.version != 6):
        return None
    return ip if kind in ("", "A", "AAAA") else None


def build(
    self_node: tailcfg.Node | None,
    peers: Iterable[tailcfg.Node],
    config: tailcfg.DNSConfig | None,
) -> NameTable:
    """The name table for a network map: this node, its peers and the DNS config."""
    hosts: dict[str, Host] = {}
    ptr: dict[str, str] = {}
    zones: set[str] = set()
    if config is None:
        return NameTable()
    domain = absolute(config.domain) if config.domain.strip(".") else ""
    if config.magic_dns and domain and valid_name(domain):
        zones.update((domain, *REVERSE_ZONES_V4, REVERSE_ZONE_V6))
        named = [] if self_node is None else [self_node]
        named += sorted((p for p in peers if not p.expired), key=lambda n: n.id)
        if self_node is not None and self_node.expired:
            named = []  # nothing is reachable: no names (as Tailscale's empty config)
        for node in named:
            label = (node.given_name or "").strip().lower()
            if not label or "." in label or not valid_name(label + domain):
                continue  # the server checks names; a bad one must not break the table
            fqdn = label + "." + domain
            for ip in node_ips(node):
                hosts.setdefault(fqdn, Host()).add(ip)
                hosts.setdefault(label + ".", Host()).add(ip)
                ptr.setdefault(reverse_name(ip), fqdn)  # the lowest id keeps an address
    empty_routes = {absolute(s) for s, ns in config.routes.items() if not ns and valid_name(s)}
    zones.update(empty_routes)
    routed = {absolute(s) for s in config.routes if valid_name(s)} | zones
    for rec in config.extra_records:
        rec_ip, name = _record_ip(rec), absolute(rec.name)
        if rec_ip is None or not valid_name(name):
            continue
        hosts.setdefault(name, Host()).add(rec_ip)
        ptr.setdefault(reverse_name(rec_ip), name)
        if not any(is_under(name, z) for z in routed):
            zones.add(name)
    # Most specific first: more labels, then by text, so zone_of is deterministic.
    ordered = tuple(sorted(zones, key=lambda z: (-z.count("."), z)))
    nodata = set(zones)
    for name in hosts:
        zone = next((z for z in ordered if is_under(name, z)), None)
        while zone is not None and name != zone:
            name = name.split(".", 1)[1]  # the parent: "a.b.c." -> "b.c."
            nodata.add(name)
    nodata.difference_update(hosts)
    return NameTable(hosts=hosts, ptr=ptr, zones=ordered, nodata=frozenset(nodata))


def service_ptr() -> dict[str, str]:
    """The PTRs of quad-100's own addresses (always answered)."""
    return {
        reverse_name(ipaddress.ip_address(SERVICE_V4)): SELF_NAME,
        reverse_name(ipaddress.ip_address(SERVICE_V6)): SELF_NAME,
    }
