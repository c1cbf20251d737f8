"""The service rules without HTTP: keys, registration, addresses, names, nodes.

Each test runs on the in-memory fake store (no SQL at all) and on SQLite in memory,
which keeps the fake honest.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nacl.public import PrivateKey

from weftlab.fakes import SeededEntropy
from weftnet import controlbox, tailcfg
from weftnet.control.domain.records import Store
from weftnet.control.service import (
    Conflict,
    ControlService,
    Invalid,
    NotFound,
    Refused,
    Registered,
    Settings,
    Unauthorized,
)
from weftnet.control.store.sql import SqlStore

from .memstore import MemoryStore

NOW = 1_700_000_000.0
DAY_S = 86400.0


class CountingFeed:
    def __init__(self) -> None:
        self.count = 0

    def publish(self) -> None:
        self.count += 1


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqlStore.open("sqlite://")


@pytest.fixture
def feed() -> CountingFeed:
    return CountingFeed()


@pytest.fixture
def svc(store: Store, feed: CountingFeed) -> ControlService:
    return ControlService(store, Settings(), feed, random_bytes=SeededEntropy("service"))


def counts(svc: ControlService) -> dict[str, int]:
    store = svc.store
    assert isinstance(store, MemoryStore | SqlStore)
    return store.row_counts()


class Device:
    """A machine key and a node key, as a node would have."""

    def __init__(self, hostname: str = "laptop") -> None:
        self.machine_key = _key(tailcfg.MACHINE_KEY_PREFIX)
        self.node_key = _key(tailcfg.NODE_KEY_PREFIX)
        self.hostname = hostname

    def request(self, **fields: object) -> tailcfg.RegisterRequest:
        fields.setdefault("node_key", self.node_key)
        fields.setdefault("hostinfo", tailcfg.Hostinfo(hostname=self.hostname))
        return tailcfg.RegisterRequest(ts=NOW, **fields)  # type: ignore[arg-type]


def _key(prefix: str) -> str:
    return controlbox.key_to_text(prefix, bytes(PrivateKey.generate().public_key))


def register(svc: ControlService, dev: Device, key: str, now: float = NOW) -> Registered:
    out = svc.register(dev.machine_key, dev.request(auth_key=key), now, "http://control")
    assert isinstance(out, Registered)
    return out


def refusal(fn: Callable[[], object]) -> str:
    with pytest.raises(Refused) as e:
        fn()
    return str(e.value)


# -- auth keys ------------------------------------------------------------------------


def test_key_registration_creates_a_node_with_addresses_and_a_name(svc: ControlService) -> None:
    alice = svc.create_user("alice", NOW)
    key, record = svc.create_auth_key(NOW, "alice")
    assert record.prefix in key and record.key_hash not in key
    node = register(svc, Device("Alice's Laptop"), key).node
    assert (node.ipv4, node.ipv6) == ("100.64.0.1", "fd7a:115c:a1e0::1")
    assert node.given_name == "alice-s-laptop" and node.hostname == "Alice's Laptop"
    assert node.user_id == alice.id and node.tags == () and not node.ephemeral
    assert node.key_expiry == NOW + 180 * DAY_S


def test_single_use_key_gives_one_node_and_a_second_use_changes_nothing(
    svc: ControlService,
) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    register(svc, Device(), key)
    before = counts(svc)
    message = refusal(lambda: register(svc, Device(), key))
    assert "already been used" in message
    assert counts(svc) == before
    [(listed, _)] = svc.list_auth_keys()
    assert listed.used_count == 1


def test_reusable_key_registers_many_nodes_with_distinct_addresses(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    nodes = [register(svc, Device(), key).node for _ in range(5)]
    assert len({n.ipv4 for n in nodes}) == len({n.ipv6 for n in nodes}) == 5
    assert [n.given_name for n in nodes] == [
        "laptop",
        "laptop-1",
        "laptop-2",
        "laptop-3",
        "laptop-4",
    ]


@pytest.mark.parametrize("case", ["expired", "revoked", "wrong secret", "unknown", "malformed"])
def test_bad_keys_are_refused_and_leave_nothing(svc: ControlService, case: str) -> None:
    svc.create_user("alice", NOW)
    key, record = svc.create_auth_key(NOW, "alice", reusable=True, expiration="1h")
    now = NOW
    if case == "expired":
        now = NOW + 3601
    elif case == "revoked":
        svc.revoke_auth_key(record.prefix, NOW)
    elif case == "wrong secret":
        key = key[:-4] + ("0000" if not key.endswith("0000") else "1111")
    elif case == "unknown":
        key = "weftkey-000000000000-" + "ab" * 24
    else:
        key = "not-a-key"
    before = counts(svc)
    message = refusal(lambda: register(svc, Device(), key, now))
    expected = {"expired": "expired", "revoked": "revoked"}.get(case, "not valid")
    assert expected in message
    assert counts(svc) == before


def test_tagged_key_makes_nodes_owned_by_tags(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", tags=["tag:server", "tag:db"])
    out = register(svc, Device(), key)
    assert out.user is None and out.node.user_id is None
    assert out.node.tags == ("tag:db", "tag:server")
    tagged_only, _ = svc.create_auth_key(NOW, None, tags=["tag:ci"])
    assert register(svc, Device(), tagged_only).node.tags == ("tag:ci",)
    with pytest.raises(Invalid):
        svc.create_auth_key(NOW, None)
    with pytest.raises(Invalid):
        svc.create_auth_key(NOW, "alice", tags=["server"])


def test_ephemeral_key_makes_ephemeral_nodes(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", ephemeral=True)
    node = register(svc, Device(), key).node
    assert node.ephemeral
    assert svc.delete_ephemeral(node.id)
    assert svc.list_nodes() == []


def test_key_for_unknown_user_and_bad_expiration(svc: ControlService) -> None:
    with pytest.raises(NotFound):
        svc.create_auth_key(NOW, "nobody")
    svc.create_user("alice", NOW)
    with pytest.raises(Invalid):
        svc.create_auth_key(NOW, "alice", expiration="soon")


# -- re-login, key binding ------------------------------------------------------------


def test_same_machine_keeps_its_node_and_addresses_with_a_new_node_key(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    dev, other = Device(), Device("other")
    first = register(svc, dev, key).node
    register(svc, other, key)
    svc.delete_node(register(svc, Device(), key).node.id)
    dev.node_key = _key(tailcfg.NODE_KEY_PREFIX)
    again = register(svc, dev, key, NOW + 10).node
    assert (again.id, again.ipv4, again.ipv6, again.given_name) == (
        first.id,
        first.ipv4,
        first.ipv6,
        first.given_name,
    )
    assert again.node_key == dev.node_key != first.node_key
    assert again.key_expiry == NOW + 10 + 180 * DAY_S
    assert len(svc.list_nodes()) == 2


def test_a_node_key_belongs_to_one_machine(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    victim = Device()
    register(svc, victim, key)
    thief = Device()
    thief.node_key = victim.node_key
    before = counts(svc)
    assert "another machine" in refusal(lambda: register(svc, thief, key))
    assert counts(svc) == before
    req = tailcfg.MapRequest(ts=NOW, node_key=victim.node_key)
    assert "not registered" in refusal(lambda: svc.map_request(thief.machine_key, req, None, NOW))


def test_rotating_the_node_key_while_logged_in(svc: ControlService, feed: CountingFeed) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    dev = Device()
    node = register(svc, dev, key).node
    old, dev.node_key = dev.node_key, _key(tailcfg.NODE_KEY_PREFIX)
    published = feed.count
    out = svc.register(dev.machine_key, dev.request(old_node_key=old), NOW, "http://c")
    assert isinstance(out, Registered) and out.node.id == node.id
    assert out.node.node_key == dev.node_key and feed.count == published + 1
    # Without proof of the old key, a new key needs a login.
    dev.node_key = _key(tailcfg.NODE_KEY_PREFIX)
    out = svc.register(dev.machine_key, dev.request(), NOW, "http://c")
    assert isinstance(out, tailcfg.RegisterResponse) and out.auth_url


def test_malformed_keys_and_old_versions_are_refused(svc: ControlService) -> None:
    dev = Device()
    bad = dev.request(node_key="nodekey:abc")
    assert "node key:" in refusal(lambda: svc.register(dev.machine_key, bad, NOW, "http://c"))
    old = dev.request(version=0)
    assert "upgrade" in refusal(lambda: svc.register(dev.machine_key, old, NOW, "http://c"))


# -- interactive login ----------------------------------------------------------------


def test_interactive_login_waits_for_the_admin(svc: ControlService) -> None:
    svc.create_user("bob", NOW)
    dev = Device("desk")
    first = svc.register(dev.machine_key, dev.request(), NOW, "http://control:8080")
    assert isinstance(first, tailcfg.RegisterResponse)
    assert not first.machine_authorized and first.auth_url is not None
    assert first.auth_url.startswith("http://control:8080/register/")
    waiting = svc.register(dev.machine_key, dev.request(followup=first.auth_url), NOW, "x")
    assert isinstance(waiting, tailcfg.RegisterResponse) and waiting.error is None
    assert not waiting.machine_authorized
    code = first.auth_url.rsplit("/", 1)[1]
    approved = svc.register_by_code("bob", code, NOW + 5)
    assert approved.node.given_name == "desk" and approved.user is not None
    done = svc.register(dev.machine_key, dev.request(followup=first.auth_url), NOW + 6, "x")
    assert isinstance(done, Registered) and done.node.id == approved.node.id
    # Already logged in: no new login needed.
    again = svc.register(dev.machine_key, dev.request(), NOW + 7, "x")
    assert isinstance(again, Registered)
    with pytest.raises(Conflict):
        svc.register_by_code("bob", code, NOW + 8)


def test_expired_pending_logins_are_purged(svc: ControlService) -> None:
    """By the next interactive login, and by purge_expired_logins (the hub's timer)."""
    ttl = svc.settings.pending_ttl_s
    old, newer, later = Device("old"), Device("newer"), Device("later")
    for dev, at in [(old, NOW), (newer, NOW + ttl / 2)]:
        assert isinstance(
            svc.register(dev.machine_key, dev.request(), at, "http://c"), tailcfg.RegisterResponse
        )
    assert counts(svc)["pending_registrations"] == 2
    assert svc.purge_expired_logins(NOW + ttl - 1) == 0  # none expired yet
    assert svc.purge_expired_logins(NOW + ttl) == 1  # "old" expires at NOW + ttl
    assert counts(svc)["pending_registrations"] == 1
    svc.register(later.machine_key, later.request(), NOW + 2 * ttl, "http://c")
    assert counts(svc)["pending_registrations"] == 1  # "newer" went, "later" came
    assert svc.purge_expired_logins(NOW + 2 * ttl) == 0


def test_interactive_login_refusals(svc: ControlService) -> None:
    svc.create_user("bob", NOW)
    dev, other = Device(), Device()
    first = svc.register(dev.machine_key, dev.request(), NOW, "http://c")
    assert isinstance(first, tailcfg.RegisterResponse) and first.auth_url
    code = first.auth_url.rsplit("/", 1)[1]
    stolen = other.request(followup=first.auth_url)
    assert "unknown" in refusal(lambda: svc.register(other.machine_key, stolen, NOW, "x"))
    with pytest.raises(NotFound):
        svc.register_by_code("bob", "0" * 20, NOW)
    with pytest.raises(Invalid):
        svc.register_by_code("bob", "nope", NOW)
    with pytest.raises(NotFound):
        svc.register_by_code("nobody", code, NOW)
    late = NOW + svc.settings.pending_ttl_s + 1
    with pytest.raises(NotFound):
        svc.register_by_code("bob", code, late)
    expired = dev.request(followup=first.auth_url)
    assert "expired" in refusal(lambda: svc.register(dev.machine_key, expired, late, "x"))


# -- logout, expiry, names, deletion --------------------------------------------------


def test_logout_expires_the_key_and_map_requests_are_refused(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    dev = Device()
    register(svc, dev, key)
    out = svc.register(dev.machine_key, dev.request(logout=True), NOW + 1, "x")
    assert isinstance(out, tailcfg.RegisterResponse) and out.node_key_expired
    req = tailcfg.MapRequest(ts=NOW, node_key=dev.node_key)
    assert "expired" in refusal(lambda: svc.map_request(dev.machine_key, req, None, NOW + 2))


def test_expire_rename_delete(svc: ControlService, feed: CountingFeed) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    a = register(svc, Device("a"), key).node
    b = register(svc, Device("b"), key).node
    assert svc.expire_node(a.id, NOW + 1).expired_at(NOW + 1)
    assert svc.rename_node(b.id, "web").given_name == "web"
    with pytest.raises(Conflict):
        svc.rename_node(a.id, "web")
    with pytest.raises(Invalid):
        svc.rename_node(a.id, "Not Valid")
    before = feed.count
    svc.delete_node(a.id)
    assert feed.count == before + 1
    with pytest.raises(NotFound):
        svc.delete_node(a.id)
    assert [n.id for n, _ in svc.list_nodes()] == [b.id]
    assert register(svc, Device("a"), key).node.ipv4 == a.ipv4  # the lowest free again


def test_configurable_node_key_expiry(svc: ControlService) -> None:
    settings = svc.load_settings("1h", "corp.example")
    assert settings.node_key_expiry_s == 3600 and settings.dns_domain == "corp.example"
    assert svc.load_settings(None, None) == settings  # saved
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    assert register(svc, Device(), key).node.key_expiry == NOW + 3600
    with pytest.raises(Invalid):
        svc.load_settings("forever", None)


# -- users, API keys ------------------------------------------------------------------


def test_users(svc: ControlService) -> None:
    svc.create_user("alice@example.com", NOW)
    with pytest.raises(Conflict):
        svc.create_user("alice@example.com", NOW)
    with pytest.raises(Invalid):
        svc.create_user("has space", NOW)
    key, _ = svc.create_auth_key(NOW, "alice@example.com")
    register(svc, Device(), key)
    with pytest.raises(Conflict, match="--force"):
        svc.delete_user("alice@example.com")
    assert svc.delete_user("alice@example.com", force=True) == 1
    assert svc.list_users() == [] and svc.list_nodes() == [] and svc.list_auth_keys() == []
    with pytest.raises(NotFound):
        svc.delete_user("alice@example.com")


def test_api_keys(svc: ControlService) -> None:
    text, record = svc.create_api_key(NOW, "1d")
    assert svc.check_api_key(text, NOW).id == record.id
    for bad in ("", "weftapi-x", text[:-2] + "00", "weftkey" + text[7:]):
        with pytest.raises(Unauthorized):
            svc.check_api_key(bad, NOW)
    with pytest.raises(Unauthorized, match="expired"):
        svc.check_api_key(text, NOW + DAY_S)
    svc.revoke_api_key(record.prefix, NOW)
    with pytest.raises(Unauthorized, match="revoked"):
        svc.check_api_key(text, NOW)
    with pytest.raises(NotFound):
        svc.revoke_api_key("ffffffffffff", NOW)


def test_api_keys_expire_by_default_and_lifetimes_are_bounded(svc: ControlService) -> None:
    _, record = svc.create_api_key(NOW)
    assert record.expires_at == NOW + 90 * DAY_S and record.scope == "admin"
    text, _ = svc.create_api_key(NOW, "365d")
    with pytest.raises(Unauthorized, match="expired"):
        svc.check_api_key(text, NOW + 365 * DAY_S)
    with pytest.raises(Invalid, match="at most 365d"):
        svc.create_api_key(NOW, "366d")
    with pytest.raises(Invalid, match="at most 365d"):
        svc.create_api_key(NOW, "99999999999999999999d")
    svc.create_user("alice", NOW)
    _, auth = svc.create_auth_key(NOW, "alice", expiration="365d")
    assert auth.expires_at == NOW + 365 * DAY_S
    with pytest.raises(Invalid, match="auth key expiration 400d is too long: at most 365d"):
        svc.create_auth_key(NOW, "alice", expiration="400d")
    with pytest.raises(Invalid, match="at most 365d"):
        svc.create_auth_key(NOW, "alice", expiration="99999999999999999999d")


def test_api_key_scopes(svc: ControlService) -> None:
    _, relay = svc.create_api_key(NOW, scope="relay")
    assert relay.scope == "relay"
    assert svc.list_api_keys()[0].scope == "relay"
    with pytest.raises(Invalid, match="scope"):
        svc.create_api_key(NOW, scope="root")


def test_revoking_by_the_whole_key_is_refused(svc: ControlService) -> None:
    """The secret would sit in access logs (the key goes in the URL path)."""
    api_text, api_key = svc.create_api_key(NOW)
    svc.create_user("alice", NOW)
    auth_text, auth_key = svc.create_auth_key(NOW, "alice")
    with pytest.raises(Invalid, match="prefix"):
        svc.revoke_api_key(api_text, NOW)
    with pytest.raises(Invalid, match="prefix"):
        svc.revoke_auth_key(auth_text, NOW)
    assert svc.check_api_key(api_text, NOW).revoked_at is None  # nothing was revoked
    assert svc.revoke_api_key(f"weftapi-{api_key.prefix}", NOW).id == api_key.id
    assert svc.revoke_auth_key(f"weftkey-{auth_key.prefix}", NOW).revoked_at == NOW


# -- map requests ---------------------------------------------------------------------


def test_map_request_records_endpoints_and_publishes_only_changes(
    svc: ControlService, feed: CountingFeed
) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    dev = Device()
    register(svc, dev, key)
    req = tailcfg.MapRequest(
        ts=NOW, node_key=dev.node_key, endpoints=["10.0.0.2:41641"], disco_key=_key("discokey:")
    )
    before = feed.count
    node = svc.map_request(dev.machine_key, req, "198.51.100.7", NOW + 1)
    assert node.endpoints == ("10.0.0.2:41641",) and node.observed_ip == "198.51.100.7"
    assert node.last_seen == NOW + 1 and feed.count == before + 1
    svc.map_request(dev.machine_key, req, "198.51.100.7", NOW + 2)
    assert feed.count == before + 1  # nothing a peer would see changed
    odd = tailcfg.MapRequest(ts=NOW, node_key=dev.node_key, endpoints=["nonsense", "127.0.0.1:1"])
    assert svc.map_request(dev.machine_key, odd, None, NOW + 3).endpoints == ()  # dropped


def test_a_disco_key_belongs_to_one_node(svc: ControlService) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    a, b = Device("a"), Device("b")
    register(svc, a, key)
    register(svc, b, key)
    disco = _key("discokey:")
    svc.map_request(
        a.machine_key, tailcfg.MapRequest(ts=NOW, node_key=a.node_key, disco_key=disco), None, NOW
    )
    steal = tailcfg.MapRequest(ts=NOW, node_key=b.node_key, disco_key=disco)
    with pytest.raises(Refused, match="disco key is used by another node") as e:
        svc.map_request(b.machine_key, steal, None, NOW + 1)
    assert e.value.kind == tailcfg.ERROR_BAD_REQUEST
    nodes = {n.hostname: n for n, _ in svc.list_nodes()}
    assert nodes["a"].disco_key == disco and nodes["b"].disco_key is None
    # The holder may report it again; a fresh key for b is fine.
    svc.map_request(
        a.machine_key,
        tailcfg.MapRequest(ts=NOW, node_key=a.node_key, disco_key=disco),
        None,
        NOW + 2,
    )
    own = _key("discokey:")
    assert (
        svc.map_request(
            b.machine_key,
            tailcfg.MapRequest(ts=NOW, node_key=b.node_key, disco_key=own),
            None,
            NOW + 3,
        ).disco_key
        == own
    )


def test_a_disco_key_race_lost_at_the_unique_index_is_the_same_refusal(
    svc: ControlService, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes reporting one new disco key at once both pass the look-up; the
    database's unique index refuses the second, with the refusal the look-up gives."""
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice", reusable=True)
    a, b = Device("a"), Device("b")
    register(svc, a, key)
    register(svc, b, key)
    disco = _key("discokey:")
    svc.map_request(
        a.machine_key, tailcfg.MapRequest(ts=NOW, node_key=a.node_key, disco_key=disco), None, NOW
    )
    with store.transaction(write=False) as tx:
        tx_class = type(tx)
    monkeypatch.setattr(tx_class, "node_by_disco_key", lambda self, key: None)  # the race
    steal = tailcfg.MapRequest(ts=NOW, node_key=b.node_key, disco_key=disco)
    with pytest.raises(Refused, match="disco key is used by another node") as e:
        svc.map_request(b.machine_key, steal, None, NOW + 1)
    assert e.value.kind == tailcfg.ERROR_BAD_REQUEST
    nodes = {n.hostname: n for n, _ in svc.list_nodes()}
    assert nodes["a"].disco_key == disco and nodes["b"].disco_key is None


def test_a_stored_policy_that_no_longer_parses_denies_everything() -> None:
    from weftnet.control.domain.access import DENY_ALL, PolicyCache

    cache = PolicyCache()
    assert cache.get(None) is None
    assert cache.get('{"acls": []}') is not None
    assert cache.get("{ broken") is DENY_ALL


def test_announced_routes_are_kept_valid_and_a_change_publishes(
    svc: ControlService, feed: CountingFeed, caplog: pytest.LogCaptureFixture
) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    dev = Device()
    register(svc, dev, key)

    def announce(*prefixes: str) -> tuple[str, ...]:
        hostinfo = tailcfg.Hostinfo(hostname="r", routable_ips=list(prefixes))
        req = tailcfg.MapRequest(ts=NOW, node_key=dev.node_key, hostinfo=hostinfo)
        return svc.map_request(dev.machine_key, req, None, NOW + 1).announced_routes

    assert announce("198.18.20.0/24", "198.18.20.1/24", "100.64.0.0/10", "::/0") == (
        "198.18.20.0/24",
        "::/0",
    )
    assert "198.18.20.1/24 has non-address bits set" in caplog.text
    before = feed.count
    assert announce("::/0", "198.18.20.0/24") == ("198.18.20.0/24", "::/0")
    assert feed.count == before  # the same set: nothing to publish
    assert announce() == ()
    assert feed.count == before + 1


def test_approving_routes(svc: ControlService, feed: CountingFeed) -> None:
    svc.create_user("alice", NOW)
    key, _ = svc.create_auth_key(NOW, "alice")
    node = register(svc, Device(), key).node
    before = feed.count
    approved = svc.approve_routes(node.id, ["::/0", "198.18.20.0/24"]).approved_routes
    assert approved == ("0.0.0.0/0", "198.18.20.0/24", "::/0") and feed.count == before + 1
    assert svc.approve_routes(node.id, []).approved_routes == ()
    with pytest.raises(Invalid, match=r"non-address bits set; expected 198\.18\.20\.0/24"):
        svc.approve_routes(node.id, ["198.18.20.1/24"])
    with pytest.raises(NotFound):
        svc.approve_routes(999, [])
