"""Admin API routes for device approval, key expiry, tags, the tailnet's settings and
the audit log (docs/identity.md, docs/console.md); ``admin_api.router`` adds them to its
router, behind the same API-key dependency (which sets the audit actor)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from weftnet.control.domain.records import AuditEntry, Node
from weftnet.control.server.hub import Hub
from weftnet.control.service import ControlService

AUDIT_EXPORT_PAGE = 500  # entries read per transaction while streaming the export
Call = Callable[..., Awaitable[Any]]


class KeyExpiry(BaseModel):
    disabled: bool


class NodeTags(BaseModel):
    tags: list[str]


class TailnetSettingsBody(BaseModel):
    device_approval: bool


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "ts": entry.ts,
        "actor": {"type": entry.actor_type, "id": entry.actor_id, "name": entry.actor_name},
        "origin": entry.origin,
        "action": entry.action,
        "target": {"type": entry.target_type, "id": entry.target_id},
        "details": entry.details,
        "remote_addr": entry.remote_addr,
    }


def add_routes(
    api: APIRouter, service: ControlService, hub: Hub, clock: Callable[[], float], call: Call
) -> None:
    from weftnet.control.server.admin_api import node_json

    async def one_node(node: Node) -> dict[str, Any]:
        owner = await call(service.node_owner, node)
        return node_json(node, owner.name if owner else None, node.id in hub.online(), clock())

    @api.post("/nodes/{node_id}/authorize")
    async def authorize_node(node_id: int) -> dict[str, Any]:
        return await one_node(await call(service.authorize_node, node_id, clock()))

    @api.post("/nodes/{node_id}/key-expiry")
    async def key_expiry(node_id: int, body: KeyExpiry) -> dict[str, Any]:
        node = await call(service.set_key_expiry_disabled, node_id, body.disabled, clock())
        return await one_node(node)

    @api.post("/nodes/{node_id}/tags")
    async def set_tags(node_id: int, body: NodeTags) -> dict[str, Any]:
        return await one_node(await call(service.set_node_tags, node_id, body.tags, clock()))

    # tailnet settings

    @api.get("/settings")
    async def get_settings() -> dict[str, Any]:
        settings = await call(service.tailnet_settings)
        return {"device_approval": settings.device_approval}

    @api.patch("/settings")
    async def set_settings(body: TailnetSettingsBody) -> dict[str, Any]:
        settings = await call(service.set_tailnet_settings, device_approval=body.device_approval)
        return {"device_approval": settings.device_approval}

    # the audit log

    @api.get("/audit")
    async def list_audit(
        limit: int = 100, before: int | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        entries = await call(service.list_audit, limit=limit, before_id=before, since=since)
        return [audit_json(e) for e in entries]

    @api.get("/audit/export", response_model=None)
    async def export_audit(since: float | None = None) -> StreamingResponse:
        """Every entry (at or after ``since``), newest first, one JSON object a line."""

        async def lines() -> AsyncIterator[bytes]:
            before: int | None = None
            while True:
                page = await call(
                    service.list_audit, limit=AUDIT_EXPORT_PAGE, before_id=before, since=since
                )
                for entry in page:
                    yield (json.dumps(audit_json(entry), separators=(",", ":")) + "\n").encode()
                if len(page) < AUDIT_EXPORT_PAGE:
                    return
                before = page[-1].id

        return StreamingResponse(lines(), media_type="application/x-ndjson")
