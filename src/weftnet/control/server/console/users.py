"""The Users page: list (role, identities, last login, machines), create, delete, role."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from weftnet.control.domain import roles
from weftnet.control.server.console.web import (
    PREFIX,
    Denied,
    Reader,
    UserAdmin,
    act,
    context,
    render,
)

PAGE = PREFIX + "/users"


def router() -> APIRouter:
    routes = APIRouter()

    @routes.get("/users")
    async def users(request: Request, viewer: Reader) -> Response:
        overview = await viewer.call(viewer.service.console_auth.users_overview)
        return render(
            request,
            "users.html",
            viewer,
            users=overview,
            may_edit=viewer.can(roles.USERS),
            assignable=[
                r for r in roles.ROLES if roles.may_assign(viewer.user.role, roles.MEMBER, r)
            ],
            now=context(request).clock(),
        )

    @routes.post("/users")
    async def create_user(request: Request, viewer: UserAdmin) -> Response:
        name = viewer.form.get("name", "")
        now = context(request).clock()
        return await act(viewer, PAGE, f"Created {name}.", viewer.service.create_user, name, now)

    @routes.post("/users/{name}/delete")
    async def delete_user(name: str, viewer: UserAdmin) -> Response:
        users = await viewer.call(viewer.service.list_users)
        target = next((u for u in users if u.name == name), None)
        if target is not None and not roles.may_assign(viewer.user.role, target.role, target.role):
            raise Denied(f"your role may not delete {name} ({roles.LABELS[target.role]})")
        force = viewer.form.get("force") == "1"
        fn = viewer.service.delete_user
        return await act(viewer, PAGE, f"Deleted {name}.", fn, name, force)

    @routes.post("/users/{name}/role")
    async def set_role(name: str, viewer: UserAdmin) -> Response:
        role = viewer.form.get("role", "")
        fn = viewer.service.set_user_role
        return await act(
            viewer, PAGE, f"{name} is now {role}.", fn, name, role, actor_role=viewer.user.role
        )

    return routes
