"""The test OpenID Provider and the browserless login (weftlab.oidcop) work end to end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from weftlab.oidcop import OpenIdProvider, sign_in, start_op

RP = "http://127.0.0.1:9"  # nothing listens: sign_in stops at the redirect to it
CALLBACK = f"{RP}/oidc/callback"
CLIENT = {"client_id": "weft-control", "client_secret": "test-secret", "redirect_uris": [CALLBACK]}
ALICE = {"email": "alice@example.com", "email_verified": True, "groups": ["admins"]}


@pytest.fixture(scope="module")
def op() -> Iterator[OpenIdProvider]:
    with start_op(clients=[CLIENT], accounts={"alice": ALICE}, id_token_ttl=600) as op:
        yield op


@dataclass
class Authorization:
    url: str
    state: str
    nonce: str
    verifier: str


def authorization(op: OpenIdProvider) -> Authorization:
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    query = {
        "client_id": CLIENT["client_id"],
        "response_type": "code",
        "redirect_uri": CALLBACK,
        "scope": "openid email profile groups",
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    url = f"{op.metadata()['authorization_endpoint']}?{urlencode(query)}"
    return Authorization(url, state, nonce, verifier)


def callback_query(r: httpx.Response) -> dict[str, str]:
    loc = r.headers["location"]
    assert loc.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


def id_token_claims(op: OpenIdProvider, a: Authorization, code: str) -> dict[str, Any]:
    meta = op.metadata()
    r = httpx.post(
        meta["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": a.verifier,
        },
        auth=(CLIENT["client_id"], CLIENT["client_secret"]),
    )
    r.raise_for_status()
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    token = jwt.decode(r.json()["id_token"], keys)
    claims: dict[str, Any] = token.claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": op.issuer},
        aud={"essential": True, "value": CLIENT["client_id"]},
        nonce={"essential": True, "value": a.nonce},
        exp={"essential": True},
    ).validate(claims)
    return claims


def login(op: OpenIdProvider, sub: str, client: httpx.Client | None = None) -> dict[str, Any]:
    a = authorization(op)
    if client is None:
        with httpx.Client(timeout=5) as c:
            q = callback_query(sign_in(c, a.url, sub, stop_at=RP))
    else:
        q = callback_query(sign_in(client, a.url, sub, stop_at=RP))
    assert q["state"] == a.state and q["iss"] == op.issuer
    return id_token_claims(op, a, q["code"])


def test_discovery(op: OpenIdProvider) -> None:
    meta = op.metadata()
    assert op.issuer.startswith("http://127.0.0.1:")
    assert meta["issuer"] == op.issuer
    assert meta["code_challenge_methods_supported"] == ["S256"]


def test_sign_in_and_code_exchange(op: OpenIdProvider) -> None:
    claims = login(op, "alice")
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["groups"] == ["admins"]
    assert claims["exp"] - claims["iat"] == 600


def test_silent_sso_second_authorize(op: OpenIdProvider) -> None:
    with httpx.Client(timeout=5) as c:
        assert login(op, "alice", c)["sub"] == "alice"
        a = authorization(op)
        q = callback_query(c.get(a.url))  # a session at the OP: straight back, no form
        assert q["state"] == a.state
        assert id_token_claims(op, a, q["code"])["sub"] == "alice"
        # sign_in copes too: no form is shown, so the sub it would type in is never used
        assert login(op, "mallory", c)["sub"] == "alice"


def test_set_and_clear_claims(op: OpenIdProvider) -> None:
    op.set_claims("carol", {"email": "carol@old.example", "groups": ["eng"]})
    assert login(op, "carol")["email"] == "carol@old.example"
    op.set_claims("carol", {"email": "carol@new.example", "groups": []})
    claims = login(op, "carol")
    assert claims["email"] == "carol@new.example" and claims["groups"] == []
    op.clear_claims("carol")
    claims = login(op, "carol")
    assert claims["sub"] == "carol" and "email" not in claims


def test_abort_is_access_denied(op: OpenIdProvider) -> None:
    a = authorization(op)
    with httpx.Client(timeout=5) as c:
        q = callback_query(sign_in(c, a.url, "alice", stop_at=RP, abort=True))
    assert q["error"] == "access_denied" and q["state"] == a.state


def test_missing_node_modules_is_an_error_not_a_skip(monkeypatch, tmp_path) -> None:
    import weftlab.oidcop

    monkeypatch.setattr(weftlab.oidcop, "OP_DIR", tmp_path)
    with pytest.raises(weftlab.oidcop.OpError, match="make install"), start_op(clients=[CLIENT]):
        pass
