"""MapSession: full frames and deltas folded into a typed NetworkMap."""

from __future__ import annotations

from tests.node.support import node
from weftnet import tailcfg
from weftnet.node.mapsession import MapSession, NetworkMap

ME = node(1, "me", ["100.64.0.1"])
A, B, C = node(2, "a", ["100.64.0.2"]), node(3, "b", ["100.64.0.3"]), node(4, "c", ["100.64.0.4"])
RULE = tailcfg.FilterRule(src_ips=["*"], dst_ports=[], ip_proto=[6])
RELAY = tailcfg.RelayRegion(name="default", url="http://198.18.0.1:8080", public_key="relaykey:")


def test_a_full_map_replaces_everything_and_deltas_change_only_what_they_carry() -> None:
    s = MapSession()
    nm = s.apply(tailcfg.MapResponse(node=ME, peers=[A, B], packet_filter=[RULE],
                                     dns_domain="tail.test", relay_map=[RELAY]))  # fmt: skip
    assert nm.self_node == ME and set(nm.peers) == {2, 3}
    assert nm.packet_filter == [RULE] and nm.dns_domain == "tail.test"
    assert nm.relay_map == [RELAY]
    b2 = B.model_copy(update={"endpoints": ["198.18.0.3:41641"]})
    nm = s.apply(tailcfg.MapResponse(peers_changed=[b2, C], peers_removed=[2]))
    assert set(nm.peers) == {3, 4} and nm.peers[3].endpoints == ["198.18.0.3:41641"]
    assert nm.packet_filter == [RULE] and nm.dns_domain == "tail.test" and nm.self_node == ME
    nm = s.apply(tailcfg.MapResponse(packet_filter=[]))
    assert nm.packet_filter == [] and set(nm.peers) == {3, 4}
    nm = s.apply(tailcfg.MapResponse(node=ME, peers=[A]))  # full again (a reconnect)
    assert set(nm.peers) == {2} and nm.packet_filter == []


def test_keepalives_change_nothing_and_removing_an_unknown_peer_is_harmless() -> None:
    s = MapSession()
    first = s.apply(tailcfg.MapResponse(node=ME, peers=[A]))
    assert s.apply(tailcfg.MapResponse(keepalive=True)) is first
    assert set(s.apply(tailcfg.MapResponse(peers_removed=[99])).peers) == {2}


def test_we_are_never_our_own_peer() -> None:
    nm = MapSession().apply(tailcfg.MapResponse(node=ME, peers=[ME, A]))
    assert set(nm.peers) == {2}


def test_the_cache_is_a_full_frame_that_restores_the_same_map() -> None:
    s = MapSession()
    nm = s.apply(tailcfg.MapResponse(node=ME, peers=[A, B], packet_filter=[RULE]))
    again = MapSession().apply(tailcfg.MapResponse.model_validate(nm.to_cache()))
    assert again.self_node == ME and again.peers == nm.peers and again.packet_filter == [RULE]
    assert NetworkMap().to_cache() == {"peers": []}
