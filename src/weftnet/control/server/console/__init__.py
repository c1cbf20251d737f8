"""The web admin console at /admin: server-rendered pages over the same service calls
as the admin API (see docs/console.md).

``install(app, ctx)`` adds the console's routes, its static files (/admin/static), its
error pages, and ``app.state.console_sign_in`` (``login.console_sign_in``: how the
identity-provider login starts a console session). Each page's routes live in their
own module; ``web`` holds the one dependency every route takes (``need``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from weftnet.control.server.console import keys, login, machines, policy, tailnet, users
from weftnet.control.server.console.web import PREFIX, OwnMachines, install_error_pages

if TYPE_CHECKING:
    from weftnet.control.server.node_api import ControlContext

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI, ctx: ControlContext) -> None:
    app.state.control = ctx
    app.state.console_sign_in = login.console_sign_in
    if not hasattr(app.state, "oidc_enabled"):
        app.state.oidc_enabled = False
    home = APIRouter()

    @home.get("")
    @home.get("/")
    async def console_home(_viewer: OwnMachines) -> Response:
        return RedirectResponse(PREFIX + "/machines", status_code=303)

    for routes in (
        home,
        login.router(),
        machines.router(),
        users.router(),
        keys.router(),
        policy.router(),
        tailnet.router(),
    ):
        app.include_router(routes, prefix=PREFIX, include_in_schema=False)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    install_error_pages(app)
