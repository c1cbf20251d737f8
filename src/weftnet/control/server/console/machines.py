"""The Machines pages: the list (filters in the query string, live status), one
machine's page and its actions. A member sees and renames only their own machines;
anyone else's is "not found"."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from weftnet.control.domain import roles
from weftnet.control.domain.records import Node, User
from weftnet.control.server.console.view import STATUS_FILTERS, MachineRow, machine_rows
from weftnet.control.server.console.web import (
    PREFIX,
    SECURITY_HEADERS,
    Denied,
    MachineAdmin,
    Missing,
    OwnMachines,
    PolicyAdmin,
    Viewer,
    act,
    back,
    context,
    render,
)
from weftnet.control.service import NotFound


async def visible_rows(request: Request, viewer: Viewer) -> list[MachineRow]:
    """Every machine for those who may read all; a member's own otherwise."""
    owner = None if viewer.can(roles.READ_ALL) else viewer.user.name
    nodes: list[tuple[Node, User | None]] = await viewer.call(viewer.service.list_nodes, owner)
    ctx = context(request)
    return machine_rows(nodes, set(ctx.hub.online()), ctx.clock())


async def visible_row(request: Request, viewer: Viewer, node_id: int) -> MachineRow:
    row = next((r for r in await visible_rows(request, viewer) if r.node.id == node_id), None)
    if row is None:
        raise Missing(f"no machine with id {node_id}")
    return row


def filters(request: Request) -> dict[str, str]:
    q = request.query_params
    status = q.get("status", "")
    return {
        "q": q.get("q", "").strip()[:200],
        "status": status if status in STATUS_FILTERS else "",
        "user": q.get("user", "").strip()[:200],
        "tag": q.get("tag", "").strip()[:200],
    }


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/machines")
    async def list_machines(request: Request, viewer: OwnMachines) -> Response:
        chosen = filters(request)
        rows = await visible_rows(request, viewer)
        shown = [r for r in rows if r.matches(**chosen)]
        users = sorted({r.owner for r in rows if r.owner})
        tags = sorted({t for r in rows for t in r.node.tags})
        return render(
            request,
            "machines.html",
            viewer,
            rows=shown,
            total=len(rows),
            filters=chosen,
            statuses=STATUS_FILTERS,
            users=users,
            tags=tags,
        )

    @routes.get("/api/machines")
    async def machine_status(request: Request, viewer: OwnMachines) -> Response:
        rows = await visible_rows(request, viewer)
        body: list[dict[str, Any]] = [r.status_json() for r in rows]
        return JSONResponse(body, headers=SECURITY_HEADERS)

    @routes.get("/machines/{node_id}")
    async def machine(request: Request, node_id: int, viewer: OwnMachines) -> Response:
        row = await visible_row(request, viewer, node_id)
        may_manage = viewer.can(roles.MACHINES)
        return render(
            request,
            "machine.html",
            viewer,
            row=row,
            may_manage=may_manage,
            may_rename=may_manage or row.node.user_id == viewer.user.id,
            may_routes=viewer.can(roles.POLICY),
        )

    def page(node_id: int) -> str:
        return f"{PREFIX}/machines/{node_id}"

    @routes.post("/machines/{node_id}/rename")
    async def rename(request: Request, node_id: int, viewer: OwnMachines) -> Response:
        row = await visible_row(request, viewer, node_id)
        if not viewer.can(roles.MACHINES) and row.node.user_id != viewer.user.id:
            raise Denied("you may rename only your own machines")
        name = viewer.form.get("name", "")
        service = viewer.service
        return await act(viewer, page(node_id), "Renamed.", service.rename_node, node_id, name)

    @routes.post("/machines/{node_id}/approve")
    async def approve(node_id: int, viewer: MachineAdmin) -> Response:
        service = viewer.service
        return await act(viewer, page(node_id), "Approved.", service.authorize_node, node_id)

    @routes.post("/machines/{node_id}/expire")
    async def expire(request: Request, node_id: int, viewer: MachineAdmin) -> Response:
        now = context(request).clock()
        service = viewer.service
        return await act(viewer, page(node_id), "Key expired.", service.expire_node, node_id, now)

    @routes.post("/machines/{node_id}/key-expiry")
    async def key_expiry(node_id: int, viewer: MachineAdmin) -> Response:
        disabled = viewer.form.get("disabled") == "1"
        notice = "Key expiry disabled." if disabled else "Key expiry enabled."
        fn = viewer.service.set_key_expiry_disabled
        return await act(viewer, page(node_id), notice, fn, node_id, disabled)

    @routes.post("/machines/{node_id}/tags")
    async def tags(node_id: int, viewer: MachineAdmin) -> Response:
        wanted = [t for t in viewer.form.get("tags", "").replace(",", " ").split() if t]
        fn = viewer.service.set_node_tags
        return await act(viewer, page(node_id), "Tags saved.", fn, node_id, wanted)

    @routes.post("/machines/{node_id}/routes")
    async def approve_routes(node_id: int, viewer: PolicyAdmin) -> Response:
        wanted = [r for r in viewer.form.get("routes", "").replace(",", " ").split() if r]
        fn = viewer.service.approve_routes
        return await act(viewer, page(node_id), "Routes saved.", fn, node_id, wanted)

    @routes.post("/machines/{node_id}/delete")
    async def delete(node_id: int, viewer: MachineAdmin) -> Response:
        try:
            node: Node = await viewer.call(viewer.service.delete_node, node_id)
        except NotFound as e:
            return back(viewer, PREFIX + "/machines", error=str(e))
        return back(viewer, PREFIX + "/machines", notice=f"Deleted {node.given_name}.")

    return routes
