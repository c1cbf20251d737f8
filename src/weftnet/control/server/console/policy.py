"""The Policy and DNS editors: a textarea, "Check" (changes nothing) and "Save".

A refused document (syntax, unknown names, a failing policy test) is shown again with
the reason, and the one in force stays. The policy form carries the hash of the policy
it was opened on; saving over a policy someone else changed since is refused
(``set_policy(..., expected_hash=...)``: Conflict)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from weftnet.control.domain import roles
from weftnet.control.server.console.web import PolicyAdmin, Reader, Viewer, context, render
from weftnet.control.service import ServiceError
from weftnet.control.service.policyrules import policy_hash

EMPTY_POLICY = """// No policy is set: every device may reach every other.
{
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
  ],
}
"""


def textarea(viewer: Viewer, name: str) -> str:
    """A textarea's text as typed: browsers send its line ends as CRLF."""
    return viewer.form.get(name, "").replace("\r\n", "\n")


def router() -> APIRouter:
    routes = APIRouter()

    async def policy_page(
        request: Request, viewer: Viewer, text: str | None = None, status: int = 200, **values: str
    ) -> Response:
        current = await viewer.call(viewer.service.get_policy)
        return render(
            request,
            "policy.html",
            viewer,
            status,
            text=text if text is not None else (current or EMPTY_POLICY),
            version=values.pop("version", policy_hash(current)),
            may_edit=viewer.can(roles.POLICY),
            **values,
        )

    @routes.get("/policy")
    async def show_policy(request: Request, viewer: Reader) -> Response:
        return await policy_page(request, viewer)

    @routes.post("/policy")
    async def save_policy(request: Request, viewer: PolicyAdmin) -> Response:
        text = textarea(viewer, "policy")
        version = viewer.form.get("version", "")
        check_only = viewer.form.get("action") == "check"
        try:
            if check_only:
                await viewer.call(viewer.service.check_policy, text)
            else:
                await viewer.call(viewer.service.set_policy, text, expected_hash=version)
        except ServiceError as e:
            return await policy_page(request, viewer, text, 400, error=str(e), version=version)
        if check_only:
            notice = "The policy is valid and its tests pass (not saved)."
            return await policy_page(request, viewer, text, notice=notice, version=version)
        return await policy_page(request, viewer, notice="Policy saved.")

    def dns_hosts(request: Request) -> tuple[list[str], list[str]]:
        """The hosts the tailnet's domain must not swallow: the server's, the relays'."""
        ctx = context(request)
        server = [urlsplit(ctx.base_url(request)).hostname or "", request.url.hostname or ""]
        regions = [*ctx.own_relays(ctx.base_url(request)), *ctx.hub.relays.regions()]
        return server, [urlsplit(r.url).hostname or "" for r in regions]

    async def dns_page(
        request: Request, viewer: Viewer, text: str | None = None, status: int = 200, **values: str
    ) -> Response:
        if text is None:
            text = json.dumps(await viewer.call(viewer.service.get_dns), indent=2)
        return render(
            request,
            "dns.html",
            viewer,
            status,
            text=text,
            may_edit=viewer.can(roles.POLICY),
            **values,
        )

    @routes.get("/dns")
    async def show_dns(request: Request, viewer: Reader) -> Response:
        return await dns_page(request, viewer)

    @routes.post("/dns")
    async def save_dns(request: Request, viewer: PolicyAdmin) -> Response:
        text = textarea(viewer, "dns")
        check_only = viewer.form.get("action") == "check"
        fn = viewer.service.check_dns if check_only else viewer.service.set_dns
        try:
            await viewer.call(fn, text, *dns_hosts(request))
        except ServiceError as e:
            return await dns_page(request, viewer, text, 400, error=str(e))
        if check_only:
            return await dns_page(request, viewer, text, notice="The DNS settings are valid.")
        return await dns_page(request, viewer, notice="DNS settings saved.")

    return routes
