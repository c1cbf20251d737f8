"""Tailnet-wide pages: relays, settings (device approval) and the audit log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from weftnet.control.domain import names, roles
from weftnet.control.domain.records import AuditEntry
from weftnet.control.server.admin_approval import AUDIT_EXPORT_PAGE, audit_json
from weftnet.control.server.console.web import (
    PREFIX,
    SECURITY_HEADERS,
    Reader,
    SettingsAdmin,
    act,
    context,
    render,
)

AUDIT_PAGE = 100  # entries per page


def since_value(request: Request) -> tuple[str, float | None]:
    """``since`` from the query: a duration back from now ("24h", "7d"), or nothing."""
    text = request.query_params.get("since", "").strip()
    if not text:
        return "", None
    try:
        return text, context(request).clock() - names.parse_duration(text)
    except ValueError:
        return "", None


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/relays")
    async def relays(request: Request, viewer: Reader) -> Response:
        ctx = context(request)
        own = ctx.own_relays(ctx.base_url(request))
        return render(
            request,
            "relays.html",
            viewer,
            own=own,
            registered=ctx.hub.relays.registrations(),
            now=ctx.clock(),
        )

    @routes.get("/settings")
    async def settings(request: Request, viewer: Reader) -> Response:
        current = await viewer.call(viewer.service.tailnet_settings)
        return render(
            request,
            "settings.html",
            viewer,
            settings=current,
            may_edit=viewer.can(roles.SETTINGS),
        )

    @routes.post("/settings")
    async def save_settings(viewer: SettingsAdmin) -> Response:
        approval = viewer.form.get("device_approval") == "1"
        fn = viewer.service.set_tailnet_settings
        return await act(
            viewer, PREFIX + "/settings", "Settings saved.", fn, device_approval=approval
        )

    @routes.get("/audit")
    async def audit(request: Request, viewer: Reader) -> Response:
        since_text, since = since_value(request)
        before = request.query_params.get("before", "")
        entries: list[AuditEntry] = await viewer.call(
            viewer.service.list_audit,
            limit=AUDIT_PAGE,
            before_id=int(before) if before.isdigit() else None,
            since=since,
        )
        return render(
            request,
            "audit.html",
            viewer,
            entries=entries,
            since=since_text,
            older=entries[-1].id if len(entries) == AUDIT_PAGE else None,
            now=context(request).clock(),
        )

    @routes.get("/audit.jsonl")
    async def audit_export(request: Request, viewer: Reader) -> Response:
        _, since = since_value(request)

        async def lines() -> AsyncIterator[bytes]:
            before: int | None = None
            while True:
                page: list[AuditEntry] = await viewer.call(
                    viewer.service.list_audit,
                    limit=AUDIT_EXPORT_PAGE,
                    before_id=before,
                    since=since,
                )
                for entry in page:
                    yield (json.dumps(audit_json(entry), separators=(",", ":")) + "\n").encode()
                if len(page) < AUDIT_EXPORT_PAGE:
                    return
                before = page[-1].id

        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": 'attachment; filename="weft-audit.jsonl"',
            },
        )

    return routes
