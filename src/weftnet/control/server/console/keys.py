"""The Keys page: auth keys (for devices) and admin API keys. A new key is shown once,
in the answer to the POST that made it (never in a URL, never again)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from weftnet import serverkey
from weftnet.control.domain import roles
from weftnet.control.server.console.web import (
    PREFIX,
    ApiKeyAdmin,
    AuthKeyAdmin,
    Reader,
    Viewer,
    act,
    context,
    render,
)
from weftnet.control.service import ServiceError

PAGE = PREFIX + "/keys"


async def keys_page(
    request: Request, viewer: Viewer, status: int = 200, **values: object
) -> Response:
    service = viewer.service
    users = await viewer.call(service.list_users)
    return render(
        request,
        "keys.html",
        viewer,
        status,
        auth_keys=await viewer.call(service.list_auth_keys),
        api_keys=await viewer.call(service.list_api_keys),
        users=users,
        now=context(request).clock(),
        may_auth_keys=viewer.can(roles.AUTH_KEYS),
        may_api_keys=viewer.can(roles.API_KEYS),
        **values,
    )


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/keys")
    async def keys(request: Request, viewer: Reader) -> Response:
        return await keys_page(request, viewer)

    @routes.post("/keys")
    async def create_auth_key(request: Request, viewer: AuthKeyAdmin) -> Response:
        form, ctx = viewer.form, context(request)
        tags = [t for t in form.get("tags", "").replace(",", " ").split() if t]
        try:
            text, _ = await viewer.call(
                viewer.service.create_auth_key,
                ctx.clock(),
                form.get("user") or None,
                reusable=form.get("reusable") == "1",
                ephemeral=form.get("ephemeral") == "1",
                preauthorized=form.get("preauthorized") == "1",
                tags=tags,
                expiration=form.get("expiration") or None,
            )
        except ServiceError as e:
            return await keys_page(request, viewer, 400, error=str(e))
        text = serverkey.attach(text, ctx.server_public)
        return await keys_page(request, viewer, new_key=text, new_key_kind="auth key")

    @routes.post("/keys/{ref}/revoke")
    async def revoke_auth_key(request: Request, ref: str, viewer: AuthKeyAdmin) -> Response:
        now = context(request).clock()
        fn = viewer.service.revoke_auth_key
        return await act(viewer, PAGE, "Auth key revoked.", fn, ref, now)

    @routes.post("/apikeys")
    async def create_api_key(request: Request, viewer: ApiKeyAdmin) -> Response:
        form = viewer.form
        try:
            text, _ = await viewer.call(
                viewer.service.create_api_key,
                context(request).clock(),
                form.get("expiration") or None,
                form.get("description", ""),
            )
        except ServiceError as e:
            return await keys_page(request, viewer, 400, error=str(e))
        return await keys_page(request, viewer, new_key=text, new_key_kind="API key")

    @routes.post("/apikeys/{prefix}/revoke")
    async def revoke_api_key(request: Request, prefix: str, viewer: ApiKeyAdmin) -> Response:
        now = context(request).clock()
        fn = viewer.service.revoke_api_key
        return await act(viewer, PAGE, "API key revoked.", fn, prefix, now)

    return routes
