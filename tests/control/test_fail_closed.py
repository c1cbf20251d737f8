"""Every route of the server fails closed: walk ``app.routes`` and call each one without
credentials, then with each role's console session.

Public routes are an explicit allow-list; any other route must be under /api/v1 (an
API key) or /admin (a console session, the CSRF token on writes, and one permission,
``web.need``). A new route that is neither makes this test fail until it is classified.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, Mount, Route

from weftnet.control.domain import roles

from .consolekit import Console, make_console

# (method, path) that answer without credentials, and why.
PUBLIC = {
    ("GET", "/key"),  # the server's public key
    ("GET", "/health"),
    ("GET", "/register/{code}"),  # a node's login page
    ("POST", "/machine/{mkey}/register"),  # sealed to the server key: the box authenticates
    ("POST", "/machine/{mkey}/map"),
    ("GET", "/api/v1/openapi.json"),
    ("HEAD", "/api/v1/openapi.json"),
    ("GET", "/admin/login"),
    ("POST", "/admin/login"),  # guarded by its own double-submit token and rate limit
}
PUBLIC_PREFIXES = ("/oidc/", "/register/", "/admin/static")  # the identity provider's flow
SEEDED = ("member-laptop", "admin-server", "network-admin", "it-admin")  # data, not words


@pytest.fixture(scope="module")
def console() -> Console:
    return make_console()


def endpoints(console: Console) -> Iterator[tuple[str, str, BaseRoute]]:
    """(method, full path, route) of every route, included routers flattened."""
    for context in iter_route_contexts(console.app.routes):
        route, path = context.original_route, context.path or ""
        if isinstance(route, Mount):
            yield "GET", path, route
        else:
            assert isinstance(route, Route | APIRoute), route
            for method in sorted(context.methods or ()):
                yield method, path, route


def is_public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def concrete(path: str) -> str:
    """A path with its parameters filled in: ids with 1, names with "member"."""
    return re.sub(
        r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1).endswith("id") else "member", path
    )


def permission_of(route: BaseRoute) -> list[str | None]:
    """The permissions of the ``web.need`` dependencies of a console route."""
    if not isinstance(route, APIRoute):
        return []
    found: list[str | None] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if hasattr(dep.call, "permission"):
            found.append(dep.call.permission)
        stack.extend(dep.dependencies)
    return found


def test_every_route_is_classified_and_console_routes_take_one_permission(
    console: Console,
) -> None:
    unknown, unguarded = [], []
    for method, path, route in endpoints(console):
        if is_public(method, path) or path.startswith("/api/v1/"):
            continue
        if not path.startswith("/admin"):
            unknown.append(f"{method} {path}")
        elif len(permission_of(route)) != 1:
            unguarded.append(f"{method} {path}")
    assert unknown == [], "classify these routes (public allow-list, /api/v1 or /admin)"
    assert unguarded == [], "console routes need exactly one Depends(need(...))"


def test_without_credentials_every_route_is_refused_and_shows_nothing(
    console: Console,
) -> None:
    http = console.client()
    checked = 0
    for method, path, _ in endpoints(console):
        if is_public(method, path):
            continue
        r = http.request(method, concrete(path), follow_redirects=False)
        where = f"{method} {path}"
        if path.startswith("/admin") and method == "GET" and not path.startswith("/admin/api/"):
            assert r.status_code == 303, where
            assert r.headers["location"].startswith("/admin/login?next="), where
        else:
            assert r.status_code == 401, (where, r.status_code, r.text)
        assert not any(s in r.text for s in SEEDED), where
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("role", roles.ROLES)
def test_each_role_is_refused_what_it_may_not_do(console: Console, role: str) -> None:
    who = console.login(role)
    refused = 0
    for method, path, route in endpoints(console):
        if is_public(method, path):
            continue
        if path.startswith("/api/v1/"):  # a console session is no API key
            r = who.http.request(method, concrete(path), follow_redirects=False)
            assert r.status_code == 401, f"{method} {path}"
            continue
        [permission] = permission_of(route)
        if permission is None or roles.allows(role, permission):
            continue
        headers = {"X-CSRF-Token": who.csrf} if method not in ("GET", "HEAD") else {}
        r = who.http.request(method, concrete(path), headers=headers, follow_redirects=False)
        assert r.status_code == 403, f"{role}: {method} {path} -> {r.status_code}"
        assert not any(s in r.text for s in SEEDED), f"{role}: {method} {path}"
        refused += 1
    assert refused > 0 or role in (roles.OWNER, roles.ADMIN)
    assert console.service.get_node(console.nodes["member"].id).given_name == "member-laptop"
