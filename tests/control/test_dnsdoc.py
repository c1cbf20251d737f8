"""The DNS document (weftnet.control.domain.dnsdoc): what it accepts, how it refuses,
what it compiles to, and that it never raises anything but DNSError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet import dns, tailcfg
from weftnet.control.domain import dnsdoc
from weftnet.control.domain.dnsdoc import DNSError

ISSUE_EXAMPLE = """{
  // the example of issue 13, in HuJSON
  "magic_dns": true, "base_domain": "tail.example", "override_local_dns": false,
  "nameservers": {"global": ["198.18.0.53"], "split": {"corp.test": ["198.18.20.53"]}},
  "search_domains": ["corp.test"],
  "extra_records": [{"name": "grafana.tail.example", "type": "A", "value": "100.64.0.9"}],
}"""


def test_the_issue_example_compiles_to_fallback_resolvers_routes_and_records() -> None:
    doc = dnsdoc.loads(ISSUE_EXAMPLE)
    config = dnsdoc.compile_config(doc, "weft.internal")
    assert config == tailcfg.DNSConfig(
        magic_dns=True,
        domain="tail.example",
        resolvers=[],
        fallback_resolvers=[tailcfg.DNSResolver(addr="198.18.0.53")],
        routes={"corp.test": [tailcfg.DNSResolver(addr="198.18.20.53")]},
        search_domains=["tail.example", "corp.test"],
        extra_records=[
            tailcfg.DNSRecord(name="grafana.tail.example", type="A", value="100.64.0.9")
        ],
    )


def test_override_local_dns_makes_the_global_servers_the_resolvers() -> None:
    doc = dnsdoc.parse(
        {"override_local_dns": True, "nameservers": {"global": ["198.18.0.53", "[fd00::53]:5353"]}}
    )
    config = dnsdoc.compile_config(doc, "weft.internal")
    assert [r.addr for r in config.resolvers] == ["198.18.0.53", "[fd00::53]:5353"]
    assert config.fallback_resolvers == [] and config.domain == "weft.internal"


def test_the_default_document_is_magic_dns_under_the_servers_domain() -> None:
    config = dnsdoc.compile_config(dnsdoc.DEFAULT_DOCUMENT, "weft.internal")
    assert config == tailcfg.DNSConfig(
        magic_dns=True, domain="weft.internal", search_domains=["weft.internal"]
    )
    assert dnsdoc.parse({}) == dnsdoc.DEFAULT_DOCUMENT


def test_magic_dns_off_keeps_the_domain_but_not_the_search_domain() -> None:
    doc = dnsdoc.parse({"magic_dns": False, "search_domains": ["corp.test"]})
    config = dnsdoc.compile_config(doc, "weft.internal")
    assert config.domain == "weft.internal" and config.search_domains == ["corp.test"]


def test_canonical_form() -> None:
    doc = dnsdoc.parse(
        {
            "base_domain": "Tail.Example.",
            "nameservers": {
                "global": ["198.18.0.53", "198.18.0.53", "[FD00::0053]:5353", "[fd00::54]"],
                "split": {"Corp.Test.": [], "a.test": ["198.18.0.1:53"]},
            },
            "search_domains": ["Corp.Test", "corp.test"],
            "extra_records": [
                {"name": "DB.tail.example.", "type": "aaaa", "value": "FD00::1"},
                {"name": "db.tail.example", "value": "100.64.0.1"},  # type from the value
            ],
        }
    )
    assert doc.base_domain == "tail.example"
    assert doc.global_nameservers == ("198.18.0.53", "[fd00::53]:5353", "fd00::54")
    assert doc.split == (("a.test", ("198.18.0.1:53",)), ("corp.test", ()))
    assert doc.search_domains == ("corp.test",)
    assert [(r.name, r.type, r.value) for r in doc.extra_records] == [
        ("db.tail.example", "AAAA", "fd00::1"),
        ("db.tail.example", "A", "100.64.0.1"),
    ]
    # An empty split list: the node answers that domain itself (extra records).
    assert dnsdoc.compile_config(doc, "x.test").routes["corp.test"] == []


def test_to_json_round_trips_and_fills_in_the_domain() -> None:
    doc = dnsdoc.loads(ISSUE_EXAMPLE)
    assert dnsdoc.parse(doc.to_json()) == doc
    assert json.loads(json.dumps(doc.to_json()))["base_domain"] == "tail.example"
    bare = dnsdoc.parse({"magic_dns": False})
    assert "base_domain" not in bare.to_json()
    assert bare.to_json("weft.internal")["base_domain"] == "weft.internal"


REFUSED = [
    (
        {"nameservers": {"split": {"corp.test": ["1.2.3"]}}},
        'nameservers.split["corp.test"][0]: "1.2.3" is not an IP address',
    ),
    ({"nameservers": {"global": ["100.100.100.100"]}}, "the node's own resolver"),
    ({"nameservers": {"global": ["198.18.0.1", "fd7a:115c:a1e0::53"]}}, "global[1]"),
    ({"nameservers": {"global": ["[fd7a:115c:a1e0::53]:53"]}}, "the node's own resolver"),
    ({"nameservers": {"global": ["127.0.0.53"]}}, "loopback"),
    ({"nameservers": {"global": ["[::1]:53"]}}, "loopback"),
    ({"nameservers": {"global": ["::ffff:127.0.0.1"]}}, "loopback"),
    ({"nameservers": {"global": ["0.0.0.0"]}}, "unspecified"),
    ({"nameservers": {"global": ["198.18.0.1:0"]}}, "port must be 1-65535"),
    ({"nameservers": {"global": ["[fd00::1]:65536"]}}, "port must be 1-65535"),
    ({"nameservers": {"global": ["[198.18.0.1]:53"]}}, "brackets are for IPv6"),
    ({"nameservers": {"global": ["fe80::1%eth0"]}}, "is not an IP address"),
    ({"nameservers": {"global": ["https://dns.example/dns-query"]}}, "no DoH"),
    ({"nameservers": {"global": "198.18.0.1"}}, "nameservers.global: must be a list"),
    ({"nameservers": {"global": ["198.18.0.1"] * 17}}, "at most 16"),
    ({"nameservers": {"upstream": []}}, 'nameservers: unknown key "upstream"'),
    ({"nameservers": {"split": {"corp..test": []}}}, 'nameservers.split["corp..test"]'),
    ({"nameservers": {"split": {"a.test": [], "A.test.": []}}}, "listed twice"),
    (
        {"base_domain": "tail.example", "nameservers": {"split": {"x.tail.example": ["1.1.1.1"]}}},
        "inside the tailnet's domain tail.example",
    ),
    ({"override_local_dns": True}, "needs at least one nameservers.global"),
    ({"magic_dns": "yes"}, 'magic_dns: must be true or false, not "yes"'),
    ({"base_domain": "tail_x.example"}, "base_domain"),
    ({"base_domain": ""}, "base_domain"),
    ({"base_domain": "a" * 64 + ".example"}, "base_domain"),
    ({"domain": "tail.example"}, '"domain": the tailnet\'s domain is "base_domain"'),
    ({"extra_records_path": "/x.json"}, "not supported"),
    ({"nameserver": {}}, 'unknown key "nameserver"'),
    ({"search_domains": ["ok.test", "bad domain"]}, "search_domains[1]"),
    ({"extra_records": [{"name": "grafana", "value": "100.64.0.9"}]}, "fully qualified"),
    (
        {"extra_records": [{"name": "a.test", "type": "AAAA", "value": "100.64.0.9"}]},
        'extra_records[0].value: "100.64.0.9" is not an IPv6 address',
    ),
    (
        {"extra_records": [{"name": "a.test", "type": "CNAME", "value": "100.64.0.9"}]},
        "only A and AAAA",
    ),
    ({"extra_records": [{"name": "a.test", "value": "nope"}]}, "is not an IP address"),
    ({"extra_records": [{"name": "a.test"}]}, "needs a name and a value"),
    ({"extra_records": [{"name": "a.test", "value": "1.2.3.4", "ttl": 5}]}, 'unknown key "ttl"'),
    (
        {"extra_records": [{"name": f"h{i}.test", "value": "100.64.0.1"} for i in range(1001)]},
        "at most 1000",
    ),
    ([], "the DNS document: must be an object"),
]


@pytest.mark.parametrize(("doc", "message"), REFUSED)
def test_bad_documents_are_refused_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(DNSError) as e:
        dnsdoc.parse(doc)
    assert message in str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_the_limits_themselves_are_accepted() -> None:
    records = [{"name": f"h{i}.test", "value": "100.64.0.1"} for i in range(1000)]
    assert len(dnsdoc.parse({"extra_records": records}).extra_records) == 1000


def test_text_errors_name_line_and_column() -> None:
    with pytest.raises(DNSError, match="line 2, column"):
        dnsdoc.loads('{\n  "magic_dns": tru }')
    with pytest.raises(DNSError, match="duplicate key"):
        dnsdoc.loads('{"magic_dns": true, "magic_dns": false}')
    with pytest.raises(DNSError, match="larger than"):
        dnsdoc.loads(" " * (dnsdoc.MAX_DOCUMENT_BYTES + 1))


def test_a_domain_may_not_swallow_the_servers_or_a_relays_name() -> None:
    with pytest.raises(DNSError) as e:
        dnsdoc.check_domain("weft.example.com", ["control.weft.example.com"])
    assert str(e.value) == (
        "base_domain weft.example.com would swallow the server's own name control.weft.example.com"
    )
    with pytest.raises(DNSError, match=r"the relay's name relay\.tail\.example"):
        dnsdoc.check_domain("tail.example", ["control.example"], ["Relay.Tail.Example."])
    with pytest.raises(DNSError, match=r"own name tail\.example"):
        dnsdoc.check_domain("tail.example", ["tail.example"])
    # Neighbours, parents and IP literals do not collide.
    dnsdoc.check_domain("tail.example", ["nottail.example", "example", "198.18.0.1", "[::1]", ""])


def test_service_addresses_match_the_nodes_resolver() -> None:
    assert tuple(str(a) for a in dnsdoc.SERVICE_ADDRESSES) == dns.SERVICE_ADDRESSES


# -- properties ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
ADDRESSES = st.sampled_from(
    ["198.18.0.53", "198.18.0.53:5353", "[fd00::1]:53", "fd00::1", "100.100.100.100",
     "127.0.0.1", "1.2.3", "[::1]", "::ffff:198.18.0.1", "", "[fd00::1", "1.2.3.4:x"]
) | st.text(max_size=24) | JSON  # fmt: skip
DOMAINS = st.sampled_from(
    ["corp.test", "Corp.Test.", "a", "tail.example", "-bad.test", "x..y", "_ldap._tcp.corp.test"]
) | st.text(max_size=24) | JSON  # fmt: skip
NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        "magic_dns": st.booleans() | JSON,
        "base_domain": DOMAINS,
        "override_local_dns": st.booleans() | JSON,
        "nameservers": st.fixed_dictionaries(
            {},
            optional={
                "global": st.lists(ADDRESSES, max_size=3) | JSON,
                "split": st.dictionaries(DOMAINS.filter(lambda d: isinstance(d, str)),
                                         st.lists(ADDRESSES, max_size=3) | JSON, max_size=3),
            },
        ) | JSON,
        "search_domains": st.lists(DOMAINS, max_size=3) | JSON,
        "extra_records": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": DOMAINS,
                    "type": st.sampled_from(["A", "AAAA", "aaaa", "TXT", ""]) | JSON,
                    "value": ADDRESSES,
                },
            ) | JSON,
            max_size=3,
        ) | JSON,
    },
)  # fmt: skip


def _parses_or_refuses(value: Any) -> None:
    try:
        doc = dnsdoc.parse(value)
    except DNSError as e:
        assert "\n" not in str(e)
        return
    # What it accepts is canonical: parsing its own output gives it back.
    assert dnsdoc.parse(doc.to_json()) == doc
    dnsdoc.compile_config(doc, "weft.internal")


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_parses_or_raises_dns_error(value: Any) -> None:
    _parses_or_refuses(value)


@settings(max_examples=500, deadline=None)
@given(NEAR_VALID)
def test_near_valid_documents_parse_or_raise_dns_error(value: Any) -> None:
    _parses_or_refuses(value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_dns_error(text: str) -> None:
    with contextlib.suppress(DNSError):
        dnsdoc.loads(text)
