"""The node's resolver ("quad-100"): a query in, a local answer or "forward to these
upstreams" out. Pure: the wire format is dnspython's, time comes in as ``now``.

Theory of operation (research/dns-routes.md §2.6.3 "Answering", §2.6.5 "forwarding").
``Resolver.handle(wire, now=, tcp=)`` decides, in this order:

1. Shorter than a header, or a response (QR=1): dropped (None), so two resolvers
   can never answer each other in a loop. Otherwise unparseable, or not exactly one
   question: FORMERR. Opcode other than QUERY: NOTIMP. Class other than IN: NOTIMP.
2. ``*.onion``: NXDOMAIN (RFC 7686).
3. ``magicdns.localhost-weftd.`` and the PTRs of the service addresses: answered.
4. PTR of an address in the table: its name. Otherwise inside an authoritative
   (reverse) zone: NXDOMAIN with SOA; outside: forwarded.
5. A name in the table: A, AAAA or ANY get the records of that family (none of that
   family: NOERROR, empty, SOA). NS, SOA, AXFR and HINFO get NOTIMP (as Tailscale);
   other types NOERROR, empty, SOA.
6. A zone apex or an empty non-terminal: NOERROR, empty, SOA (the apex's SOA query
   gets the SOA itself).
7. Any other name inside an authoritative zone: NXDOMAIN with SOA.
8. Otherwise forwarded to the most specific split route, else the default route
   (``Routes``); with no upstream at all: SERVFAIL.

Local answers set AA, RA when RD was set, echo the question, carry TTL 5 s, and their
negative answers an SOA whose TTL and MINIMUM are 10 s (RFC 2308), serial ``int(now)``.
Answers to UDP clients never exceed the client's EDNS size (at most 4096) or 512
without EDNS: a larger one is cut to what fits with TC=1 (RFC 1035 §4.2.1, RFC 6891
§7). The forwarded query is the client's own, with a new ID that ``finish`` turns back.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from weftnet import tailcfg
from weftnet.dns import DNS_PORT, SERVICE_ADDRESSES, SERVICE_V4, SERVICE_V6
from weftnet.dns.records import SELF_NAME, NameTable, absolute, is_under, service_ptr

TTL_S = 5  # positive answers: short, so a rename shows quickly (tailscale/corp#45631)
NEGATIVE_TTL_S = 10  # the SOA's TTL and MINIMUM: how long NXDOMAIN may be cached
UDP_PLAIN_MAX = 512  # a UDP answer without EDNS (RFC 1035 §4.2.1)
UDP_EDNS_MAX = 4096  # we never send more over UDP, whatever the client offers
TCP_MAX = 65535  # the 2-byte length prefix (RFC 1035 §4.2.2)
OUR_EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020)
HEADER_LEN = 12  # the DNS header: ID, flags, four counts
SOA_MNAME = dns.name.from_text(SELF_NAME)
SOA_RNAME = dns.name.from_text("hostmaster.localhost-weftd.")
NOTIMP_TYPES = frozenset(
    {dns.rdatatype.NS, dns.rdatatype.SOA, dns.rdatatype.AXFR, dns.rdatatype.HINFO}
)
_SERVICE_PTR = service_ptr()
_ID = struct.Struct("!H")


@dataclass(frozen=True)
class Upstream:
    """A nameserver to forward to."""

    ip: str  # canonical text (no brackets, no scope)
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_upstream(text: str) -> Upstream | None:
    """``198.18.7.53``, ``198.18.7.53:5353``, ``fd00::1`` or ``[fd00::1]:53``; None when
    malformed, and for a service address (never forward to ourselves: a loop)."""
    text = text.strip()
    host, port = text, DNS_PORT
    try:
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    return None
                port = int(rest[1:])
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536 or str(ip) in SERVICE_ADDRESSES:
        return None
    return Upstream(str(ip), port)


def parse_nameservers(resolv_conf: str) -> list[str]:
    """The ``nameserver`` lines of a resolv.conf, without the service addresses (a file
    weftd wrote names quad-100 itself: forwarding there would loop, tailscale 7816)."""
    out = []
    for line in resolv_conf.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            up = parse_upstream(words[1])
            if up is not None and up.ip not in out:
                out.append(up.ip)
    return out


def _upstreams(texts: Iterable[str]) -> tuple[Upstream, ...]:
    out: list[Upstream] = []
    for text in texts:
        up = parse_upstream(text)
        if up is not None and up not in out:
            out.append(up)
    return tuple(out)


@dataclass(frozen=True)
class Routes:
    """Where names not answered here go: split routes (suffix -> upstreams, most
    specific first) and the default route "."."""

    split: tuple[tuple[str, tuple[Upstream, ...]], ...] = ()
    default: tuple[Upstream, ...] = ()

    def pick(self, name: str) -> tuple[Upstream, ...]:
        for suffix, ups in self.split:
            if is_under(name, suffix):
                return ups
        return self.default


def routes_for(config: tailcfg.DNSConfig | None, base: Sequence[str]) -> Routes:
    """The routes of a DNS config. The default route is the config's resolvers
    ("override local DNS"), else ``base`` (what the OS had before us), else the
    config's fallback resolvers. Routes with an empty list are answered here and are
    not in ``split``; a route whose servers are all unusable forwards nowhere (SERVFAIL)
    rather than leak its names to the default route."""
    if config is None:
        return Routes(default=_upstreams(base))
    split = []
    for suffix, servers in config.routes.items():
        if servers:
            split.append((absolute(suffix), _upstreams(r.addr for r in servers)))
    split.sort(key=lambda item: (-item[0].count("."), item[0]))
    default = (
        _upstreams(r.addr for r in config.resolvers)
        or _upstreams(base)
        or _upstreams(r.addr for r in config.fallback_resolvers)
    )
    return Routes(split=tuple(split), default=default)


@dataclass(frozen=True)
class Answer:
    """Send ``wire`` back to the client."""

    wire: bytes
    rcode: int
    truncated: bool = False
    local: bool = True  # answered here (False: an upstream's answer, passed on)


@dataclass(frozen=True)
class Forward:
    """Ask ``upstreams`` (raced); hand their answer to ``Resolver.finish``."""

    query: dns.message.Message = field(compare=False)
    wire: bytes  # the client's query as received
    upstreams: tuple[Upstream, ...]
    limit: int  # the largest answer the client takes

    def query_with_id(self, new_id: int) -> bytes:
        """The query to send upstream, under our own ID."""
        return _ID.pack(new_id) + self.wire[2:]

    def is_answer(self, wire: bytes, sent_id: int) -> bool:
        """Whether ``wire`` is an answer to this query sent with ``sent_id``."""
        if len(wire) < HEADER_LEN or _ID.unpack_from(wire)[0] != sent_id:
            return False
        try:
            r = dns.message.from_wire(wire, question_only=True)
        except Exception:  # anything unparseable is not an answer
            return False
        return bool(r.flags & dns.flags.QR) and _same_question(r, self.query)


def _same_question(a: dns.message.Message, b: dns.message.Message) -> bool:
    if len(a.question) != len(b.question):
        return False
    return all(
        x.name == y.name and x.rdtype == y.rdtype and x.rdclass == y.rdclass
        for x, y in zip(a.question, b.question, strict=True)
    )


def rcode_of(wire: bytes) -> int:
    """The (header) rcode of a message at least HEADER_LEN long."""
    return wire[3] & 0x0F


def is_truncated(wire: bytes) -> bool:
    return len(wire) >= HEADER_LEN and bool(wire[2] & 0x02)  # TC is bit 9 of the flags


def client_limit(query: dns.message.Message, tcp: bool) -> int:
    """The largest answer this client takes (RFC 6891 §6.2.5: at least 512)."""
    if tcp:
        return TCP_MAX
    if query.edns >= 0:
        return max(UDP_PLAIN_MAX, min(query.payload, UDP_EDNS_MAX))
    return UDP_PLAIN_MAX


class Resolver:
    def __init__(self, table: NameTable | None = None, routes: Routes | None = None) -> None:
        self.table = table or NameTable()
        self.routes = routes or Routes()

    # -- deciding ------------------------------------------------------------------------

    def handle(self, wire: bytes, *, now: float, tcp: bool) -> Answer | Forward | None:
        """The answer to one query, or where to forward it; None: drop it silently."""
        if len(wire) < HEADER_LEN or wire[2] & 0x80:  # QR: a response, not a query
            return None
        try:
            q = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many kinds; all mean a malformed query
            return self._formerr(wire)
        if q.opcode() != dns.opcode.QUERY:
            return self._render(q, dns.rcode.NOTIMP, tcp)
        if len(q.question) != 1:
            return self._render(q, dns.rcode.FORMERR, tcp)
        question = q.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return self._render(q, dns.rcode.NOTIMP, tcp)
        name = question.name.to_text().lower()
        rdtype = question.rdtype
        if name == "onion." or name.endswith(".onion."):
            return self._render(q, dns.rcode.NXDOMAIN, tcp)
        if name == SELF_NAME:
            return self._host(q, [SERVICE_V4], [SERVICE_V6], name, now, tcp)
        table = self.table
        if rdtype == dns.rdatatype.PTR:
            target = _SERVICE_PTR.get(name) or table.ptr.get(name)
            if target is not None:
                rr = dns.rrset.from_text(question.name, TTL_S, "IN", "PTR", target)
                return self._render(q, dns.rcode.NOERROR, tcp, answer=[rr])
        host = table.hosts.get(name)
        if host is not None:
            zone = table.zone_of(name) or name
            return self._host(q, host.v4, host.v6, zone, now, tcp)
        if name in table.nodata:
            apex = table.zone_of(name) or name
            if rdtype == dns.rdatatype.SOA and name == apex:
                return self._render(q, dns.rcode.NOERROR, tcp, answer=[_soa(name, now)])
            return self._render(q, dns.rcode.NOERROR, tcp, authority=[_soa(apex, now)])
        enclosing = table.zone_of(name)
        if enclosing is not None:
            return self._render(q, dns.rcode.NXDOMAIN, tcp, authority=[_soa(enclosing, now)])
        upstreams = self.routes.pick(name)
        if not upstreams:
            return self._render(q, dns.rcode.SERVFAIL, tcp, aa=False)
        return Forward(q, wire, upstreams, client_limit(q, tcp))

    def _host(
        self,
        q: dns.message.Message,
        v4: Sequence[object],
        v6: Sequence[object],
        zone: str,
        now: float,
        tcp: bool,
    ) -> Answer:
        question = q.question[0]
        rdtype = question.rdtype
        if rdtype in NOTIMP_TYPES:
            return self._render(q, dns.rcode.NOTIMP, tcp)
        answer = []
        if rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and v4:
            answer.append(_addresses(question.name, "A", v4))
        if rdtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY) and v6:
            answer.append(_addresses(question.name, "AAAA", v6))
        if answer:
            return self._render(q, dns.rcode.NOERROR, tcp, answer=answer)
        return self._render(q, dns.rcode.NOERROR, tcp, authority=[_soa(zone, now)])

    # -- forwarding ----------------------------------------------------------------------

    def finish(self, fwd: Forward, wire: bytes) -> Answer:
        """An upstream's answer (to ``fwd.query_with_id``) made the client's: its ID
        back, and cut to what the client takes."""
        wire = fwd.wire[:2] + wire[2:]
        if len(wire) <= fwd.limit:
            return Answer(wire, rcode_of(wire), is_truncated(wire), local=False)
        try:
            r = dns.message.from_wire(wire)
            cut = r.to_wire(max_size=fwd.limit, prefer_truncation=True, want_shuffle=False)
        except Exception:  # an upstream's answer we cannot re-render: the client retries
            return self.servfail(fwd)
        return Answer(cut, rcode_of(cut), True, local=False)

    def servfail(self, fwd: Forward) -> Answer:
        """The answer when no upstream answered in time (or none could be asked)."""
        return self._render(fwd.query, dns.rcode.SERVFAIL, fwd.limit == TCP_MAX, aa=False)

    # -- rendering -----------------------------------------------------------------------

    def _render(
        self,
        q: dns.message.Message,
        rcode: int,
        tcp: bool,
        answer: Sequence[dns.rrset.RRset] = (),
        authority: Sequence[dns.rrset.RRset] = (),
        aa: bool = True,
    ) -> Answer:
        rd = bool(q.flags & dns.flags.RD)
        r = dns.message.make_response(q, recursion_available=rd, our_payload=OUR_EDNS_PAYLOAD)
        if aa:
            r.flags |= dns.flags.AA
        r.set_rcode(dns.rcode.Rcode(rcode))
        r.answer.extend(answer)
        r.authority.extend(authority)
        # want_shuffle=False: dnspython would shuffle each RRset (randomness, and answers
        # that differ run to run); ours are sorted.
        wire = r.to_wire(max_size=client_limit(q, tcp), prefer_truncation=True, want_shuffle=False)
        return Answer(wire, rcode, is_truncated(wire))

    def _formerr(self, wire: bytes) -> Answer:
        """FORMERR for a query whose header parsed but the rest did not: the client's ID
        and opcode, no question (we could not read it)."""
        (qid,) = _ID.unpack_from(wire)
        r = dns.message.Message(id=qid)
        r.flags = dns.flags.QR | (struct.unpack_from("!H", wire, 2)[0] & 0x7900)  # opcode, RD
        r.set_rcode(dns.rcode.FORMERR)
        return Answer(r.to_wire(), dns.rcode.FORMERR)


def _addresses(name: dns.name.Name, rdtype: str, ips: Sequence[object]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(name, TTL_S, "IN", rdtype, [str(ip) for ip in ips])


def _soa(zone: str, now: float) -> dns.rrset.RRset:
    """The SOA for negative answers (RFC 2308 §3): TTL = MINIMUM = NEGATIVE_TTL_S."""
    serial = int(now) % (1 << 32)
    n = NEGATIVE_TTL_S
    text = f"{SOA_MNAME} {SOA_RNAME} {serial} {n} {n} {n} {n}"
    return dns.rrset.from_text(zone, n, "IN", "SOA", text)
