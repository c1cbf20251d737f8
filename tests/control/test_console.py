"""The web console (/admin): local login, sessions, CSRF, roles, the policy editor, keys."""

from __future__ import annotations

import html
import time
from unittest import mock

import pytest
from fastapi import Request
from fastapi.responses import Response

from weftnet.control.domain import roles
from weftnet.control.service import consoleauth
from weftnet.control.service.consoleauth import hash_password, password_matches

from .consolekit import PASSWORD, Console, LoggedIn, csrf_of, make_console, user_of


@pytest.fixture
def console() -> Console:
    return make_console()


def audit_actions(console: Console) -> list[str]:
    return [e.action for e in console.service.list_audit(limit=100)]


# -- logging in and out ---------------------------------------------------------------


def test_pages_redirect_to_login_and_local_login_works(console: Console) -> None:
    http = console.client()
    r = http.get("/admin/users?x=1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Fusers%3Fx%3D1"
    page = http.get("/admin/login")
    r = http.post(
        "/admin/login",
        data={
            "csrf": csrf_of(page.text),
            "username": user_of(roles.OWNER),
            "password": PASSWORD,
            "next": "/admin/users?x=1",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/users?x=1"
    cookie = r.headers["set-cookie"]
    assert "weft_session=" in cookie and "HttpOnly" in cookie and "Path=/admin" in cookie
    assert "samesite=lax" in cookie.lower() and "Secure" not in cookie  # plain http here
    assert "owner" in http.get("/admin/users").text
    assert "console.login" in audit_actions(console)


@pytest.mark.parametrize("next_path", ["https://evil.example/", "//evil.example/admin", "/oidc"])
def test_login_redirects_only_to_console_paths(console: Console, next_path: str) -> None:
    http = console.client()
    page = http.get("/admin/login")
    data = {"csrf": csrf_of(page.text), "username": "owner", "password": PASSWORD}
    r = http.post("/admin/login", data={**data, "next": next_path}, follow_redirects=False)
    assert r.headers["location"] == "/admin/machines"


def test_wrong_password_is_refused_and_failures_are_limited(console: Console) -> None:
    http = console.client()
    page = http.get("/admin/login")
    form = {"username": "owner", "password": "wrong password!"}
    for _ in range(10):
        r = http.post("/admin/login", data={**form, "csrf": csrf_of(page.text)})
        assert r.status_code == 401 and "weft_session" not in r.headers.get("set-cookie", "")
        page = r
    right = {**form, "csrf": csrf_of(page.text), "password": PASSWORD}
    r = http.post("/admin/login", data=right, follow_redirects=False)
    assert r.status_code == 429 and "Too many failed logins" in r.text


def test_login_form_needs_its_csrf_token(console: Console) -> None:
    http = console.client()
    http.get("/admin/login")
    form = {"csrf": "forged", "username": "owner", "password": PASSWORD}
    r = http.post("/admin/login", data=form, follow_redirects=False)
    assert r.status_code == 403 and "weft_session" not in r.headers.get("set-cookie", "")


def test_logout_ends_the_session(console: Console) -> None:
    owner = console.login(roles.OWNER)
    cookie = owner.http.cookies.get("weft_session")
    assert owner.post("/admin/logout").status_code == 303
    other = console.client()
    other.cookies.set("weft_session", cookie or "", path="/admin")
    assert other.get("/admin/api/machines").status_code == 401


def test_sessions_end_after_idle_and_absolute_timeouts(console: Console) -> None:
    owner = console.login(roles.OWNER)
    assert owner.http.get("/admin/api/machines").status_code == 200
    now = time.time()
    later = now + consoleauth.IDLE_TIMEOUT_S + 60
    with mock.patch.object(console.app.state.control, "clock", lambda: later):
        assert owner.http.get("/admin/api/machines").status_code == 401
    owner = console.login(roles.OWNER)  # used every 6 hours, but 7 days is the end
    times = [now + q * 6 * 3600 for q in range(1, 7 * 4)]
    for t in [*times, now + consoleauth.ABSOLUTE_TIMEOUT_S + 60]:
        with mock.patch.object(console.app.state.control, "clock", lambda t=t: t):
            expected = 200 if t < now + consoleauth.ABSOLUTE_TIMEOUT_S else 401
            assert owner.http.get("/admin/api/machines").status_code == expected, t - now


def test_disabled_users_cannot_log_in_and_lose_their_session(console: Console) -> None:
    member = console.login(roles.MEMBER)
    user = console.service.store
    with user.transaction(write=True) as tx:
        found = tx.user_by_name(user_of(roles.MEMBER))
        assert found is not None
        tx.update_user(found.id, disabled_at=time.time())
    assert member.http.get("/admin/api/machines").status_code == 401
    with pytest.raises(AssertionError):
        console.login(roles.MEMBER)


def test_console_sign_in_starts_a_session_for_another_login_method(console: Console) -> None:
    """What the identity provider's callback calls (app.state.console_sign_in)."""

    async def callback(request: Request) -> Response:
        name = request.query_params["user"]
        user = next(u for u in console.service.list_users() if u.name == name)
        sign_in = request.app.state.console_sign_in
        response: Response = await sign_in(request, user, request.query_params.get("to"))
        return response

    console.app.add_api_route("/test-callback", callback)
    http = console.client()
    r = http.get("/test-callback?user=auditor&to=/admin/audit", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/audit"
    assert http.get("/admin/audit").status_code == 200
    r = http.get("/test-callback?user=auditor&to=https://evil.example", follow_redirects=False)
    assert r.headers["location"] == "/admin/machines"
    with console.service.store.transaction(write=True) as tx:
        member = tx.user_by_name("member")
        assert member is not None
        tx.update_user(member.id, disabled_at=time.time())
    other = console.client()
    r = other.get("/test-callback?user=member", follow_redirects=False)
    assert r.status_code == 403 and "weft_session" not in r.headers.get("set-cookie", "")


def test_passwords_are_salted_scrypt_and_checked() -> None:
    one, two = hash_password("secret secret"), hash_password("secret secret")
    assert one != two and one.startswith("scrypt$")
    assert password_matches("secret secret", one) and not password_matches("secret secreT", one)
    assert not password_matches("x", "garbage")


# -- CSRF -----------------------------------------------------------------------------


def test_writes_without_the_csrf_token_are_refused_and_change_nothing(console: Console) -> None:
    owner = console.login(roles.OWNER)
    node = console.nodes["member"]
    before = console.service.get_node(node.id)
    writes = [
        (f"/admin/machines/{node.id}/rename", {"name": "hijacked"}),
        (f"/admin/machines/{node.id}/delete", {}),
        ("/admin/users", {"name": "mallory"}),
        ("/admin/policy", {"policy": '{"acls": []}', "action": "save"}),
        ("/admin/settings", {"device_approval": "1"}),
        ("/admin/keys", {"user": "owner"}),
        ("/admin/logout", {}),
    ]
    for path, form in writes:
        assert owner.post(path, form, csrf=False).status_code == 403, path
        assert owner.post(path, {**form, "csrf": "wrong"}, csrf=False).status_code == 403, path
        r = owner.http.post(path, json=form, headers={"X-CSRF-Token": "wrong"})
        assert r.status_code == 403, path
    assert console.service.get_node(node.id) == before
    assert "mallory" not in [u.name for u in console.service.list_users()]
    assert console.service.get_policy() is None
    assert console.service.list_auth_keys("owner") == []
    assert owner.http.get("/admin/api/machines").status_code == 200  # still logged in


def test_the_csrf_header_works_for_scripts(console: Console) -> None:
    owner = console.login(roles.OWNER)
    node = console.nodes["member"]
    r = owner.http.post(
        f"/admin/machines/{node.id}/approve",
        headers={"X-CSRF-Token": owner.csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert console.service.get_node(node.id).authorized_at is not None


# -- roles ----------------------------------------------------------------------------


def page_status(who: LoggedIn, path: str) -> int:
    return who.http.get(path, follow_redirects=False).status_code


def test_auditor_reads_everything_and_changes_nothing(console: Console) -> None:
    auditor = console.login(roles.AUDITOR)
    for page in ("machines", "users", "keys", "policy", "dns", "relays", "settings", "audit"):
        assert page_status(auditor, f"/admin/{page}") == 200, page
    assert page_status(auditor, f"/admin/machines/{console.nodes['admin'].id}") == 200
    node = console.nodes["member"].id
    for path in (
        f"/admin/machines/{node}/rename",
        f"/admin/machines/{node}/approve",
        f"/admin/machines/{node}/delete",
        "/admin/users",
        "/admin/users/member/role",
        "/admin/keys",
        "/admin/apikeys",
        "/admin/policy",
        "/admin/dns",
        "/admin/settings",
    ):
        assert auditor.post(path, {"name": "x", "role": "owner"}).status_code == 403, path
    assert console.service.get_node(node).given_name == "member-laptop"


def test_member_sees_and_renames_only_their_own_machines(console: Console) -> None:
    member = console.login(roles.MEMBER)
    own, other = console.nodes["member"], console.nodes["admin"]
    listing = member.http.get("/admin/machines").text
    assert "member-laptop" in listing and "admin-server" not in listing
    assert [m["id"] for m in member.http.get("/admin/api/machines").json()] == [own.id]
    assert page_status(member, f"/admin/machines/{other.id}") == 404
    assert member.post(f"/admin/machines/{other.id}/rename", {"name": "x"}).status_code == 404
    r = member.post(f"/admin/machines/{own.id}/rename", {"name": "my-laptop"})
    assert r.status_code == 303
    assert console.service.get_node(own.id).given_name == "my-laptop"
    for page in ("users", "keys", "policy", "dns", "relays", "settings", "audit"):
        assert page_status(member, f"/admin/{page}") == 403, page
    for action in ("approve", "expire", "delete", "tags", "key-expiry", "routes"):
        assert member.post(f"/admin/machines/{own.id}/{action}").status_code == 403, action
    assert console.service.get_node(own.id).key_expiry == own.key_expiry


def test_network_admin_edits_policy_but_not_users(console: Console) -> None:
    netadmin = console.login(roles.NETWORK_ADMIN)
    policy = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
    r = netadmin.post("/admin/policy", {"policy": policy, "action": "save", "version": ""})
    assert r.status_code == 200 and "Policy saved." in r.text
    assert console.service.get_policy() == policy
    assert netadmin.post("/admin/users", {"name": "eve"}).status_code == 403
    assert netadmin.post("/admin/users/member/role", {"role": "admin"}).status_code == 403
    node = console.nodes["member"].id
    assert netadmin.post(f"/admin/machines/{node}/delete").status_code == 403
    assert netadmin.post("/admin/apikeys").status_code == 403


def test_it_admin_manages_users_but_not_policy_nor_owners(console: Console) -> None:
    it = console.login(roles.IT_ADMIN)
    assert it.post("/admin/users", {"name": "eve"}).status_code == 303
    assert it.post("/admin/users/eve/role", {"role": "auditor"}).status_code == 303
    users = {u.name: u.role for u in console.service.list_users()}
    assert users["eve"] == roles.AUDITOR
    it.post("/admin/users/eve/role", {"role": "owner"})
    assert {u.name: u.role for u in console.service.list_users()}["eve"] == roles.AUDITOR
    assert it.post("/admin/policy", {"policy": "{}", "action": "save"}).status_code == 403
    assert it.post("/admin/users/owner/delete", {"force": "1"}).status_code == 403
    assert "owner" in [u.name for u in console.service.list_users()]
    assert "user.set_role" in audit_actions(console)


def test_changes_are_audited_with_the_console_user(console: Console) -> None:
    owner = console.login(roles.OWNER)
    node = console.nodes["member"].id
    owner.post(f"/admin/machines/{node}/approve")
    entry = console.service.list_audit(limit=1)[0]
    assert (entry.action, entry.actor_name, entry.origin) == ("node.authorize", "owner", "console")
    assert entry.target_id == str(node)
    export = owner.http.get("/admin/audit.jsonl")
    assert export.status_code == 200 and '"action":"node.authorize"' in export.text
    owner.post("/admin/logout")
    out, approved = console.service.list_audit(limit=100)[:2]
    assert (out.action, out.actor_name) == ("console.logout", "owner")
    assert (approved.action, approved.actor_name) == ("node.authorize", "owner")
    logins = [e for e in console.service.list_audit(limit=100) if e.action == "console.login"]
    assert logins[0].actor_name == "owner" and logins[0].origin == "console"


# -- the policy editor and keys ------------------------------------------------------


def test_a_failing_policy_is_shown_and_the_old_one_stays(console: Console) -> None:
    owner = console.login(roles.OWNER)
    good = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
    page = owner.post("/admin/policy", {"policy": good, "action": "save", "version": ""})
    bad = '{"acls": [], "tests": [{"src": "owner", "accept": ["member:22"]}]}'
    version = csrf_version(page.text)
    r = owner.post("/admin/policy", {"policy": bad, "action": "save", "version": version})
    assert r.status_code == 400 and "policy refused" in r.text
    assert console.service.get_policy() == good


def csrf_version(html: str) -> str:
    marker = 'name="version" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def test_a_concurrent_policy_edit_is_refused(console: Console) -> None:
    alice, bob = console.login(roles.OWNER), console.login(roles.ADMIN)
    opened = csrf_version(alice.http.get("/admin/policy").text)
    assert csrf_version(bob.http.get("/admin/policy").text) == opened
    first = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}'
    r = bob.post("/admin/policy", {"policy": first, "action": "save", "version": opened})
    assert "Policy saved." in r.text
    second = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:80"]}]}'
    r = alice.post("/admin/policy", {"policy": second, "action": "save", "version": opened})
    assert r.status_code == 400 and "changed by someone else" in r.text
    assert console.service.get_policy() == first
    check = alice.post("/admin/policy", {"policy": second, "action": "check", "version": opened})
    assert "not saved" in check.text and console.service.get_policy() == first


def test_a_new_auth_key_is_shown_once(console: Console) -> None:
    owner = console.login(roles.OWNER)
    r = owner.post("/admin/keys", {"user": "member", "reusable": "1", "preauthorized": "1"})
    assert r.status_code == 200 and "shown only once" in r.text
    key = r.text.split('id="new-key">')[1].split("<")[0]
    assert key.startswith("weftkey-")
    again = owner.http.get("/admin/keys").text
    assert key not in again and key.split("-")[1] in again  # the prefix only
    [record] = [k for k, _ in console.service.list_auth_keys("member") if k.reusable]
    assert record.reusable and record.preauthorized


def test_outcomes_are_shown_once_and_never_taken_from_the_url(console: Console) -> None:
    owner = console.login(roles.OWNER)
    member, admin = console.nodes["member"], console.nodes["admin"]
    page = f"/admin/machines/{member.id}"
    r = owner.post(f"{page}/rename", {"name": admin.given_name})
    assert r.status_code == 303 and r.headers["location"] == page
    shown = owner.http.get(page).text
    assert "is taken by another node" in shown and 'class="error"' in shown
    assert "is taken" not in owner.http.get(page).text  # once
    assert "phish" not in owner.http.get(f"{page}?error=phish&notice=phish").text


def test_machine_actions_change_the_machine(console: Console) -> None:
    it = console.login(roles.IT_ADMIN)
    node = console.nodes["admin"]
    page = f"/admin/machines/{node.id}"
    assert it.post(f"{page}/tags", {"tags": "tag:server, tag:prod"}).status_code == 303
    tagged = console.service.get_node(node.id)
    assert tagged.tags == ("tag:prod", "tag:server") and tagged.user_id is None
    it.post(f"{page}/key-expiry", {"disabled": "1"})
    assert console.service.get_node(node.id).key_expiry_disabled
    assert "expiry disabled" in it.http.get(page).text
    it.post(f"{page}/key-expiry", {"disabled": "0"})
    it.post(f"{page}/expire")
    assert console.service.get_node(node.id).expired_at(time.time())
    assert "expired" in it.http.get("/admin/machines?status=expired").text
    it.post(f"{page}/delete")
    assert node.id not in [n.id for n, _ in console.service.list_nodes()]
    assert it.http.get(page).status_code == 404


def test_dns_and_settings_pages_save(console: Console) -> None:
    owner = console.login(roles.OWNER)
    page = owner.http.get("/admin/dns").text
    document = page.split('aria-label="DNS settings">')[1].split("</textarea>")[0]
    text = html.unescape(document)
    r = owner.post("/admin/dns", {"dns": text, "action": "check"})
    assert r.status_code == 200 and "The DNS settings are valid." in r.text
    r = owner.post("/admin/dns", {"dns": "{not json", "action": "save"})
    assert r.status_code == 400 and 'class="error"' in r.text
    assert owner.post("/admin/dns", {"dns": text, "action": "save"}).status_code == 200
    assert not console.service.tailnet_settings().device_approval
    assert owner.post("/admin/settings", {"device_approval": "1"}).status_code == 303
    assert console.service.tailnet_settings().device_approval
    assert "checked" in owner.http.get("/admin/settings").text
    assert owner.post("/admin/settings", {}).status_code == 303
    assert not console.service.tailnet_settings().device_approval


def test_login_page_offers_the_identity_provider_when_there_is_one(console: Console) -> None:
    http = console.client()
    assert "/oidc/login" not in http.get("/admin/login").text
    console.app.state.oidc_enabled = True
    page = http.get("/admin/login?next=/admin/audit").text
    assert 'href="/oidc/login?next=/admin/audit"' in page
    assert "Log in with your identity provider" in page
