"""weftnet.dns: the name table and the resolver's decisions, with golden answers
(research/dns-routes.md §2.6.3, §4.6) and Hypothesis over arbitrary bytes."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from weftnet import tailcfg
from weftnet.dns import records
from weftnet.dns.resolver import (
    Answer,
    Forward,
    Resolver,
    Upstream,
    parse_nameservers,
    parse_upstream,
    routes_for,
)
from weftnet.node.mapsession import MapSession

NOW = 1_700_000_000.0
SOA_TEXT = "10 IN SOA magicdns.localhost-weftd. hostmaster.localhost-weftd. 1700000000 10 10 10 10"


def node(i: int, name: str, expired: bool = False, v6: bool = True) -> tailcfg.Node:
    addrs = [f"100.64.0.{i}/32"] + ([f"fd7a:115c:a1e0::{i:x}/128"] if v6 else [])
    return tailcfg.Node(id=i, name=name, given_name=name, node_key="nodekey:" + "0" * 64,
                        addresses=addrs, allowed_ips=addrs, expired=expired)  # fmt: skip


CONFIG = tailcfg.DNSConfig(
    magic_dns=True,
    domain="weft.internal",
    routes={
        "corp.test": [tailcfg.DNSResolver(addr="198.18.20.53")],
        "lab.corp.test": [tailcfg.DNSResolver(addr="[fd00::53]:5353")],
        "local.test": [],
    },
    extra_records=[
        tailcfg.DNSRecord(name="grafana.weft.internal", type="A", value="100.64.0.9"),
        tailcfg.DNSRecord(name="printer.home.test", value="198.18.1.9"),
        tailcfg.DNSRecord(name="printer.home.test", value="198.18.1.8"),
        tailcfg.DNSRecord(name="v6only.home.test", type="AAAA", value="fd00::9"),
        tailcfg.DNSRecord(name="deep.x.local.test", value="198.18.1.7"),
        tailcfg.DNSRecord(name="bad.home.test", type="AAAA", value="198.18.1.6"),  # wrong family
    ],
)
ME = node(1, "a")
PEERS = [node(2, "r1"), node(3, "old", expired=True), node(4, "v4only", v6=False)]


def resolver(config: tailcfg.DNSConfig | None = CONFIG, base: list[str] | None = None) -> Resolver:
    table = records.build(ME, PEERS, config)
    return Resolver(table, routes_for(config, ["198.18.1.53"] if base is None else base))


def ask(r: Resolver, name: str, rdtype: str = "A", tcp: bool = False, **kw: object) -> Answer:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    d = r.handle(q.to_wire(), now=NOW, tcp=tcp)
    assert isinstance(d, Answer), d
    return d


def show(a: Answer) -> tuple[str, list[str], list[str], str]:
    """(rcode, answer lines, authority lines, flags) of an answer."""
    m = dns.message.from_wire(a.wire)
    lines = [line for rr in m.answer for line in rr.to_text().splitlines()]
    auth = [line for rr in m.authority for line in rr.to_text().splitlines()]
    return dns.rcode.to_text(m.rcode()), lines, auth, dns.flags.to_text(m.flags)


SOA_WEFT = f"weft.internal. {SOA_TEXT}"
SOA_REV = f"64.100.in-addr.arpa. {SOA_TEXT}"
GOLDEN = [
    ("r1.weft.internal", "A", "NOERROR", ["r1.weft.internal. 5 IN A 100.64.0.2"], []),
    ("R1.Weft.Internal.", "A", "NOERROR", ["R1.Weft.Internal. 5 IN A 100.64.0.2"], []),
    ("r1.weft.internal", "AAAA", "NOERROR", ["r1.weft.internal. 5 IN AAAA fd7a:115c:a1e0::2"], []),
    ("r1", "A", "NOERROR", ["r1. 5 IN A 100.64.0.2"], []),
    ("a.weft.internal", "A", "NOERROR", ["a.weft.internal. 5 IN A 100.64.0.1"], []),
    ("r1.weft.internal", "ANY", "NOERROR",
     ["r1.weft.internal. 5 IN A 100.64.0.2", "r1.weft.internal. 5 IN AAAA fd7a:115c:a1e0::2"], []),
    ("v4only.weft.internal", "AAAA", "NOERROR", [], [SOA_WEFT]),
    ("r1.weft.internal", "MX", "NOERROR", [], [SOA_WEFT]),
    ("r1.weft.internal", "TXT", "NOERROR", [], [SOA_WEFT]),
    ("r1", "MX", "NOERROR", [], [f"r1. {SOA_TEXT}"]),
    ("r1.weft.internal", "NS", "NOTIMP", [], []),
    ("r1.weft.internal", "SOA", "NOTIMP", [], []),
    ("r1.weft.internal", "HINFO", "NOTIMP", [], []),
    ("old.weft.internal", "A", "NXDOMAIN", [], [SOA_WEFT]),  # expired: no name
    ("nosuch.weft.internal", "A", "NXDOMAIN", [], [SOA_WEFT]),
    ("x.r1.weft.internal", "A", "NXDOMAIN", [], [SOA_WEFT]),
    ("weft.internal", "SOA", "NOERROR", [SOA_WEFT], []),
    ("weft.internal", "A", "NOERROR", [], [SOA_WEFT]),
    ("grafana.weft.internal", "A", "NOERROR", ["grafana.weft.internal. 5 IN A 100.64.0.9"], []),
    ("printer.home.test", "A", "NOERROR",
     ["printer.home.test. 5 IN A 198.18.1.8", "printer.home.test. 5 IN A 198.18.1.9"], []),
    ("printer.home.test", "AAAA", "NOERROR", [], [f"printer.home.test. {SOA_TEXT}"]),
    ("v6only.home.test", "AAAA", "NOERROR", ["v6only.home.test. 5 IN AAAA fd00::9"], []),
    ("x.printer.home.test", "A", "NXDOMAIN", [], [f"printer.home.test. {SOA_TEXT}"]),
    ("bad.home.test", "AAAA", "SERVFAIL", [], []),  # a bad record: forwarded (to no upstream)
    ("deep.x.local.test", "A", "NOERROR", ["deep.x.local.test. 5 IN A 198.18.1.7"], []),
    ("x.local.test", "A", "NOERROR", [], [f"local.test. {SOA_TEXT}"]),  # empty non-terminal
    ("nosuch.local.test", "A", "NXDOMAIN", [], [f"local.test. {SOA_TEXT}"]),
    ("2.0.64.100.in-addr.arpa", "PTR", "NOERROR",
     ["2.0.64.100.in-addr.arpa. 5 IN PTR r1.weft.internal."], []),
    ("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa", "PTR", "NOERROR",
     ["2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa. 5 IN PTR"
      " r1.weft.internal."], []),
    ("3.0.64.100.in-addr.arpa", "PTR", "NXDOMAIN", [], [SOA_REV]),  # expired peer
    ("1.250.64.100.in-addr.arpa", "PTR", "NXDOMAIN", [], [SOA_REV]),  # unassigned
    ("100.100.100.100.in-addr.arpa", "PTR", "NOERROR",
     ["100.100.100.100.in-addr.arpa. 5 IN PTR magicdns.localhost-weftd."], []),
    ("magicdns.localhost-weftd", "A", "NOERROR",
     ["magicdns.localhost-weftd. 5 IN A 100.100.100.100"], []),
    ("magicdns.localhost-weftd", "AAAA", "NOERROR",
     ["magicdns.localhost-weftd. 5 IN AAAA fd7a:115c:a1e0::53"], []),
    ("9.1.18.198.in-addr.arpa", "PTR", "NOERROR",  # an extra record's address
     ["9.1.18.198.in-addr.arpa. 5 IN PTR printer.home.test."], []),
    ("hidden.onion", "A", "NXDOMAIN", [], []),
]  # fmt: skip


@pytest.mark.parametrize(("name", "rdtype", "rcode", "answer", "authority"), GOLDEN)
def test_golden_answers(
    name: str, rdtype: str, rcode: str, answer: list[str], authority: list[str]
) -> None:
    r = resolver(base=[]) if name == "bad.home.test" else resolver()
    got = show(ask(r, name, rdtype))
    assert got[:3] == (rcode, answer, authority)
    flags = got[3].split()
    assert "QR" in flags and "RD" in flags and "RA" in flags
    assert ("AA" in flags) == (rcode != "SERVFAIL")


def test_golden_flags_without_rd_and_with_edns() -> None:
    q = dns.message.make_query("r1.weft.internal", "A", use_edns=0, payload=1400)
    q.flags &= ~dns.flags.RD
    a = Resolver(records.build(ME, PEERS, CONFIG)).handle(q.to_wire(), now=NOW, tcp=False)
    assert isinstance(a, Answer)
    m = dns.message.from_wire(a.wire)
    assert m.id == q.id and m.flags & dns.flags.AA and not m.flags & (dns.flags.RA | dns.flags.RD)
    assert m.edns == 0 and m.payload == 1232
    assert m.question[0].name == q.question[0].name


def test_forwarding_picks_the_most_specific_route() -> None:
    r = resolver()
    cases = {
        "www.example.test": (Upstream("198.18.1.53"),),
        "db.corp.test": (Upstream("198.18.20.53"),),
        "corp.test": (Upstream("198.18.20.53"),),
        "x.lab.corp.test": (Upstream("fd00::53", 5353),),
        "1.1.18.198.in-addr.arpa": (Upstream("198.18.1.53"),),  # PTR outside the tailnet
    }
    for name, ups in cases.items():
        q = dns.message.make_query(name, "PTR" if "arpa" in name else "A")
        d = r.handle(q.to_wire(), now=NOW, tcp=False)
        assert isinstance(d, Forward) and d.upstreams == ups, name
        assert d.limit == 512


def test_default_route_order_override_base_fallback() -> None:
    override = tailcfg.DNSConfig(resolvers=[tailcfg.DNSResolver(addr="198.18.0.53")],
                                 fallback_resolvers=[tailcfg.DNSResolver(addr="198.18.0.54")])  # fmt: skip
    assert routes_for(override, ["198.18.1.53"]).default == (Upstream("198.18.0.53"),)
    fallback = tailcfg.DNSConfig(fallback_resolvers=[tailcfg.DNSResolver(addr="198.18.0.54")])
    assert routes_for(fallback, ["198.18.1.53"]).default == (Upstream("198.18.1.53"),)
    assert routes_for(fallback, []).default == (Upstream("198.18.0.54"),)
    assert routes_for(None, ["198.18.1.53:5353"]).default == (Upstream("198.18.1.53", 5353),)


def test_never_forwards_to_a_service_address() -> None:
    for text in (
        "100.100.100.100",
        "100.100.100.100:53",
        "[fd7a:115c:a1e0::53]:53",
        "x",
        "1.2.3.4:0",
    ):
        assert parse_upstream(text) is None, text
    loop = tailcfg.DNSConfig(resolvers=[tailcfg.DNSResolver(addr="100.100.100.100")])
    assert routes_for(loop, ["100.100.100.100"]).default == ()
    r = Resolver(records.build(ME, PEERS, loop), routes_for(loop, []))
    assert show(ask(r, "www.example.test"))[0] == "SERVFAIL"
    conf = "# generated by weftd\nnameserver 100.100.100.100\nnameserver 198.18.1.53 # lan\n"
    assert parse_nameservers(conf + "nameserver fd00::1\nsearch x\n") == ["198.18.1.53", "fd00::1"]


def test_a_split_route_without_usable_servers_does_not_leak_to_the_default() -> None:
    cfg = tailcfg.DNSConfig(routes={"corp.test": [tailcfg.DNSResolver(addr="100.100.100.100")]})
    r = Resolver(records.build(ME, PEERS, cfg), routes_for(cfg, ["198.18.1.53"]))
    assert show(ask(r, "db.corp.test"))[0] == "SERVFAIL"


def test_magic_dns_off_keeps_only_extra_records() -> None:
    cfg = CONFIG.model_copy(update={"magic_dns": False})
    r = resolver(cfg)
    assert isinstance(r.handle(dns.message.make_query("r1.weft.internal", "A").to_wire(),
                               now=NOW, tcp=False), Forward)  # fmt: skip
    assert show(ask(r, "grafana.weft.internal"))[1] == ["grafana.weft.internal. 5 IN A 100.64.0.9"]


def test_our_own_key_expired_means_no_names() -> None:
    table = records.build(node(1, "a", expired=True), PEERS, CONFIG)
    assert "r1.weft.internal." not in table.hosts and "a." not in table.hosts


def test_a_server_sending_only_dns_domain_gets_magic_dns() -> None:
    s = MapSession()
    nm = s.apply(tailcfg.MapResponse(node=ME, peers=PEERS, dns_domain="weft.internal"))
    assert nm.dns is not None and nm.dns.magic_dns and nm.dns.domain == "weft.internal"
    nm = s.apply(tailcfg.MapResponse(dns_config=tailcfg.DNSConfig(magic_dns=False, domain="x")))
    assert nm.dns is not None and not nm.dns.magic_dns
    nm = s.apply(tailcfg.MapResponse(peers_removed=[2]))  # a delta keeps the config
    assert nm.dns_config is not None and nm.dns_config.domain == "x"
    again = MapSession().apply(tailcfg.MapResponse.model_validate(nm.to_cache()))
    assert again.dns_config == nm.dns_config


def test_malformed_and_odd_queries() -> None:
    r = resolver()
    assert r.handle(b"", now=NOW, tcp=False) is None
    assert r.handle(b"\x00" * 11, now=NOW, tcp=False) is None
    response = dns.message.make_response(dns.message.make_query("r1.weft.internal", "A"))
    assert r.handle(response.to_wire(), now=NOW, tcp=False) is None  # never answer answers
    junk = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff"
    a = r.handle(junk, now=NOW, tcp=False)
    assert isinstance(a, Answer) and a.rcode == dns.rcode.FORMERR
    assert a.wire[:2] == b"\x12\x34"
    no_question = dns.message.Message()
    assert show(r.handle(no_question.to_wire(), now=NOW, tcp=False))[0] == "FORMERR"  # type: ignore[arg-type]
    notify = dns.message.make_query("weft.internal", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert show(r.handle(notify.to_wire(), now=NOW, tcp=False))[0] == "NOTIMP"  # type: ignore[arg-type]
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    assert show(r.handle(chaos.to_wire(), now=NOW, tcp=False))[0] == "NOTIMP"  # type: ignore[arg-type]


def big_config(n: int) -> tailcfg.DNSConfig:
    recs = [tailcfg.DNSRecord(name="many.home.test", value=f"198.18.{i // 250}.{i % 250 + 1}")
            for i in range(n)]  # fmt: skip
    return CONFIG.model_copy(update={"extra_records": recs})


def test_truncation_to_512_without_edns_and_to_the_edns_size() -> None:
    r = resolver(big_config(100))  # 100 A records: 1.6 kB
    plain = ask(r, "many.home.test")
    assert len(plain.wire) <= 512 and plain.truncated
    assert "TC" in show(plain)[3]
    edns = ask(r, "many.home.test", use_edns=0, payload=1000)
    assert len(edns.wire) <= 1000 and edns.truncated
    whole = ask(r, "many.home.test", use_edns=0, payload=4096)
    assert not whole.truncated and len(show(whole)[1]) == 100
    tcp = ask(r, "many.home.test", tcp=True)
    assert not tcp.truncated and len(show(tcp)[1]) == 100


def test_forwarded_answers_get_the_id_back_and_fit_the_client() -> None:
    r = resolver()
    q = dns.message.make_query("www.example.test", "TXT")
    fwd = r.handle(q.to_wire(), now=NOW, tcp=False)
    assert isinstance(fwd, Forward)
    sent = fwd.query_with_id(0xBEEF)
    upstream_q = dns.message.from_wire(sent)
    assert upstream_q.id == 0xBEEF and sent[2:] == q.to_wire()[2:]
    ans = dns.message.make_response(upstream_q)
    ans.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "TXT",
                                          *[f'"{i:03} {"x" * 200}"' for i in range(15)]))  # fmt: skip
    wire = ans.to_wire()
    assert len(wire) > 3000
    assert fwd.is_answer(wire, 0xBEEF) and not fwd.is_answer(wire, 0xBEEE)
    other = dns.message.make_response(dns.message.make_query("evil.test", "TXT", id=0xBEEF))
    assert not fwd.is_answer(other.to_wire(), 0xBEEF)
    a = r.finish(fwd, wire)
    assert a.truncated and len(a.wire) <= 512 and not a.local
    assert dns.message.from_wire(a.wire).id == q.id
    small = dns.message.make_response(upstream_q)
    small.set_rcode(dns.rcode.NXDOMAIN)
    b = r.finish(fwd, small.to_wire())
    assert b.wire[2:] == small.to_wire()[2:] and b.wire[:2] == q.to_wire()[:2]
    assert b.rcode == dns.rcode.NXDOMAIN
    tcp_fwd = r.handle(q.to_wire(), now=NOW, tcp=True)
    assert isinstance(tcp_fwd, Forward)
    whole = r.finish(tcp_fwd, wire)
    assert not whole.truncated and whole.wire[2:] == wire[2:]
    assert show(r.servfail(fwd))[0] == "SERVFAIL"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    r = resolver(big_config(40))
    for tcp in (False, True):
        d = r.handle(data, now=NOW, tcp=tcp)
        if isinstance(d, Answer):
            assert len(d.wire) <= (65535 if tcp else 4096)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(["many.home.test", "r1.weft.internal", "nosuch.weft.internal", "r1",
                          "2.0.64.100.in-addr.arpa", "x.local.test", "weft.internal"]),
    rdtype=st.sampled_from(["A", "AAAA", "ANY", "PTR", "MX", "SOA", "TXT"]),
    edns=st.sampled_from([None, 0]),
    payload=st.integers(0, 65535),
    records_count=st.integers(0, 300),
)  # fmt: skip
@example(name="many.home.test", rdtype="A", edns=None, payload=523, records_count=30)
def test_udp_answers_never_exceed_the_client_limit(
    name: str, rdtype: str, edns: int | None, payload: int, records_count: int
) -> None:
    r = resolver(big_config(records_count))
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=max(payload, 1))
    d = r.handle(q.to_wire(), now=NOW, tcp=False)
    if isinstance(d, Forward):
        assert name == "many.home.test" and records_count == 0
        return
    assert isinstance(d, Answer)
    # (dnspython adds EDNS when a payload is given even with use_edns=None: ask the query)
    limit = 512 if q.edns < 0 else max(512, min(q.payload, 4096))
    assert len(d.wire) <= limit
    m = dns.message.from_wire(d.wire)
    assert m.id == q.id and bool(m.flags & dns.flags.TC) == d.truncated


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=12, max_size=300), st.integers(0, 0xFFFF))
def test_finish_never_raises_and_fits(answer: bytes, new_id: int) -> None:
    r = resolver()
    fwd = r.handle(dns.message.make_query("www.example.test", "A").to_wire(), now=NOW, tcp=False)
    assert isinstance(fwd, Forward)
    a = r.finish(fwd, answer)
    assert len(a.wire) <= 512


def test_edns_option_parsing_is_library_work() -> None:
    # A query with an EDNS option (cookie) is answered, the option not echoed.
    q = dns.message.make_query("r1.weft.internal", "A", use_edns=0,
                               options=[dns.edns.GenericOption(10, b"\x01" * 8)])  # fmt: skip
    d = resolver().handle(q.to_wire(), now=NOW, tcp=False)
    assert isinstance(d, Answer) and d.rcode == 0
    assert dns.message.from_wire(d.wire).options == ()
