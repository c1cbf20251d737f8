"""weftnet.dns.osconfig: what the OS gets (the compile cases), which mode, the file."""

from __future__ import annotations

import pytest

from weftnet import tailcfg
from weftnet.dns import SERVICE_V4, SERVICE_V6
from weftnet.dns.osconfig import (
    MARKER,
    BaseConfig,
    Environment,
    Inputs,
    NodeDNSState,
    OSConfig,
    TrampleLimit,
    base_resolvers,
    compile_os_config,
    detect_mode,
    header_owner,
    is_ours,
    parse_resolv_conf,
    render_resolv_conf,
    reverse_zones,
    search_list,
)

R = tailcfg.DNSResolver
BASE = BaseConfig(("198.18.1.53",), ("lan.test",))
MAGIC = tailcfg.DNSConfig(magic_dns=True, domain="weft.internal", search_domains=["weft.internal"])
ZONES = tuple(reverse_zones())


def cfg(**kw: object) -> tailcfg.DNSConfig:
    return tailcfg.DNSConfig.model_validate(kw)


CASES = [
    # (name, inputs, expected)
    ("no config yet", Inputs(None, base=BASE), OSConfig()),
    ("accept_dns off", Inputs(MAGIC, accept_dns=False, base=BASE), OSConfig()),
    ("down", Inputs(MAGIC, state=NodeDNSState.down, base=BASE), OSConfig()),
    ("expired", Inputs(MAGIC, state=NodeDNSState.expired, base=BASE), OSConfig()),
    ("logged out", Inputs(MAGIC, state=NodeDNSState.logged_out, base=BASE), OSConfig()),
    ("mode off", Inputs(MAGIC, mode="off", base=BASE), OSConfig()),
    ("empty config", Inputs(cfg(), base=BASE), OSConfig()),
    (
        "2: search only, direct keeps the OS's servers",
        Inputs(cfg(search_domains=["corp.test"]), base=BASE),
        OSConfig(("198.18.1.53",), ("corp.test", "lan.test")),
    ),
    (
        "2: search only, resolved",
        Inputs(cfg(search_domains=["corp.test"]), mode="resolved", base=BASE),
        OSConfig((), ("corp.test",)),
    ),
    (
        "3: plain default resolvers, direct",
        Inputs(cfg(resolvers=[R(addr="198.18.0.53"), R(addr="198.18.0.54:53")]), base=BASE),
        OSConfig(("198.18.0.53", "198.18.0.54"), ("lan.test",)),
    ),
    (
        "3: plain default resolvers, resolved: ~. and default route",
        Inputs(cfg(resolvers=[R(addr="[fd00::53]:53")]), mode="resolved", base=BASE),
        OSConfig(("fd00::53",), (), (".",), default_route=True),
    ),
    (
        "4: a default resolver on another port needs quad-100",
        Inputs(cfg(resolvers=[R(addr="198.18.0.53:5353")]), base=BASE),
        OSConfig((SERVICE_V4,), ("lan.test",)),
    ),
    (
        "4: MagicDNS, direct: quad-100 only, tailnet domain first",
        Inputs(MAGIC, base=BASE),
        OSConfig((SERVICE_V4,), ("weft.internal", "lan.test")),
    ),
    (
        "4: MagicDNS, resolved: scoped to the domain and reverse zones",
        Inputs(MAGIC, mode="resolved", base=BASE),
        OSConfig((SERVICE_V4, SERVICE_V6), ("weft.internal",), ("weft.internal", *ZONES)),
    ),
    (
        "4: MagicDNS + override local DNS, resolved: ~. and the default route",
        Inputs(
            cfg(magic_dns=True, domain="weft.internal", resolvers=[R(addr="198.18.0.53")]),
            mode="resolved",
        ),
        OSConfig(
            (SERVICE_V4, SERVICE_V6),
            ("weft.internal",),
            ("weft.internal", *ZONES, "."),
            default_route=True,
        ),
    ),
    (
        "4: split routes and an uncovered extra record, resolved",
        Inputs(
            cfg(
                routes={"corp.test": [R(addr="198.18.20.53")]},
                extra_records=[
                    {"name": "printer.home.test", "value": "198.18.1.9"},
                    {"name": "db.corp.test", "value": "198.18.20.9"},
                ],
            ),
            mode="resolved",
        ),
        OSConfig((SERVICE_V4, SERVICE_V6), (), ("corp.test", "printer.home.test")),
    ),
    (
        "5: exit node (hook): quad-100 takes the default route",
        Inputs(cfg(), mode="resolved", exit_node=True),
        OSConfig((SERVICE_V4, SERVICE_V6), (), (".",), default_route=True),
    ),
]


