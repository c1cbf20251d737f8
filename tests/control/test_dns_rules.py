"""The DNS settings in the service (get, check, set, what the snapshot carries) and in
the map (full frames always carry dns_config, deltas when it changed)."""

from __future__ import annotations

import pytest

from weftlab.fakes import SeededEntropy
from weftnet import tailcfg
from weftnet.control.domain import netmap
from weftnet.control.service import ControlService, Invalid, Settings
from weftnet.control.store.sql import SqlStore

from .memstore import MemoryStore
from .test_netmap import ALICE, NOW, node
from .test_service import CountingFeed

DOC = {
    "magic_dns": True,
    "base_domain": "tail.example",
    "nameservers": {"global": ["198.18.0.53"], "split": {"corp.test": ["198.18.20.53"]}},
    "extra_records": [{"name": "grafana.tail.example", "type": "A", "value": "100.64.0.9"}],
}


@pytest.fixture(params=["memory", "sqlite"])
def svc(request: pytest.FixtureRequest) -> ControlService:
    store = MemoryStore() if request.param == "memory" else SqlStore.open("sqlite://")
    return ControlService(store, Settings(), CountingFeed(), random_bytes=SeededEntropy("dns"))


def published(svc: ControlService) -> int:
    feed = svc.feed
    assert isinstance(feed, CountingFeed)
    return feed.count


def test_default_settings_are_magic_dns_under_dns_domain(svc: ControlService) -> None:
    assert svc.get_dns() == {
        "magic_dns": True,
        "base_domain": "weft.internal",
        "override_local_dns": False,
        "nameservers": {"global": [], "split": {}},
        "search_domains": [],
        "extra_records": [],
    }
    config = svc.snapshot().dns_config
    assert config is not None and config.domain == "weft.internal" and config.magic_dns


def test_set_stores_publishes_and_reaches_the_snapshot(svc: ControlService) -> None:
    out = svc.set_dns(DOC)
    assert out == svc.get_dns() and out["base_domain"] == "tail.example"
    assert published(svc) == 1
    config = svc.snapshot().dns_config
    assert config is not None and config.domain == "tail.example"
    assert [r.addr for r in config.fallback_resolvers] == ["198.18.0.53"]
    # The domain is the server's dns_domain setting: one value, both ways in.
    assert svc.settings.dns_domain == "tail.example"
    assert svc.load_settings(None, None).dns_domain == "tail.example"


def test_a_document_without_base_domain_keeps_the_domain_in_force(svc: ControlService) -> None:
    svc.load_settings(None, "corp.example")  # serve --dns-domain corp.example
    assert svc.get_dns()["base_domain"] == "corp.example"
    svc.set_dns('{"magic_dns": false} // HuJSON text')
    assert svc.get_dns()["base_domain"] == "corp.example" and not svc.get_dns()["magic_dns"]
    svc.load_settings(None, "other.example")  # a later serve --dns-domain wins
    assert svc.get_dns()["base_domain"] == "other.example"
    config = svc.snapshot().dns_config
    assert config is not None and config.domain == "other.example" and not config.magic_dns


def test_refused_documents_change_nothing(svc: ControlService) -> None:
    svc.set_dns(DOC)
    before, count = svc.get_dns(), published(svc)
    for bad in (
        '{"nameservers": {"global": ["1.2.3"]}}',
        {"base_domain": "weft.example.com"},
        {"nameservers": {"split": {"x.tail.example": ["198.18.0.1"]}}},  # under the domain
        "{ not json",
    ):
        for fn in (svc.set_dns, svc.check_dns):
            with pytest.raises(Invalid, match=r"^DNS settings refused: "):
                fn(bad, ["control.weft.example.com"], ["relay.example"])
    assert svc.get_dns() == before and published(svc) == count
    assert svc.settings.dns_domain == "tail.example"


def test_check_changes_nothing_and_answers_the_document(svc: ControlService) -> None:
    before = svc.get_dns()
    assert svc.check_dns(DOC)["base_domain"] == "tail.example"
    assert svc.get_dns() == before and published(svc) == 0


def test_relay_hosts_are_protected_too(svc: ControlService) -> None:
    with pytest.raises(Invalid, match=r"would swallow the relay's name relay\.tail\.example"):
        svc.set_dns(DOC, ["control.example"], ["relay.tail.example"])


def test_a_stored_document_that_no_longer_parses_gives_the_default(
    svc: ControlService,
) -> None:
    svc.set_dns(DOC)
    with svc.store.transaction(write=True) as tx:
        tx.set_setting("dns", '{"magic_dns": "maybe"}')
    config = svc.snapshot().dns_config
    assert config is not None and config.domain == "tail.example" and config.magic_dns
    assert config.fallback_resolvers == []
    assert svc.get_dns()["nameservers"]["global"] == []


# -- the map ------------------------------------------------------------------------


def views(config: tailcfg.DNSConfig | None) -> netmap.MapView:
    m = netmap.NetMap(
        {1: node(1), 2: node(2)}, {1: ALICE}, (), NOW, "weft.internal", dns_config=config
    )
    view = m.view_for(1)
    assert view is not None
    return view


def test_full_frames_always_carry_dns_config() -> None:
    full = views(None).full("weft.internal")
    assert full.dns_config == tailcfg.DNSConfig(
        magic_dns=True, domain="weft.internal", search_domains=["weft.internal"]
    )
    config = tailcfg.DNSConfig(magic_dns=True, domain="tail.example")
    assert views(config).full("tail.example").dns_config == config


def test_deltas_carry_dns_config_only_when_it_changed() -> None:
    old = views(None)
    assert netmap.delta(old, views(None)) is None
    same_domain = tailcfg.DNSConfig(
        magic_dns=True,
        domain="weft.internal",
        search_domains=["weft.internal"],
        fallback_resolvers=[tailcfg.DNSResolver(addr="198.18.0.53")],
    )
    frame = netmap.delta(old, views(same_domain))
    assert frame is not None and frame.dns_config == same_domain and frame.dns_domain is None
    assert frame.peers_changed == [] and frame.packet_filter is None
    moved = netmap.delta(old, views(tailcfg.DNSConfig(magic_dns=True, domain="tail.example")))
    assert moved is not None and moved.dns_domain == "tail.example"  # for older nodes
    peer_only = netmap.delta(old, netmap.MapView(old.node, {}, (), (), old.dns_config))
    assert peer_only is not None and peer_only.dns_config is None
