"""The DNS document: MagicDNS, nameservers, split DNS, search domains, extra records (pure).

Theory of operation: an admin writes one document in the shape of Headscale's ``dns``
settings (docs/control-protocol.md, "DNS settings"), JSON or HuJSON::

    {"magic_dns": true, "base_domain": "tail.example", "override_local_dns": false,
     "nameservers": {"global": ["198.18.0.53"], "split": {"corp.test": ["198.18.20.53"]}},
     "search_domains": ["corp.test"],
     "extra_records": [{"name": "grafana.tail.example", "type": "A", "value": "100.64.0.9"}]}

``parse`` checks every field and returns a ``DNSDocument`` in canonical form (lowercased
domains without the trailing dot, canonical addresses, duplicates dropped), or raises one
``DNSError`` whose one-line message names the offending field, e.g.
``nameservers.split["corp.test"][0]: "1.2.3" is not an IP address``. Nothing else escapes
``parse``, whatever JSON it is given (a property test holds it to that).

The tailnet's domain lives in one place, the server's ``dns_domain`` setting
(``serve --dns-domain``, default weft.internal). A document's ``base_domain`` sets it;
a document without one keeps it. So ``DNSDocument.base_domain`` is None when the
document did not name one, and ``compile_config`` takes the domain in force as an
argument. ``check_domain`` refuses a domain that would swallow a name the nodes must
reach outside the tailnet (the control server's host, a relay's host): the node's
resolver answers every name under the domain itself, so such a name would stop
resolving (Headscale issues 2067, 2209, 2354).

``compile_config`` turns a document into the ``tailcfg.DNSConfig`` every node gets:
``nameservers.global`` become the default ``resolvers`` with ``override_local_dns``,
else ``fallback_resolvers``; ``split`` becomes ``routes``; the search domains get the
tailnet's domain first when MagicDNS is on (docs/research dns-routes.md 2.6.1, 2.6.2).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weftnet import tailcfg
from weftnet.control.domain import names
from weftnet.control.policy import hujson

# The node resolver's own service addresses (weftnet.dns.SERVICE_ADDRESSES; that package
# is not among the pure ones this module may import, a test keeps the two equal).
SERVICE_ADDRESSES = (
    ipaddress.ip_address("100.100.100.100"),
    ipaddress.ip_address("fd7a:115c:a1e0::53"),
)
MAX_DOCUMENT_BYTES = 1 << 20  # a document larger than 1 MiB is refused
MAX_DOMAIN = 253  # characters of a domain name in text form (RFC 1035 section 2.3.4)
MAX_NAMESERVERS = 16  # per list: global, and each split domain
MAX_SPLIT_DOMAINS = 256
MAX_SEARCH_DOMAINS = 32
MAX_EXTRA_RECORDS = 1000
RECORD_TYPES = {"A": 4, "AAAA": 6}  # record type -> the IP version of its value
MAX_SHOWN = 64  # characters of an offending value quoted in an error

KEYS = (
    "magic_dns",
    "base_domain",
    "override_local_dns",
    "nameservers",
    "search_domains",
    "extra_records",
)
# Keys a Headscale or spec-shaped document may carry that this one spells differently
# or does not support: refused with what to do instead.
HINTS = {
    "domain": 'the tailnet\'s domain is "base_domain"',
    "extra_records_path": 'not supported: put the records in "extra_records"',
}
# One label: letters, digits, hyphens inside; "_" for service names (_ldap._tcp).
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class DNSError(ValueError):
    """A DNS document refused; the message is one line naming the field."""


@dataclass(frozen=True, slots=True)
class ExtraRecord:
    name: str  # FQDN, lowercased, no trailing dot
    type: str  # "A" | "AAAA"
    value: str  # canonical IP text of that family


@dataclass(frozen=True, slots=True)
class DNSDocument:
    """A checked document in canonical form. ``base_domain`` None: keep the one in force."""

    magic_dns: bool = True
    base_domain: str | None = None
    override_local_dns: bool = False
    global_nameservers: tuple[str, ...] = ()
    split: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (suffix, nameservers), sorted
    search_domains: tuple[str, ...] = ()
    extra_records: tuple[ExtraRecord, ...] = ()

    def to_json(self, base_domain: str | None = None) -> dict[str, Any]:
        """The document in Headscale's shape; ``base_domain`` fills in a missing one."""
        domain = self.base_domain or base_domain
        out: dict[str, Any] = {"magic_dns": self.magic_dns}
        if domain is not None:
            out["base_domain"] = domain
        out["override_local_dns"] = self.override_local_dns
        out["nameservers"] = {
            "global": list(self.global_nameservers),
            "split": {suffix: list(servers) for suffix, servers in self.split},
        }
        out["search_domains"] = list(self.search_domains)
        out["extra_records"] = [
            {"name": r.name, "type": r.type, "value": r.value} for r in self.extra_records
        ]
        return out


DEFAULT_DOCUMENT = DNSDocument()  # MagicDNS on, the OS's resolvers for everything else


# -- parsing ------------------------------------------------------------------------


