"""Device approval, per-node key expiry, node tags, tailnet settings and the audit log,
as service rules (no HTTP), on the in-memory fake store and on SQLite."""

# ruff: noqa: F811 - the fixtures of test_service, imported by name

from __future__ import annotations

import pytest

from weftnet.control.domain import netmap
from weftnet.control.service import Invalid, NotFound, ServiceError
from weftnet.control.service.audit import ORIGIN_API, Actor, acting_as

from .test_service import (  # noqa: F401 - fixtures
    DAY_S,
    NOW,
    ControlService,
    CountingFeed,
    Device,
    feed,
    register,
    store,
    svc,
)

ADMIN = Actor(type="api_key", id="abc123", name="ops", origin=ORIGIN_API, remote_addr="10.0.0.9")


def actions(svc: ControlService) -> list[str]:
    return [e.action for e in reversed(svc.list_audit(limit=1000))]


def view(svc: ControlService, node_id: int, now: float = NOW) -> netmap.MapView:
    snap = svc.snapshot()
    current = netmap.NetMap(snap.nodes, snap.users, set(snap.nodes), now, "weft.internal")
    v = current.view_for(node_id)
    assert v is not None
    return v


def test_device_approval_keeps_new_nodes_out_until_approved(
    svc: ControlService, feed: CountingFeed
) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    first = register(svc, Device("one"), key).node
    assert first.authorized_at == NOW and first.auth_method == "authkey"
    assert svc.set_tailnet_settings(device_approval=True).device_approval
    assert svc.tailnet_settings().device_approval
    waiting = register(svc, Device("two"), key).node
    assert waiting.authorized_at is None
    # In nobody's map, with no peers itself, admitted by no relay.
    assert view(svc, first.id).peers.keys() == set()
    assert view(svc, waiting.id).peers == {} and not view(svc, waiting.id).node.machine_authorized
    snap = svc.snapshot()
    current = netmap.NetMap(snap.nodes, snap.users, (), NOW, "weft.internal")
    assert waiting.node_key not in current.admitted_keys(NOW)
    assert not current.admits(waiting.node_key, NOW) and current.admits(first.node_key, NOW)
    published = feed.count
    approved = svc.authorize_node(waiting.id, NOW + 5)
    assert approved.authorized_at == NOW + 5 and feed.count == published + 1
    assert set(view(svc, first.id).peers) == {waiting.id}
    assert svc.authorize_node(waiting.id, NOW + 9).authorized_at == NOW + 5  # no change


