"""reconcile.plan: bad peers are skipped with a reason, never raised (defect D2)."""

from __future__ import annotations

from tests.node.support import key_text, node
from weftnet import controlbox, tailcfg
from weftnet.node.mapsession import NetworkMap
from weftnet.node.reconcile import plan

ME = node(1, "me", ["100.64.0.1"])
OWN = controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, ME.node_key)


def key(n: tailcfg.Node) -> bytes:
    return controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, n.node_key)


def nm(*peers: tailcfg.Node, me: tailcfg.Node = ME) -> NetworkMap:
    return NetworkMap(self_node=me, peers={p.id: p for p in peers})


def test_add_update_remove() -> None:
    a, b, c = node(2, "a", ["100.64.0.2"]), node(3, "b", ["100.64.0.3"]), node(4, "c", [])
    ops = plan(nm(a, b), {3: key(b), 4: key(c)}, OWN)
    assert [w.node.id for w in ops.add] == [2]
    assert [w.node.id for w in ops.update] == [3]
    assert ops.remove == [4] and ops.skipped == []


def test_a_new_node_key_is_a_remove_and_an_add() -> None:
    a = node(2, "a", ["100.64.0.2"])
    a2 = a.model_copy(update={"node_key": key_text("a, logged in again")})
    ops = plan(nm(a2), {2: key(a)}, OWN)
    assert ops.remove == [2] and [w.node.id for w in ops.add] == [2]


def test_bad_peers_are_skipped_with_reasons_and_the_others_still_set_up() -> None:
    good = node(2, "good", ["100.64.0.2"])
    zero = node(3, "zero", ["100.64.0.3"], node_key="nodekey:" + "00" * 32)
    # A small-subgroup point other than zero (order 8 on Curve25519).
    low = node(4, "low", ["100.64.0.4"], node_key="nodekey:" + "e0eb7a7c3b41b8ae1656e3faf19fc46a"
               "da098deb9c32b1fd866205165f49b800")  # fmt: skip
    bad = node(5, "garbled", ["100.64.0.5"], node_key="nodekey:xyz")
    me_again = node(6, "mirror", ["100.64.0.6"], node_key=ME.node_key)
    twin = node(7, "twin", ["100.64.0.7"], node_key=good.node_key)
    ops = plan(nm(good, zero, low, bad, me_again, twin), {}, OWN)
    assert [w.node.id for w in ops.add] == [2]
    assert [str(s) for s in ops.skipped] == [
        "peer zero skipped: low-order node key",
        "peer low skipped: low-order node key",
        "peer garbled skipped: malformed node key",
        "peer mirror skipped: node key is our own",
        "peer twin skipped: node key already used by good",
    ]


def test_the_peer_already_configured_keeps_a_duplicated_key() -> None:
    victim = node(5, "victim", ["100.64.0.5"])
    copycat = node(2, "copycat", ["100.64.0.2"], node_key=victim.node_key)  # lower id
    ops = plan(nm(victim, copycat), {5: key(victim)}, OWN)
    assert [w.node.id for w in ops.update] == [5] and ops.add == []
    assert [s.node_id for s in ops.skipped] == [2]


def test_expired_peers_and_an_expired_self_want_nothing() -> None:
    a, b = node(2, "a", ["100.64.0.2"]), node(3, "b", ["100.64.0.3"], expired=True)
    ops = plan(nm(a, b), {3: key(b)}, OWN)
    assert [w.node.id for w in ops.add] == [2] and ops.remove == [3] and ops.skipped == []
    expired_me = ME.model_copy(update={"expired": True})
    ops = plan(nm(a, me=expired_me), {2: key(a)}, OWN)
    assert ops.remove == [2] and ops.add == [] and ops.update == []


def test_allowed_ips_outside_the_tailnet_are_dropped_and_reported() -> None:
    """A compromised control server must not let a peer claim 0.0.0.0/0 or a LAN."""
    greedy = node(2, "greedy", ["100.64.0.2"])
    greedy = greedy.model_copy(
        update={
            "allowed_ips": [
                "100.64.0.2/32",
                "fd7a:115c:a1e0::2/128",
                "0.0.0.0/0",
                "192.168.1.0/24",
                "::/0",
                "100.0.0.0/8",  # wider than the overlay: not inside it
                "nonsense",
            ]
        }
    )
    honest = node(3, "honest", ["100.64.0.3", "fd7a:115c:a1e0::3"])
    ops = plan(nm(greedy, honest), {}, OWN)
    wanted = {w.node.id: w for w in ops.add}
    assert wanted[2].allowed_ips == ("100.64.0.2/32", "fd7a:115c:a1e0::2/128")
    assert wanted[3].allowed_ips == ("100.64.0.3/32", "fd7a:115c:a1e0::3/128")
    assert ops.skipped == []
    # The /0s are an exit node's offer (used only when chosen, docs/routes.md): not noise.
    assert [str(n) for n in ops.narrowed] == [
        "peer greedy: ignored allowed IPs outside the tailnet: 192.168.1.0/24, 100.0.0.0/8, nonsense"
    ]
    # The same holds when the peer is already configured (an update).
    ops = plan(nm(greedy), {2: key(greedy)}, OWN)
    assert [w.allowed_ips for w in ops.update] == [("100.64.0.2/32", "fd7a:115c:a1e0::2/128")]
    assert len(ops.narrowed) == 1
