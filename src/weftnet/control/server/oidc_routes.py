"""HTTP routes of the OIDC login: ``/register/<code>``, ``/oidc/callback``, the confirm
page, and ``/oidc/login`` for the web console.

Theory of operation (docs/identity.md): ``GET /register/<code>`` stores an
authorization request (``oidc_logins``: the SHA-256 of its state, the nonce, the PKCE
verifier), sets the per-state cookie ``weft_oidc_<state[:8]>`` (HttpOnly, SameSite=Lax,
Secure with an https server URL, path /oidc/callback) and redirects to the provider.
``GET /oidc/callback`` checks the cookie, takes the request row once, verifies the
login and maps the identity to a user; for a node it puts the user on the pending
login, sets a confirm cookie bound to (code, user) by an HMAC under a key derived from
the server key, and 303s to ``/register/<code>/confirm``. Only a POST there, carrying
the same token in the form and the cookie, registers the node: a silent SSO at the
provider never registers anything by itself, and nobody but the browser that signed in
can confirm. For the console, the callback hands the user to
``app.state.console_sign_in(request, user)``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import secrets
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from weftnet.control.domain import identity
from weftnet.control.domain.records import OidcLogin, Pending, User
from weftnet.control.server.oidc import CALLBACK_PATH, OidcClient, OidcError
from weftnet.control.service import ControlService, ServiceError

log = logging.getLogger(__name__)

STATE_COOKIE = "weft_oidc_"
CONFIRM_COOKIE = "weft_confirm_"
CONSOLE_LOGIN_TTL_S = 15 * 60.0


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def confirm_key(server_private: bytes) -> bytes:
    return hashlib.sha256(b"weft oidc confirm\0" + server_private).digest()


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def error_page(message: str, status: int = 400) -> HTMLResponse:
    return page("Login failed", f"<p>{html.escape(message)}</p>", status)


def fingerprint(machine_key: str) -> str:
    digest = hashlib.sha256(machine_key.encode()).hexdigest()[:20]
    return ":".join(digest[i : i + 4] for i in range(0, 20, 4))


def router(
    service: ControlService,
    client: OidcClient,
    clock: Callable[[], float],
    secret: bytes,
    on_login_approved: Callable[[str], None],
) -> APIRouter:
    cfg = client.config
    routes = APIRouter()

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    def confirm_token(code: str, user_id: int) -> str:
        return hmac.new(secret, f"{code}\0{user_id}".encode(), hashlib.sha256).hexdigest()

    async def start(
        purpose: str, code: str | None, return_to: str | None, ttl_s: float
    ) -> Response:
        if not client.ready:
            return error_page("login is unavailable: the identity provider cannot be reached", 503)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        now = clock()
        login = OidcLogin(
            state_hash=state_hash(state),
            purpose=purpose,
            nonce=nonce,
            code_verifier=verifier,
            pending_code=code,
            return_to=return_to,
            created_at=now,
            expires_at=now + ttl_s,
        )
        await call(service.begin_oidc_login, login)
        r = RedirectResponse(client.authorize_url(state, nonce, verifier), status_code=302)
        r.set_cookie(
            STATE_COOKIE + state[:8],
            state,
            max_age=int(ttl_s),
            path=CALLBACK_PATH,
            secure=cfg.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return r

    @routes.get("/register/{code}")
    async def register_start(code: str) -> Response:
        try:
            pending: Pending = await call(service.open_pending, code, clock())
        except ServiceError as e:
            return error_page(str(e), 404)
        return await start("node", pending.code, None, max(pending.expires_at - clock(), 60))

    @routes.get("/oidc/login")
    async def console_start(request: Request, next: str | None = None) -> Response:
        if getattr(request.app.state, "console_sign_in", None) is None:
            return error_page("there is no web console here", 404)
        return await start("console", None, identity.safe_next(next), CONSOLE_LOGIN_TTL_S)

    @routes.get(CALLBACK_PATH)
    async def callback(request: Request) -> Response:
        q = request.query_params
        state = q.get("state", "")
        login = None
        cookie = request.cookies.get(STATE_COOKIE + state[:8], "") if len(state) >= 16 else ""
        if cookie and hmac.compare_digest(cookie, state):
            login = await call(service.take_oidc_login, state_hash(state), clock())
        if "error" in q:
            detail = q["error"] + (
                f" ({q['error_description']})" if q.get("error_description") else ""
            )
            return _clear(error_page(f"the identity provider says: {detail}"), state)
        if not cookie or not hmac.compare_digest(cookie, state):
            return error_page(
                "this login did not start in this browser (or its cookie expired): start again"
            )
        if login is None:
            return _clear(
                error_page("this login link was already used or has expired: start again"), state
            )
        try:
            claims = await client.finish(q.get("code", ""), login.code_verifier, login.nonce)
            user: User = await call(service.sign_in, claims, cfg.rules, clock())
            if login.purpose == "console":
                console = getattr(request.app.state, "console_sign_in", None)
                if console is None:
                    return error_page("there is no web console here", 404)
                response: Response = await console(request, user, login.return_to)
                return _clear(response, state)
            assert login.pending_code is not None
            code = login.pending_code
            await call(service.attach_login, code, user, claims, cfg.rules, clock())
        except (OidcError, ServiceError) as e:
            log.info("OIDC login refused: %s", e)
            return _clear(error_page(str(e), 403), state)
        r = RedirectResponse(f"/register/{code}/confirm", status_code=303)
        r.set_cookie(
            CONFIRM_COOKIE + code[:8],
            confirm_token(code, user.id),
            path=f"/register/{code}",
            secure=cfg.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return _clear(r, state)

    def _clear(response: Response, state: str) -> Response:
        if state:
            response.delete_cookie(STATE_COOKIE + state[:8], path=CALLBACK_PATH)
        return response

    async def signed_in(request: Request, code: str) -> tuple[Pending, User, str] | Response:
        try:
            pending: Pending = await call(service.open_pending, code, clock())
        except ServiceError as e:
            return error_page(str(e), 404)
        users = {u.id: u for u in await call(service.list_users)}
        user = users.get(pending.user_id) if pending.user_id is not None else None
        if user is None:
            return error_page("sign in first: open the login link again", 403)
        token = confirm_token(code, user.id)
        if not hmac.compare_digest(request.cookies.get(CONFIRM_COOKIE + code[:8], ""), token):
            return error_page("this login was not signed in from this browser: start again", 403)
        return pending, user, token

    @routes.get("/register/{code}/confirm")
    async def confirm_page(request: Request, code: str) -> Response:
        found = await signed_in(request, code)
        if isinstance(found, Response):
            return found
        pending, user, token = found
        e = html.escape
        return page(
            "Connect this device?",
            f"<p>Signed in as <b>{e(user.name)}</b>.</p>"
            f"<dl><dt>Device</dt><dd>{e(pending.hostname or '(no name)')}</dd>"
            f"<dt>OS</dt><dd>{e(pending.os or 'unknown')}</dd>"
            f"<dt>Machine key</dt><dd><code>{e(fingerprint(pending.machine_key))}</code></dd></dl>"
            "<p>Only connect a device you just started <code>weft up</code> on.</p>"
            f"<form method='post'><input type='hidden' name='csrf' value='{e(token)}'>"
            "<button name='action' value='confirm'>Connect</button> "
            "<button name='action' value='cancel'>Cancel</button></form>",
        )

    @routes.post("/register/{code}/confirm")
    async def confirm(
        request: Request, code: str, csrf: str = Form(""), action: str = Form("")
    ) -> Response:
        found = await signed_in(request, code)
        if isinstance(found, Response):
            return found
        _pending, user, token = found
        if not hmac.compare_digest(csrf, token):
            return error_page("the form is stale or forged (CSRF): open the login link again", 403)
        done = page("Cancelled", "<p>The device was not connected.</p>")
        if action == "confirm":
            try:
                registered = await call(service.confirm_login, code, user.id, clock())
            except ServiceError as e:
                return error_page(str(e), 409)
            on_login_approved(code)
            done = page(
                "Device connected",
                f"<p>{html.escape(registered.node.given_name)} is now on the tailnet as"
                f" {html.escape(user.name)}. You can close this window.</p>",
            )
        done.delete_cookie(CONFIRM_COOKIE + code[:8], path=f"/register/{code}")
        return done

    return routes
