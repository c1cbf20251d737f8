"""The console's plumbing: who is asking (``need``), CSRF, rendering, cookies, errors.

Theory of operation: every console route except the login page and the static files
takes exactly one ``Depends(need(PERMISSION))``. It fails closed, in this order:

1. no valid session cookie: ``NotSignedIn`` (a page redirects to the login page, the
   JSON endpoints and every write answer 401);
2. a write (POST/PUT/PATCH/DELETE) without the session's CSRF token, in the form field
   ``csrf`` or the ``X-CSRF-Token`` header: 403, before the handler runs;
3. the user's role lacks ``PERMISSION`` (roles.allows): 403.

It returns a ``Viewer``: the user, the session, the form (for writes) and the audit
``Actor``; handlers run service calls through ``viewer.call``, inside
``acting_as(actor)``, so the service's audit entries name the console user.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import anyio.to_thread
import jinja2
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from weftnet.control.domain import roles
from weftnet.control.domain.records import ConsoleSession, User
from weftnet.control.server.console import view
from weftnet.control.service import ControlService, ServiceError, Unauthorized
from weftnet.control.service.audit import ORIGIN_CONSOLE, Actor, acting_as

if TYPE_CHECKING:
    from weftnet.control.server.node_api import ControlContext

PREFIX = "/admin"
COOKIE = "weft_session"
LOGIN_COOKIE = "weft_login_csrf"  # double-submit token of the login form (no session yet)
FLASH_COOKIE = "weft_flash"  # the outcome of a change, shown once by the next page
MAX_FLASH = 1000  # characters of a message kept
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

_templates.globals.update(ago=view.ago, until=view.until, iso=view.iso)


class NotSignedIn(Exception):
    """No valid console session."""


class Denied(Exception):
    """A session, but no permission (or no CSRF token) for this."""


class Missing(Exception):
    """No such thing, or not one this user may see (404 either way)."""


@dataclass
class Viewer:
    user: User
    session: ConsoleSession
    actor: Actor
    service: ControlService
    request: Request
    form: Mapping[str, str] = field(default_factory=dict)

    def can(self, permission: str) -> bool:
        return roles.allows(self.user.role, permission)

    @property
    def csrf(self) -> str:
        return self.session.csrf_token

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a (blocking) service call in a worker thread, as this console user."""

        def run() -> Any:
            with acting_as(self.actor):
                return fn(*args, **kwargs)

        return await anyio.to_thread.run_sync(run)


def context(request: Request) -> ControlContext:
    ctx: ControlContext = request.app.state.control
    return ctx


def client_addr(request: Request) -> str:
    return request.client.host if request.client else ""


def actor_for(user: User, request: Request) -> Actor:
    """Who the audit log names for what ``user`` does in the console."""
    return Actor(
        type="user",
        id=str(user.id),
        name=user.name,
        origin=ORIGIN_CONSOLE,
        remote_addr=client_addr(request),
    )


def secure_cookies(request: Request) -> bool:
    """Cookies are Secure when the server's public URL (or this request) is https."""
    base = context(request).server_url or str(request.base_url)
    return base.startswith("https:")


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )


def need(permission: str | None) -> Callable[[Request], Awaitable[Viewer]]:
    """The dependency of every console route: a signed-in user with ``permission``
    (None: any signed-in user), and the CSRF token on writes."""

    async def dependency(request: Request) -> Viewer:
        ctx = context(request)
        token = request.cookies.get(COOKIE, "")
        if not token:
            raise NotSignedIn
        try:
            signed_in = await anyio.to_thread.run_sync(
                ctx.service.console_auth.session_user, token, ctx.clock()
            )
        except Unauthorized:
            raise NotSignedIn from None
        user, session = signed_in.user, signed_in.session
        form: Mapping[str, str] = {}
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")
            ):
                parsed = await request.form()
                form = {k: v for k, v in parsed.items() if isinstance(v, str)}
                sent = form.get(CSRF_FIELD, "")
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise Denied("missing or wrong CSRF token: reload the page and try again")
        if permission is not None and not roles.allows(user.role, permission):
            raise Denied(f"your role ({roles.LABELS.get(user.role, user.role)}) may not do this")
        return Viewer(user, session, actor_for(user, request), ctx.service, request, form)

    dependency.permission = permission  # type: ignore[attr-defined]  # read by tests
    return dependency