def loads(text: str) -> DNSDocument:
    """Parse a JSON or HuJSON document."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise DNSError(f"the DNS document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = hujson.loads(text)
    except hujson.PolicyError as e:
        raise DNSError(str(e)) from None
    return parse(value)


def document(value: object) -> DNSDocument:
    """A document given as text (JSON or HuJSON) or already decoded."""
    return loads(value) if isinstance(value, str) else parse(value)


def parse(value: object) -> DNSDocument:
    """Check a decoded document (the dict ``json.loads`` made of it)."""
    doc = _object(value, "the DNS document")
    for key in doc:
        if key not in KEYS:
            hint = HINTS.get(key, f"the keys are {', '.join(KEYS)}")
            raise DNSError(f"unknown key {_show(key)}: {hint}")
    base_domain = doc.get("base_domain")
    if base_domain is not None:
        base_domain = tailnet_domain(base_domain, "base_domain")
    nameservers = _object(doc.get("nameservers", {}), "nameservers")
    for key in nameservers:
        if key not in ("global", "split"):
            raise DNSError(f"nameservers: unknown key {_show(key)}: the keys are global, split")
    global_ns = _nameservers(nameservers.get("global", []), "nameservers.global")
    split = _split(nameservers.get("split", {}))
    override = _bool(doc.get("override_local_dns", False), "override_local_dns")
    if override and not global_ns:
        raise DNSError(
            "override_local_dns: true needs at least one nameservers.global entry,"
            " or nodes could resolve nothing outside the tailnet"
        )
    if base_domain is not None:
        check_split(split, base_domain)
    return DNSDocument(
        magic_dns=_bool(doc.get("magic_dns", True), "magic_dns"),
        base_domain=base_domain,
        override_local_dns=override,
        global_nameservers=global_ns,
        split=split,
        search_domains=_search_domains(doc.get("search_domains", [])),
        extra_records=_extra_records(doc.get("extra_records", [])),
    )


def tailnet_domain(value: object, where: str) -> str:
    """The tailnet's domain: 1-253 characters of lowercase RFC 1035 labels (as
    ``serve --dns-domain``)."""
    domain = _domain(value, where)
    if not all(names.dns_label(label) == label for label in domain.split(".")):
        raise DNSError(f"{where}: {_show(value)} is not a domain of letters, digits and hyphens")
    return domain


def check_split(split: Iterable[tuple[str, tuple[str, ...]]], base_domain: str) -> None:
    """A split domain with nameservers may not take names under the tailnet's domain:
    the node answers those itself. An empty list there (answered locally) is fine."""
    for suffix, servers in split:
        if servers and (suffix == base_domain or suffix.endswith("." + base_domain)):
            raise DNSError(
                f"nameservers.split[{_show(suffix)}]: inside the tailnet's domain"
                f" {base_domain}, whose names the nodes answer themselves"
            )


def check_domain(
    domain: str,
    server_hosts: Iterable[str],
    relay_hosts: Iterable[str] = (),
    what: str = "base_domain",
) -> None:
    """Refuse ``domain`` when it equals or contains the control server's host or a relay's
    host: nodes must resolve those outside the tailnet. IP literals never collide."""
    for hosts, whose in ((server_hosts, "the server's own"), (relay_hosts, "the relay's")):
        for host in hosts:
            name = host.strip().lower().rstrip(".")
            if name and not _is_ip(name) and (name == domain or name.endswith("." + domain)):
                raise DNSError(f"{what} {domain} would swallow {whose} name {name}")


# -- compiling ----------------------------------------------------------------------


def compile_config(doc: DNSDocument, domain: str) -> tailcfg.DNSConfig:
    """What every node gets: ``domain`` is the tailnet's domain in force (the document's
    ``base_domain`` when it has one)."""
    domain = doc.base_domain or domain
    resolvers = [tailcfg.DNSResolver(addr=a) for a in doc.global_nameservers]
    search = ([domain] if doc.magic_dns else []) + list(doc.search_domains)
    return tailcfg.DNSConfig(
        magic_dns=doc.magic_dns,
        domain=domain,
        resolvers=resolvers if doc.override_local_dns else [],
        fallback_resolvers=[] if doc.override_local_dns else resolvers,
        routes={
            suffix: [tailcfg.DNSResolver(addr=a) for a in servers] for suffix, servers in doc.split
        },
        search_domains=list(dict.fromkeys(search)),
        extra_records=[
            tailcfg.DNSRecord(name=r.name, type=r.type, value=r.value) for r in doc.extra_records
        ],
    )


# -- fields -------------------------------------------------------------------------


def _show(value: object) -> str:
    """A value quoted for an error line: JSON, ASCII only, bounded."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 4] + '..."'


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DNSError(f"{where}: must be an object {{...}}, not {_kind(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DNSError(f"{where}: must be a list [...], not {_kind(value)}")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise DNSError(f"{where}: must be true or false, not {_show(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "an object"
    )


def _domain(value: object, where: str, min_labels: int = 1) -> str:
    """A domain name, lowercased, without a trailing dot."""
    if not isinstance(value, str):
        raise DNSError(f"{where}: must be a domain name string, not {_show(value)}")
    domain = value.strip().lower()
    domain = domain[:-1] if domain.endswith(".") else domain
    labels = domain.split(".")
    if (
        not domain
        or not domain.isascii()
        or len(domain) > MAX_DOMAIN
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise DNSError(f"{where}: {_show(value)} is not a domain name")
    if len(labels) < min_labels:
        raise DNSError(f"{where}: {_show(value)} is not a fully qualified name (e.g. a.example)")
    return domain


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def nameserver(value: object, where: str) -> str:
    """A nameserver as "IP", "IP:port", "[IPv6]" or "[IPv6]:port", in canonical form.
    Not the node's own resolver, not loopback (the node's own host), not unusable
    addresses; no DNS-over-HTTPS yet."""
    if not isinstance(value, str):
        raise DNSError(f"{where}: must be an IP address string, not {_show(value)}")
    text = value.strip()
    if text.startswith(("https://", "http://", "tls://")):
        raise DNSError(f"{where}: {_show(value)}: only IP addresses are supported, no DoH or DoT")
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise DNSError(f"{where}: {_show(value)} is not an IP address (e.g. [fd00::53]:53)")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        if not host.isascii() or "%" in host:
            raise ValueError
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DNSError(f"{where}: {_show(value)} is not an IP address") from None
    if text.startswith("[") and ip.version != 6:
        raise DNSError(f"{where}: {_show(value)}: brackets are for IPv6 addresses")
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise DNSError(f"{where}: {_show(value)}: the port must be 1-65535")
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if plain in SERVICE_ADDRESSES:
        raise DNSError(f"{where}: {_show(value)} is the node's own resolver, not an upstream")
    if plain.is_loopback or plain.is_unspecified or plain.is_multicast:
        raise DNSError(
            f"{where}: {_show(value)} is a loopback, unspecified or multicast address;"
            " give the nameserver's network address"
        )
    shown = f"[{ip}]" if ip.version == 6 and port is not None else str(ip)
    return shown + (f":{int(port)}" if port is not None else "")


def _nameservers(value: object, where: str) -> tuple[str, ...]:
    items = _list(value, where)
    if len(items) > MAX_NAMESERVERS:
        raise DNSError(f"{where}: at most {MAX_NAMESERVERS} nameservers")
    out = [nameserver(item, f"{where}[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(out))


def _split(value: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    split = _object(value, "nameservers.split")
    if len(split) > MAX_SPLIT_DOMAINS:
        raise DNSError(f"nameservers.split: at most {MAX_SPLIT_DOMAINS} domains")
    out: dict[str, tuple[str, ...]] = {}
    for key, servers in split.items():
        where = f"nameservers.split[{_show(key)}]"
        suffix = _domain(key, where)
        if suffix in out:
            raise DNSError(f"{where}: {suffix} is listed twice")
        out[suffix] = _nameservers(servers, where)
    return tuple(sorted(out.items()))


def _search_domains(value: object) -> tuple[str, ...]:
    items = _list(value, "search_domains")
    if len(items) > MAX_SEARCH_DOMAINS:
        raise DNSError(f"search_domains: at most {MAX_SEARCH_DOMAINS}")
    out = [_domain(item, f"search_domains[{i}]") for i, item in enumerate(items)]
    return tuple(dict.fromkeys(out))


def _extra_records(value: object) -> tuple[ExtraRecord, ...]:
    items = _list(value, "extra_records")
    if len(items) > MAX_EXTRA_RECORDS:
        raise DNSError(f"extra_records: at most {MAX_EXTRA_RECORDS} records, not {len(items)}")
    out: list[ExtraRecord] = []
    for i, item in enumerate(items):
        where = f"extra_records[{i}]"
        record = _object(item, where)
        for key in record:
            if key not in ("name", "type", "value"):
                raise DNSError(f"{where}: unknown key {_show(key)}: the keys are name, type, value")
        if "name" not in record or "value" not in record:
            raise DNSError(f"{where}: needs a name and a value")
        name = _domain(record["name"], f"{where}.name", min_labels=2)
        raw = record["value"]
        try:
            if not isinstance(raw, str) or not raw.isascii() or "%" in raw:
                raise ValueError
            ip = ipaddress.ip_address(raw.strip())
        except ValueError:
            raise DNSError(f"{where}.value: {_show(raw)} is not an IP address") from None
        rtype = record.get("type", "A" if ip.version == 4 else "AAAA")
        if not isinstance(rtype, str) or rtype.upper() not in RECORD_TYPES:
            raise DNSError(f"{where}.type: {_show(rtype)}: only A and AAAA records are supported")
        rtype = rtype.upper()
        if RECORD_TYPES[rtype] != ip.version:
            raise DNSError(
                f"{where}.value: {_show(raw)} is not an IPv{RECORD_TYPES[rtype]} address"
                f" (type {rtype})"
            )
        out.append(ExtraRecord(name, rtype, str(ip)))
    return tuple(dict.fromkeys(out))
