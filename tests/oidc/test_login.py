"""OIDC login for devices, end to end: a real OpenID provider (weftlab.oidcop), a
``weft-control serve`` on a thread of this process (SQLite), a FakeNode for ``weft up``
and an httpx client with a cookie jar as the browser."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from weftlab.control import admin
from weftlab.oidcop import OpenIdProvider, sign_in, start_op

from .rpkit import (
    ALICE,
    CSRF,
    SECRET,
    Rp,
    Server,
    browser,
    confirm,
    free_port,
    register,
    serve,
    sign_in_at,
    start_node,
)


def nodes(server: Server) -> list[dict[str, Any]]:
    return list(server.api("GET", "/nodes"))


def users(server: Server) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in server.api("GET", "/users")}


def login(server: Server, sub: str = "alice", b: httpx.Client | None = None) -> httpx.Response:
    _node, url, _http = start_node(server)
    page = sign_in_at(b or browser(), server, url, sub)
    return page


def test_happy_path_registers_the_node_as_the_signed_in_user(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    with serve(rp, op, tmp_path) as server:
        node, url, _ = start_node(server, "desk")
        assert httpx.get(url).status_code == 302
        b = browser()
        page = sign_in_at(b, server, url, "alice")
        assert "alice@example.com" in page.text and "desk" in page.text
        assert nodes(server) == []  # nothing before the confirm POST
        done = confirm(b, page)
        assert done.status_code == 200 and "Device connected" in done.text
        answer = register(node, followup=url)
        assert answer.machine_authorized and answer.user is not None
        assert answer.user.name == "alice@example.com"
        (n,) = nodes(server)
        assert n["user"] == "alice@example.com"
        identities = server.api("GET", "/users/alice@example.com/identities")
        assert [(i["issuer"], i["subject"]) for i in identities] == [(op.issuer, "alice")]
        assert confirm(b, page).status_code in (403, 404, 409)  # once only


def test_node_auth_method_is_oidc(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        b = browser()
        confirm(b, login(server, b=b))
        with sqlite3.connect(server.data_dir / "control.db") as db:
            assert db.execute("SELECT auth_method FROM nodes").fetchall() == [("oidc",)]


@pytest.mark.parametrize(
    ("claims", "oidc", "message"),
    [
        (ALICE, {"allowed_domains": ("corp.example",)}, "not in a domain"),
        (ALICE, {"allowed_groups": ("admins",)}, "not in a group"),
        ({**ALICE, "email_verified": False}, {"allowed_domains": ("example.com",)}, "verified"),
        (ALICE, {"allowed_users": ("bob@example.com",)}, "may not log in"),
    ],
)
def test_filters_refuse(
    rp: Rp, op: OpenIdProvider, tmp_path: Path, claims: Any, oidc: Any, message: str
) -> None:
    op.set_claims("alice", claims)
    with serve(rp, op, tmp_path, **oidc) as server:
        page = login(server)
        assert page.status_code == 403 and message in page.text
        assert users(server) == {} and nodes(server) == []


def test_unverified_email_passes_a_group_filter_only(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    op.set_claims("alice", {**ALICE, "email_verified": False, "preferred_username": "alice"})
    with serve(rp, op, tmp_path, allowed_groups=("eng",)) as server:
        b = browser()
        assert confirm(b, login(server, b=b)).status_code == 200
        assert list(users(server)) == ["alice"]  # the unverified email is not the name


def test_replayed_callback_is_refused(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        _node, url, _http = start_node(server)
        b = browser()
        r = sign_in(b, url, "alice", stop_at=server.url + "/oidc/callback")
        callback = r.headers["location"]
        cookies = dict(b.cookies)
        assert b.get(callback).status_code == 303
        b2 = httpx.Client(cookies=cookies, timeout=10)
        again = b2.get(callback)
        assert again.status_code == 400 and "already used" in again.text


def test_callback_needs_the_state_cookie(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        _node, url, _http = start_node(server)
        r = sign_in(browser(), url, "alice", stop_at=server.url + "/oidc/callback")
        page = httpx.get(r.headers["location"])  # another browser: no cookie
        assert page.status_code == 400 and "did not start in this browser" in page.text


def test_wrong_nonce_is_refused(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        _node, url, _http = start_node(server)
        b = browser()
        r = sign_in(b, url, "alice", stop_at=server.url + "/oidc/callback")
        server.sql("UPDATE oidc_logins SET nonce = 'tampered'")
        page = b.get(r.headers["location"])
        assert page.status_code == 403 and "nonce" in page.text
        assert users(server) == {}


def test_token_for_another_audience_is_refused(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    # A misconfigured server: its client id is another client's; the provider issues
    # the token to the client it authenticated, and the server refuses that audience.
    with serve(rp, op, tmp_path, client_id="other-client") as server:
        from weftnet.control.server import oidc

        client = oidc.OidcClient(oidc.OidcConfig(op.issuer, "weft-control", SECRET, server.url))
        asyncio.run(client.discover())
        page = login(server)
        assert page.status_code == 200  # the server's own client works
        token = _id_token(op, rp, "other-client")
        with pytest.raises(oidc.OidcError, match="aud"):
            asyncio.run(client.verify(token, "n"))


def _id_token(op: OpenIdProvider, rp: Rp, client_id: str) -> str:
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    query = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": f"{rp.url}/oidc/callback",
        "scope": "openid",
        "state": "s" * 20,
        "nonce": "n",
        "code_challenge": create_s256_code_challenge("v" * 50),
        "code_challenge_method": "S256",
    }
    meta = op.metadata()
    url = str(httpx.URL(meta["authorization_endpoint"], params=query))
    r = sign_in(browser(), url, "alice", stop_at=rp.url)
    code = httpx.URL(r.headers["location"]).params["code"]
    token = httpx.post(
        meta["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": f"{rp.url}/oidc/callback",
            "code_verifier": "v" * 50,
        },
        auth=(client_id, SECRET),
    )
    token.raise_for_status()
    return str(token.json()["id_token"])


def test_abort_at_the_provider(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        _node, url, _http = start_node(server)
        page = sign_in_at(browser(), server, url, "alice", abort=True)
        assert page.status_code == 400 and "access_denied" in page.text
        assert users(server) == {}


def test_silent_sso_registers_nothing_without_the_confirm_post(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    with serve(rp, op, tmp_path) as server:
        victim = browser()
        confirm(victim, login(server, b=victim))
        # The attacker's login link, opened in the victim's browser: no form at the OP.
        attacker, url, _http = start_node(server, "evil")
        page = sign_in_at(victim, server, url, "mallory")
        assert "evil" in page.text and "alice@example.com" in page.text
        assert len(nodes(server)) == 1
        # The attacker can't confirm from elsewhere: the page needs the victim's cookie.
        assert httpx.get(str(page.url)).status_code == 403
        token = CSRF.search(page.text)
        assert token is not None
        forged = httpx.post(str(page.url), data={"csrf": token.group(1), "action": "confirm"})
        assert forged.status_code == 403
        # The victim's own browser without the form's token is refused too.
        assert victim.post(str(page.url), data={"action": "confirm"}).status_code == 403
        assert len(nodes(server)) == 1
        assert not register(attacker, followup=url).machine_authorized


def test_two_issuers_with_one_email_are_two_users(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    with serve(rp, op, tmp_path) as server:
        b = browser()
        confirm(b, login(server, b=b))
    with (
        start_op(clients=[rp.client()], accounts={"alice": ALICE}) as op2,
        serve(rp, op2, tmp_path) as server,
    ):
        page = login(server)  # same email, another issuer
        assert page.status_code == 403 and "users link alice@example.com" in page.text
        assert op2.issuer in page.text
        server.api("POST", "/users", json={"name": "alice-second"})
        server.api(
            "POST",
            "/users/alice-second/identities",
            json={"issuer": op2.issuer, "subject": "alice"},
        )
        b = browser()
        assert confirm(b, login(server, b=b)).status_code == 200
        assert sorted(users(server)) == ["alice-second", "alice@example.com"]
        owners = sorted(n["user"] for n in nodes(server))
        assert owners == ["alice-second", "alice@example.com"]


def test_name_taken_by_a_local_user_then_link(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        server.api("POST", "/users", json={"name": "alice@example.com"})
        page = login(server)
        assert page.status_code == 403
        assert f"users link alice@example.com --issuer {op.issuer} --subject alice" in page.text
        cli = {"server": server.url, "api_key": server.api_key}
        admin(
            "users", "link", "alice@example.com", "--issuer", op.issuer, "--subject", "alice", **cli
        )
        b = browser()
        assert confirm(b, login(server, b=b)).status_code == 200
        listed = json.loads(admin("users", "list", "--json", **cli).stdout)
        assert [i["subject"] for i in listed[0]["identities"]] == ["alice"]
        admin("users", "unlink", "alice@example.com", "--issuer", op.issuer, **cli)
        assert server.api("GET", "/users/alice@example.com/identities") == []
        (n,) = nodes(server)
        assert n["user"] == "alice@example.com"


def test_expiry_from_token(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path, expiry_from_token=True) as server:
        b = browser()
        before = time.time()
        confirm(b, login(server, b=b))
        (n,) = nodes(server)
        assert before + 500 < n["key_expiry"] < before + 700  # id_token_ttl 600


def test_group_removed_between_logins(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path, allowed_groups=("eng",)) as server:
        b = browser()
        confirm(b, login(server, b=b))
        op.set_claims("alice", {**ALICE, "groups": []})
        page = login(server)
        assert page.status_code == 403 and "not in a group" in page.text


def test_email_changed_same_user_name_unchanged(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path) as server:
        b = browser()
        confirm(b, login(server, b=b))
        op.set_claims("alice", {**ALICE, "email": "alice@new.example"})
        b = browser()
        confirm(b, login(server, b=b))
        assert list(users(server)) == ["alice@example.com"]
        (identity,) = server.api("GET", "/users/alice@example.com/identities")
        assert identity["email"] == "alice@new.example"
        assert {n["user"] for n in nodes(server)} == {"alice@example.com"}


def test_provider_down_at_start_answers_503(rp: Rp, tmp_path: Path) -> None:
    down = OpenIdProvider.__new__(OpenIdProvider)
    down.issuer = f"http://127.0.0.1:{free_port()}"
    with serve(rp, down, tmp_path) as server:
        _node, url, _http = start_node(server)
        r = httpx.get(url)
        assert r.status_code == 503 and "login is unavailable" in r.text
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 200 and health.json()["oidc_login"] == "unavailable"


def test_console_login_hands_the_user_to_the_console(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    with serve(rp, op, tmp_path) as server:
        assert server.app.state.oidc_enabled and server.app.state.oidc_issuer == op.issuer
        console_sign_in = server.app.state.console_sign_in
        server.app.state.console_sign_in = None  # no console: nothing to log in to
        assert httpx.get(f"{server.url}/oidc/login?next=/admin/x").status_code == 404
        server.app.state.console_sign_in = console_sign_in

        b = browser()
        r = sign_in(
            b,
            f"{server.url}/oidc/login?next=/admin/machines?q=laptop",
            "alice",
            stop_at=server.url + "/oidc/callback",
        )
        back = b.get(r.headers["location"])  # the callback: a session, then where we were
        assert back.status_code == 303, back.text
        assert back.headers["location"].endswith("/admin/machines?q=laptop")
        page = b.get(server.url + back.headers["location"])
        assert page.status_code == 200 and ">Alice<" in page.text and "Member" in page.text
        assert nodes(server) == []


def test_owner_and_admin_group_bootstrap(rp: Rp, op: OpenIdProvider, tmp_path: Path) -> None:
    with serve(rp, op, tmp_path, owner="Alice@example.com", admin_group="eng") as server:
        b = browser()
        confirm(b, login(server, b=b))
        with sqlite3.connect(server.data_dir / "control.db") as db:
            assert db.execute("SELECT role FROM users").fetchall() == [("owner",)]


def test_relogin_as_another_identity_reowns_the_node_through_the_same_checks(
    rp: Rp, op: OpenIdProvider, tmp_path: Path
) -> None:
    with serve(rp, op, tmp_path) as server:
        server.api("PATCH", "/settings", json={"device_approval": True})
        node, url, _ = start_node(server, "desk")
        b = browser()
        confirm(b, sign_in_at(b, server, url, "alice"))
        (first,) = nodes(server)
        server.api("POST", f"/nodes/{first['id']}/authorize")
        # The same machine logs in again (a new node key); bob signs in this time.
        node.rotate_node_key()
        answer = register(node)
        assert answer.auth_url is not None
        other = browser()
        page = sign_in_at(other, server, answer.auth_url, "bob")
        assert "bob" in page.text and "desk" in page.text
        assert nodes(server)[0]["user"] == "alice@example.com"  # nothing before the confirm
        assert confirm(other, page).status_code == 200
        (again,) = nodes(server)
        assert (again["id"], again["ipv4"]) == (first["id"], first["ipv4"])
        assert again["user"] == "bob" and again["authorized"] is False  # a new owner waits
        entries = [(e["action"], e["details"].get("user")) for e in server.api("GET", "/audit")]
        assert ("node.register", "bob") in entries
