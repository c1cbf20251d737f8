"""Logging in and out of the console: the local password form, ``console_sign_in`` (the
identity-provider callback's way in), and logout.

The login form has no session yet, so its CSRF defence is a double-submit token: GET
sets it in a cookie and the form; POST needs both to match. Failed attempts are
limited per client address (``FailedLogins``).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from weftnet.control.domain.records import User
from weftnet.control.server.console.web import (
    COOKIE,
    LOGIN_COOKIE,
    PREFIX,
    AnyUser,
    actor_for,
    client_addr,
    context,
    local_path,
    render,
    set_cookie,
)
from weftnet.control.service import Unauthorized
from weftnet.control.service.audit import acting_as
from weftnet.control.service.consoleauth import ABSOLUTE_TIMEOUT_S, SignedIn

MAX_FAILURES = 10  # failed logins per address within FAILURE_WINDOW_S
FAILURE_WINDOW_S = 15 * 60.0
MAX_ADDRESSES = 10_000  # addresses tracked; the oldest are forgotten beyond this


class FailedLogins:
    """Failed password logins per client address in a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window_s: float = FAILURE_WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, addr: str, now: float) -> deque[float]:
        times = self._failures.get(addr, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def blocked(self, addr: str, now: float) -> bool:
        return len(self._recent(addr, now)) >= self.limit

    def failed(self, addr: str, now: float) -> None:
        if addr not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))
        times = self._recent(addr, now)
        times.append(now)
        self._failures[addr] = times

    def succeeded(self, addr: str) -> None:
        self._failures.pop(addr, None)


async def console_sign_in(request: Request, user: User, next_path: str | None = None) -> Response:
    """Start a console session for ``user`` (signed in by some other means, e.g. the
    identity provider) and redirect to ``next_path`` (default: the request's ``next``
    query parameter) if it is a local console path, else to the machine list. A
    disabled user gets the login page with an error, and no session."""
    wanted = next_path if next_path is not None else request.query_params.get("next")
    return await sign_in(request, user, local_path(wanted))


async def sign_in(request: Request, user: User, target: str) -> Response:
    ctx = context(request)

    def start() -> SignedIn:
        with acting_as(actor_for(user, request)):
            return ctx.service.console_auth.new_session(
                user.id, ctx.clock(), client_addr(request), request.headers.get("user-agent", "")
            )

    try:
        signed_in = await anyio.to_thread.run_sync(start)
    except Unauthorized as e:
        return render(request, "login.html", None, 403, error=str(e), next=PREFIX, login_csrf="")
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, request, COOKIE, signed_in.token, int(ABSOLUTE_TIMEOUT_S))
    return response


def router() -> APIRouter:
    routes = APIRouter()
    failures = FailedLogins()

    def login_page(
        request: Request, next_path: str, error: str = "", status: int = 200
    ) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(
            request, "login.html", None, status, error=error, next=next_path, login_csrf=token
        )
        set_cookie(response, request, LOGIN_COOKIE, token, 3600)
        return response

    @routes.get("/login")
    async def show_login(request: Request) -> Response:
        return login_page(request, local_path(request.query_params.get("next")))

    @routes.post("/login")
    async def log_in(request: Request) -> Response:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        next_path = local_path(values.get("next"))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        sent = values.get("csrf", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            return login_page(request, next_path, "The form expired: please try again.", 403)
        addr, now = client_addr(request), time.time()
        if failures.blocked(addr, now):
            return login_page(request, next_path, "Too many failed logins: wait a while.", 429)
        ctx = context(request)
        try:
            user = await anyio.to_thread.run_sync(
                ctx.service.console_auth.check_password,
                values.get("username", ""),
                values.get("password", ""),
            )
        except Unauthorized as e:
            failures.failed(addr, now)
            return login_page(request, next_path, f"Login failed: {e}.", 401)
        failures.succeeded(addr)
        response = await sign_in(request, user, next_path)
        response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    @routes.post("/logout")
    async def log_out(request: Request, viewer: AnyUser) -> Response:
        token = request.cookies.get(COOKIE, "")
        await viewer.call(viewer.service.console_auth.end_session, token, context(request).clock())
        response = RedirectResponse(PREFIX + "/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    return routes
