"""The pure OIDC identity rules (weftnet.control.domain.identity) and the identity
service on the in-memory store: filters, names, roles, expiry, mapping and links."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.control.domain import identity, roles
from weftnet.control.domain.identity import Claims, Filters, LoginRefused
from weftnet.control.service import ControlService, LoginDenied, SignInRules

from .memstore import MemoryStore

ISS = "https://idp.example"


def claims(**kw: object) -> Claims:
    base: dict[str, object] = {"issuer": ISS, "subject": "s1", "email": "Alice@Example.com"}
    base["email_verified"] = True
    return Claims(**(base | kw))  # type: ignore[arg-type]


def allowed(c: Claims, f: Filters) -> bool:
    try:
        identity.check_allowed(c, f)
    except LoginRefused:
        return False
    return True


def test_no_filters_let_everyone_in() -> None:
    assert allowed(claims(email=None, email_verified=False), Filters())


def test_groups_are_checked_whatever_the_email() -> None:
    f = Filters.of(groups=["eng"])
    assert allowed(claims(email_verified=False, groups=("eng",)), f)
    assert not allowed(claims(groups=("sales",)), f)


def test_domains_and_users_need_a_verified_email() -> None:
    f = Filters.of(domains=["example.com"])
    assert allowed(claims(), f)
    assert not allowed(claims(email_verified=False), f)
    assert allowed(
        claims(email_verified=False),
        Filters.of(domains=["example.com"], email_verified_required=False),
    )
    assert not allowed(claims(email="a@evil.example"), f)
    assert allowed(claims(), Filters.of(users=["alice@example.com"]))
    assert not allowed(claims(), Filters.of(users=["bob@example.com"]))


@given(
    in_group=st.booleans(),
    in_domain=st.booleans(),
    verified=st.booleans(),
    group_filter=st.booleans(),
    domain_filter=st.booleans(),
)
def test_every_set_filter_must_pass(
    in_group: bool, in_domain: bool, verified: bool, group_filter: bool, domain_filter: bool
) -> None:
    c = claims(
        email="a@ok.example" if in_domain else "a@no.example",
        email_verified=verified,
        groups=("eng",) if in_group else (),
    )
    f = Filters.of(domains=["ok.example"] * domain_filter, groups=["eng"] * group_filter)
    expected = (not group_filter or in_group) and (not domain_filter or (verified and in_domain))
    assert allowed(c, f) == expected


def test_user_name_from_claims() -> None:
    assert identity.user_name(claims()) == "alice@example.com"
    unverified = claims(email_verified=False, preferred_username="alice")
    assert identity.user_name(unverified) == "alice"
    assert identity.user_name(unverified, email_verified_required=False) == "alice@example.com"
    with pytest.raises(
        LoginRefused, match=re.escape("users link NAME --issuer https://idp.example")
    ):
        identity.user_name(claims(email=None, preferred_username="bad name"))


@given(st.text(max_size=40))
def test_user_name_is_valid_or_refused(username: str) -> None:
    from weftnet.control.domain import names

    try:
        name = identity.user_name(claims(email=None, preferred_username=username))
    except LoginRefused:
        return
    assert names.check_user_name(name) == name


def test_roles_and_expiry() -> None:
    assert (
        identity.role_for(claims(), owner_email="alice@example.com", admin_group="a") == roles.OWNER
    )
    assert (
        identity.role_for(
            claims(email_verified=False), owner_email="alice@example.com", admin_group=None
        )
        == roles.MEMBER
    )
    assert (
        identity.role_for(claims(groups=("a",)), owner_email=None, admin_group="a") == roles.ADMIN
    )
    assert identity.role_for(claims(), owner_email=None, admin_group=None) == roles.MEMBER
    c = claims(expires_at=1600.0)
    assert identity.key_expiry(c, 1000.0, 99.0, from_token=True) == 1600.0
    assert identity.key_expiry(c, 1000.0, 99.0, from_token=False) is None
    assert identity.key_expiry(c, 2000.0, 99.0, from_token=True) is None


def test_issuer_urls_and_next_paths() -> None:
    assert identity.check_issuer_url("https://idp.example")
    assert identity.check_issuer_url("http://127.0.0.1:9400")
    with pytest.raises(ValueError, match="https"):
        identity.check_issuer_url("http://idp.example")
    assert identity.safe_next("/admin/machines?q=1") == "/admin/machines?q=1"
    for bad in ("https://evil.example/admin", "//evil.example/admin", "/adminx", "/other", None):
        assert identity.safe_next(bad) == "/admin"


def service() -> ControlService:
    return ControlService(MemoryStore())


def test_identity_maps_to_one_user_and_is_never_renamed() -> None:
    svc = service()
    first = svc.sign_in(claims(name="Alice"), SignInRules(), 1.0)
    again = svc.sign_in(claims(email="alice@new.example", name="Al"), SignInRules(), 2.0)
    assert again.id == first.id and again.name == "alice@example.com"
    assert again.email == "alice@new.example" and again.display_name == "Al"


def test_same_email_from_another_issuer_is_refused_until_linked_elsewhere() -> None:
    svc = service()
    svc.sign_in(claims(), SignInRules(), 1.0)
    other = claims(issuer="https://other.example")
    with pytest.raises(
        LoginDenied, match=re.escape("users link alice@example.com --issuer https://other.example")
    ):
        svc.sign_in(other, SignInRules(), 2.0)
    svc.create_user("alice2", 3.0)
    svc.link_identity("alice2", other.issuer, other.subject, 3.0)
    assert svc.sign_in(other, SignInRules(), 4.0).name == "alice2"
    assert len(svc.list_users()) == 2
    assert svc.unlink_identity("alice2", other.issuer, 5.0) == 1


def test_disabled_users_are_refused() -> None:
    svc = service()
    user = svc.sign_in(claims(), SignInRules(), 1.0)
    svc.db.write(lambda tx: tx.update_user(user.id, disabled_at=1.5))
    with pytest.raises(LoginDenied, match="disabled"):
        svc.sign_in(claims(), SignInRules(), 2.0)


def test_filters_refuse_before_any_user_exists() -> None:
    svc = service()
    with pytest.raises(LoginDenied):
        svc.sign_in(claims(), SignInRules(filters=Filters.of(groups=["eng"])), 1.0)
    assert svc.list_users() == []