@pytest.mark.parametrize(("inputs", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_compile(inputs: Inputs, want: OSConfig) -> None:
    assert compile_os_config(inputs) == want


def test_reverse_zones_are_the_64_v4_zones_and_the_ula() -> None:
    z = reverse_zones()
    assert len(z) == 65 and z[0] == "64.100.in-addr.arpa" and z[63] == "127.100.in-addr.arpa"
    assert z[64] == "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"


def test_search_list_is_cut_at_glibcs_limits() -> None:
    many = [f"d{i}.test" for i in range(8)]
    got, warn = search_list(many, ())
    assert got == many[:6] and warn and "d6.test d7.test" in warn[0]
    long = ["a" * 100 + ".test", "b" * 100 + ".test", "c" * 100 + ".test"]
    got, warn = search_list(long, ())
    assert len(" ".join(got)) <= 256 and len(got) == 2 and warn
    assert search_list(["x.test", "X.test."], ("x.test",)) == (["x.test"], [])


ENVS = [
    # (resolv.conf, resolved answers, nsswitch hosts, override) -> mode
    (None, True, "files resolve dns", "auto", "direct"),
    ("nameserver 198.18.1.53\n", True, "files resolve dns", "auto", "direct"),
    (
        "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n"
        "nameserver 127.0.0.53\n",
        True,
        "files dns",
        "auto",
        "resolved",  # only the stub listed: glibc's dns goes through resolved anyway
    ),
    (
        "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n"
        "nameserver 198.18.1.53\n",
        True,
        "files mymachines resolve [!UNAVAIL=return] dns",
        "auto",
        "resolved",
    ),
    (
        "# This is /run/systemd/resolve/resolv.conf managed by man:systemd-resolved(8).\n"
        "nameserver 198.18.1.53\n",
        True,
        "files dns",
        "auto",
        "direct",  # glibc skips resolved: only resolv.conf counts
    ),
    (
        "# Generated by NetworkManager\nnameserver 127.0.0.53\n",
        False,
        "files resolve dns",
        "auto",
        "direct",  # resolved is not answering
    ),
    (
        "# Generated by NetworkManager\nnameserver 127.0.0.53\n",
        True,
        "files dns",
        "auto",
        "resolved",
    ),
    ("# Generated by resolvconf\nnameserver 10.0.0.1\n", True, "resolve dns", "auto", "direct"),
    ("nameserver 198.18.1.53\n", False, "files dns", "resolved", "resolved"),
    ("nameserver 198.18.1.53\n", False, "files dns", "off", "off"),
]


@pytest.mark.parametrize(("rc", "up", "hosts", "override", "want"), ENVS)
def test_detect_mode(rc: str | None, up: bool, hosts: str, override: str, want: str) -> None:
    mode, why = detect_mode(Environment(rc, up, hosts), override)
    assert mode == want, why
    assert "resolved-ping=" in why


def test_detect_mode_says_why_in_one_line() -> None:
    rc = "# managed by man:systemd-resolved(8)\nnameserver 127.0.0.53\n"
    mode, why = detect_mode(Environment(rc, True, " files resolve dns"))
    assert (mode, why) == ("resolved", "rc=systemd-resolved, resolved-ping=yes, nsswitch=yes")


def test_resolv_conf_text_round_trip() -> None:
    text = render_resolv_conf(OSConfig((SERVICE_V4,), ("weft.internal", "lan.test")))
    assert text.startswith(MARKER + "\n") and is_ours(text) and header_owner(text) == "weftd"
    assert "\nnameserver 100.100.100.100\nsearch weft.internal lan.test\n" in text
    assert "options" not in text
    assert parse_resolv_conf(text) == BaseConfig((SERVICE_V4,), ("weft.internal", "lan.test"))


def test_parse_resolv_conf() -> None:
    text = (
        "# comment\n; other comment\nnameserver 198.18.1.53  # trailing\n"
        "domain old.test\nsearch a.test b.test.\nnameserver fd00::53\noptions ndots:2\n"
        "nameserver\n"
    )
    assert parse_resolv_conf(text) == BaseConfig(("198.18.1.53", "fd00::53"), ("a.test", "b.test"))
    assert header_owner("nameserver 1.2.3.4\n# systemd-resolved\n") == ""
    assert not is_ours("nameserver 1.2.3.4\n" + MARKER)


def test_base_resolvers_drop_service_addresses_and_resolveds_stubs() -> None:
    base = BaseConfig(("100.100.100.100", "127.0.0.53", "198.18.1.53", "fd7a:115c:a1e0::53",
                       "127.0.0.54", "198.18.1.53", "fd00::53"))  # fmt: skip
    assert base_resolvers(base) == ["198.18.1.53", "fd00::53"]


def test_trample_limit_allows_10_in_5_s_then_gives_up_for_good() -> None:
    lim = TrampleLimit()
    assert all(lim.allow(100.0 + i * 0.1) for i in range(10))
    assert not lim.allow(101.5) and lim.gave_up
    assert not lim.allow(200.0)  # for good, until reset
    lim.reset()
    assert lim.allow(300.0) and lim.total == 1


def test_trample_limit_forgets_old_rewrites() -> None:
    lim = TrampleLimit()
    for i in range(30):  # one each 0.6 s: at most 9 within any 5 s
        assert lim.allow(i * 0.6), i
    assert not lim.gave_up