# The permission each route needs, as the type of its ``viewer`` parameter.
AnyUser = Annotated[Viewer, Depends(need(None))]
OwnMachines = Annotated[Viewer, Depends(need(roles.OWN_MACHINES))]
Reader = Annotated[Viewer, Depends(need(roles.READ_ALL))]
MachineAdmin = Annotated[Viewer, Depends(need(roles.MACHINES))]
UserAdmin = Annotated[Viewer, Depends(need(roles.USERS))]
AuthKeyAdmin = Annotated[Viewer, Depends(need(roles.AUTH_KEYS))]
PolicyAdmin = Annotated[Viewer, Depends(need(roles.POLICY))]
ApiKeyAdmin = Annotated[Viewer, Depends(need(roles.API_KEYS))]
SettingsAdmin = Annotated[Viewer, Depends(need(roles.SETTINGS))]


def wants_html(request: Request) -> bool:
    return request.method in SAFE_METHODS and not request.url.path.startswith(PREFIX + "/api/")


def render(
    request: Request,
    template: str,
    viewer: Viewer | None = None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    flash = read_flash(request)
    page = _templates.get_template(template).render(
        request=request,
        viewer=viewer,
        roles=roles,
        prefix=PREFIX,
        oidc_enabled=bool(getattr(request.app.state, "oidc_enabled", False)),
        notice=values.pop("notice", flash.get("notice", "")),
        error=values.pop("error", flash.get("error", "")),
        **values,
    )
    response = HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path=PREFIX)
    return response


def read_flash(request: Request) -> dict[str, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(request.cookies.get(FLASH_COOKIE, "")))
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: str(value[k])[:MAX_FLASH] for k in ("notice", "error") if value.get(k)}


def back(viewer: Viewer, path: str, notice: str = "", error: str = "") -> RedirectResponse:
    """303 to a console page after a change; the next page shows ``notice`` or
    ``error`` once (a short-lived cookie: never text in the URL, which anyone could
    put in a link)."""
    response = RedirectResponse(path, status_code=303)
    flash = {k: v[:MAX_FLASH] for k, v in (("notice", notice), ("error", error)) if v}
    value = base64.urlsafe_b64encode(json.dumps(flash).encode()).decode()
    set_cookie(response, viewer.request, FLASH_COOKIE, value, 60)
    return response


def login_redirect(request: Request) -> RedirectResponse:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{PREFIX}/login?next={quote(here, safe='')}", status_code=303)


def local_path(next_path: str | None) -> str:
    """``next_path`` if it is a console path on this server, else the console's home."""
    if (
        next_path
        and next_path.startswith(PREFIX)
        and not next_path.startswith("//")
        and "\\" not in next_path
        and all(c.isprintable() for c in next_path)
        and (len(next_path) == len(PREFIX) or next_path[len(PREFIX)] in "/?")
    ):
        return next_path
    return PREFIX + "/machines"


def install_error_pages(app: Any) -> None:
    @app.exception_handler(NotSignedIn)
    async def _not_signed_in(request: Request, _exc: Exception) -> Response:
        if wants_html(request):
            return login_redirect(request)
        return JSONResponse({"error": "not logged in"}, status_code=401, headers=SECURITY_HEADERS)

    @app.exception_handler(Denied)
    async def _denied(request: Request, exc: Exception) -> Response:
        if wants_html(request):
            return render(request, "error.html", None, 403, title="Not allowed", message=str(exc))
        return JSONResponse({"error": str(exc)}, status_code=403, headers=SECURITY_HEADERS)

    @app.exception_handler(Missing)
    async def _missing(request: Request, exc: Exception) -> Response:
        if wants_html(request):
            return render(request, "error.html", None, 404, title="Not found", message=str(exc))
        return JSONResponse({"error": str(exc)}, status_code=404, headers=SECURITY_HEADERS)


async def act(
    viewer: Viewer, path: str, notice: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
) -> Response:
    """Run a change as ``viewer``, then 303 back to ``path`` with ``notice`` (or the
    service's refusal as the error)."""
    try:
        await viewer.call(fn, *args, **kwargs)
    except ServiceError as e:
        return back(viewer, path, error=str(e))
    return back(viewer, path, notice=notice)