def test_preauthorized_keys_skip_approval_and_relogin_keeps_it(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    svc.create_user("bob", NOW)
    svc.set_tailnet_settings(device_approval=True)
    pre, record = svc.create_auth_key(NOW, "alice", preauthorized=True)
    assert record.preauthorized
    dev = Device("pre")
    assert register(svc, dev, pre).node.authorized_at == NOW
    # The same owner again with a plain key: still authorized.
    alice_key, _ = svc.create_auth_key(NOW, "alice")
    dev.node_key = Device().node_key
    assert register(svc, dev, alice_key, NOW + 10).node.authorized_at == NOW
    # Another owner: waits again.
    bob_key, _ = svc.create_auth_key(NOW, "bob")
    dev.node_key = Device().node_key
    assert register(svc, dev, bob_key, NOW + 20).node.authorized_at is None


def test_approval_off_authorizes_at_once_and_register_by_code_follows_the_setting(
    svc: ControlService,
) -> None:
    svc.create_user("alice", NOW)
    svc.set_tailnet_settings(device_approval=True)
    dev = Device("interactive")
    answer = svc.register(dev.machine_key, dev.request(), NOW, "http://control")
    assert not isinstance(answer, type(None)) and answer.auth_url  # type: ignore[union-attr]
    code = answer.auth_url.rsplit("/", 1)[1]  # type: ignore[union-attr]
    node = svc.register_by_code("alice", code, NOW).node
    assert node.authorized_at is None and node.auth_method == "admin"


def test_key_expiry_disabled_revives_and_enabling_sets_a_new_expiry(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    node = register(svc, Device(), key).node
    svc.expire_node(node.id, NOW)
    later = NOW + 400 * DAY_S
    revived = svc.set_key_expiry_disabled(node.id, True, NOW + 1)
    assert revived.key_expiry_disabled and revived.key_expiry is None
    assert not revived.expired_at(later) and view(svc, node.id, later).node.expired is False
    again = svc.set_key_expiry_disabled(node.id, False, NOW + 2)
    assert not again.key_expiry_disabled and again.key_expiry == NOW + 2 + 180 * DAY_S
    assert actions(svc)[-3:] == ["node.expire", "node.key_expiry", "node.key_expiry"]
    with pytest.raises(NotFound):
        svc.set_key_expiry_disabled(999, True)


def test_relogin_keeps_a_disabled_expiry(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    dev = Device()
    node = register(svc, dev, key).node
    svc.set_key_expiry_disabled(node.id, True, NOW)
    dev.node_key = Device().node_key
    assert register(svc, dev, key, NOW + 5).node.key_expiry is None


def test_node_tags_are_checked_like_auth_key_tags_and_drop_the_user(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    node = register(svc, Device(), key).node
    tagged = svc.set_node_tags(node.id, ["tag:server", "tag:db"], NOW)
    assert tagged.tags == ("tag:db", "tag:server") and tagged.user_id is None
    before = len(svc.list_audit())
    for bad in (["server"], []):
        with pytest.raises(Invalid):
            svc.set_node_tags(node.id, bad)
    svc.set_policy('{"tagOwners": {"tag:web": ["alice"]}, "acls": []}')
    with pytest.raises(Invalid, match="tagOwners"):
        svc.set_node_tags(node.id, ["tag:db"])
    assert len(svc.list_audit()) == before + 1  # the policy only
    assert svc.set_node_tags(node.id, ["tag:web"]).tags == ("tag:web",)


def test_every_change_is_audited_with_the_actor_and_no_secret(svc: ControlService) -> None:
    with acting_as(ADMIN):
        svc.create_user("alice", NOW)
        key, record = svc.create_auth_key(NOW, "alice", reusable=True)
        api_text, api = svc.create_api_key(NOW, description="ci")
        node = register(svc, Device("lap"), key).node
        svc.rename_node(node.id, "laptop", NOW)
        svc.set_node_attr(node.id, "managed", True)
        svc.approve_routes(node.id, ["10.0.0.0/24"], NOW)
        svc.set_policy('{"tagOwners": {"tag:x": []}, "acls": []}')
        svc.set_dns({"magic_dns": True})
        svc.set_tailnet_settings(device_approval=True)
        svc.set_key_expiry_disabled(node.id, True, NOW)
        svc.set_node_tags(node.id, ["tag:x"], NOW)
        svc.expire_node(node.id, NOW)
        svc.revoke_auth_key(record.prefix, NOW)
        svc.revoke_api_key(api.prefix, NOW)
        svc.delete_node(node.id, NOW)
        svc.delete_user("alice")
    entries = list(reversed(svc.list_audit(limit=1000)))
    assert [e.action for e in entries] == [
        "user.create", "auth_key.create", "api_key.create", "node.register", "node.rename",
        "node.attribute", "node.routes", "policy.set", "dns.set", "settings.set",
        "node.key_expiry", "node.tags", "node.expire", "auth_key.revoke", "api_key.revoke",
        "node.delete", "user.delete",
    ]  # fmt: skip
    assert all((e.actor_type, e.actor_id, e.origin, e.remote_addr) ==
               ("api_key", "abc123", "api", "10.0.0.9") for e in entries)  # fmt: skip
    text = repr(entries)
    assert key.split("-")[2] not in text and api_text.split("-")[2] not in text
    assert entries[1].target_id == record.prefix
    # Paging: newest first, before an id, since a time.
    newest = svc.list_audit(limit=2)
    assert [e.action for e in newest] == ["user.delete", "node.delete"]
    assert svc.list_audit(limit=1, before_id=newest[1].id)[0].action == "api_key.revoke"
    recent = svc.list_audit(since=NOW + 1)  # the rules that take no `now` use the clock
    assert {e.action for e in recent} == {
        "policy.set", "dns.set", "node.attribute", "settings.set", "user.delete"
    }  # fmt: skip
    with pytest.raises(Invalid):
        svc.list_audit(limit=0)


def test_a_refused_change_writes_no_audit_entry(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    before = svc.list_audit(limit=1000)
    for attempt in (
        lambda: svc.create_user("alice", NOW),
        lambda: svc.create_auth_key(NOW, "nobody"),
        lambda: svc.rename_node(42, "x"),
        lambda: svc.authorize_node(42),
        lambda: svc.set_policy("{not json"),
        lambda: svc.delete_user("nobody"),
        lambda: svc.revoke_auth_key("ffffffffffff", NOW),
    ):
        with pytest.raises(ServiceError):
            attempt()
    assert svc.list_audit(limit=1000) == before


def test_node_registration_and_logout_are_audited_as_the_node(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, record = svc.create_auth_key(NOW, "alice")
    dev = Device("lap")
    node_actor = Actor(type="node", id="mkey:1", name="lap", origin="node", remote_addr="1.2.3.4")
    with acting_as(node_actor):
        register(svc, dev, key)
        svc.register(dev.machine_key, dev.request(logout=True), NOW + 1, "http://control")
    reg, logout = reversed(svc.list_audit(limit=2))
    assert (reg.action, logout.action) == ("node.register", "node.logout")
    assert reg.actor_type == logout.actor_type == "node" and reg.origin == "node"
    assert reg.details["auth_key"] == record.prefix and reg.details["authorized"] is True
