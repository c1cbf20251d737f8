"""The admin REST API under /api/v1, for ``weft-control`` and scripts.

Every route needs ``Authorization: Bearer weftapi-...``. Answers are JSON; errors are
``{"error": "<one line>"}`` with 400 (bad input), 401 (API key), 403 (the key's
scope does not allow it), 404 (no such thing) or
409 (conflict). Secrets appear only once: in the answer that creates an auth key or an
API key (field ``key``). Times are unix seconds.

Standalone relays use the same API (with an API key): they register their region
(``POST /relays``, again every 10 s), fetch the node keys they may admit
(``GET /relay/nodekeys``, every second and on a miss) and, in a mesh, the relays of
their mesh (``GET /relays``). A key made with ``apikeys create --scope relay`` may call
only those three; anything else answers 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from weftnet import serverkey, tailcfg
from weftnet.control.domain import credentials, names, netmap, relays
from weftnet.control.domain.records import ApiKey, AuthKey, Identity, Node, User
from weftnet.control.policy import Policy
from weftnet.control.server import admin_approval
from weftnet.control.server.hub import Hub
from weftnet.control.service import (
    Conflict,
    ControlService,
    Forbidden,
    Invalid,
    NotFound,
    Refused,
    ServiceError,
    Unauthorized,
)
from weftnet.control.service.audit import ORIGIN_API, Actor, acting_as

STATUS = {
    Invalid: 400,
    Refused: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
}
API_PREFIX = "/api/v1"
# What a key of each non-admin scope may call: (method, route path under /api/v1).
SCOPE_ROUTES = {
    credentials.API_KEY_SCOPE_RELAY: frozenset(
        {("POST", "/relays"), ("GET", "/relays"), ("GET", "/relay/nodekeys")}
    ),
}
NODE_KEYS_WAIT_S = 5.0  # longest wait for a fresh network map before answering 503


class NewUser(BaseModel):
    name: str


class PasswordBody(BaseModel):
    password: str | None  # None removes the console password


class RoleBody(BaseModel):
    role: str


class NewAuthKeyRequest(BaseModel):
    user: str | None = None
    reusable: bool = False
    ephemeral: bool = False
    tags: list[str] = Field(default_factory=list)
    expiration: str | None = None  # e.g. "1h", "90d"
    preauthorized: bool = False  # its nodes need no device approval


class NewApiKeyRequest(BaseModel):
    expiration: str | None = None  # default 90d, at most 365d
    description: str = ""
    scope: str = credentials.API_KEY_SCOPE_ADMIN


class Rename(BaseModel):
    name: str


class RegisterByCode(BaseModel):
    user: str
    code: str


class PolicyText(BaseModel):
    policy: str


class DnsBody(BaseModel):
    dns: Any  # the document: an object, or its JSON/HuJSON text


class RouteApproval(BaseModel):
    routes: list[str]  # replaces the manual approvals; [] withdraws them


class AttributeValue(BaseModel):
    value: str | float | bool


class RelayRegistration(BaseModel):
    region: str
    url: str
    public_key: str  # "relaykey:<hex>"
    stun_port: int | None = None
    mesh: str | None = None  # the region it serves with other relays (a mesh)


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "created_at": user.created_at}


def identity_json(identity: Identity) -> dict[str, Any]:
    return {
        "issuer": identity.issuer,
        "subject": identity.subject,
        "email": identity.email,
        "email_verified": identity.email_verified,
        "groups": list(identity.groups),
        "created_at": identity.created_at,
        "last_login_at": identity.last_login_at,
    }


class LinkBody(BaseModel):
    issuer: str = Field(min_length=1, max_length=500)
    subject: str = Field(min_length=1, max_length=500)


def auth_key_json(key: AuthKey, owner: str | None, now: float) -> dict[str, Any]:
    used_up = not key.reusable and key.used_count > 0
    expired = key.expires_at <= now
    return {
        "id": key.id,
        "prefix": key.prefix,
        "user": owner,
        "reusable": key.reusable,
        "ephemeral": key.ephemeral,
        "preauthorized": key.preauthorized,
        "tags": list(key.tags),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "used_count": key.used_count,
        "last_used_at": key.last_used_at,
        "revoked": key.revoked_at is not None,
        "expired": expired,
        "valid": key.revoked_at is None and not expired and not used_up,
    }


def node_json(node: Node, owner: str | None, online: bool, now: float) -> dict[str, Any]:
    return {
        "id": node.id,
        "given_name": node.given_name,
        "hostname": names.clean_hostname(node.hostname),
        "user": owner,
        "tags": list(node.tags),
        "ipv4": node.ipv4,
        "ipv6": node.ipv6,
        "machine_key": node.machine_key,
        "node_key": node.node_key,
        "disco_key": node.disco_key,
        "endpoints": netmap.node_endpoints(node.observed_ip, node.endpoints),
        "online": online,
        "created_at": node.created_at,
        "last_seen": node.last_seen,
        "key_expiry": node.key_expiry,
        "expired": node.expired_at(now),
        "ephemeral": node.ephemeral,
        "home_relay": node.home_relay,
        "os": node.os,
        "client_version": node.client_version,
        "attributes": {f"custom:{k}": v for k, v in node.attrs},
        "authorized": node.authorized_at is not None,
        "authorized_at": node.authorized_at,
        "key_expiry_disabled": node.key_expiry_disabled,
        "auth_method": node.auth_method,
    }


def routes_json(node: Node, status: netmap.RouteStatus) -> dict[str, Any]:
    return {
        "id": node.id,
        "given_name": node.given_name,
        "hostname": names.clean_hostname(node.hostname),
        "announced": list(status.announced),
        "approved": list(status.approved),
        "auto_approved": list(status.auto_approved),
        "serving": list(status.serving),
    }


def policy_json(policy: Policy) -> dict[str, Any]:
    return {
        "acls": len(policy.acls),
        "tests": len(policy.tests),
        "ignored_keys": list(policy.ignored_keys),
    }


def api_key_json(key: ApiKey, now: float) -> dict[str, Any]:
    expired = key.expires_at is not None and key.expires_at <= now
    return {
        "id": key.id,
        "prefix": key.prefix,
        "scope": key.scope,
        "description": key.description,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "revoked": key.revoked_at is not None,
        "expired": expired,
        "valid": key.revoked_at is None and not expired,
    }


def relay_json(
    region: tailcfg.RelayRegion, registration: relays.Registration | None
) -> dict[str, Any]:
    return {
        "region": region.name,
        "url": region.url,
        "public_key": region.public_key,
        "stun_port": region.stun_port,
        "mesh": region.mesh,
        "embedded": registration is None,
        "registered_at": registration.registered_at if registration else None,
        "last_seen": registration.last_seen if registration else None,
        "expires_at": registration.expires_at if registration else None,
    }


def check_scope(key: ApiKey, method: str, path: str) -> None:
    """Forbidden unless ``key``'s scope allows ``method`` on ``path`` (the request path;
    /api/v1 may lead). Admin keys may do everything."""
    if key.scope == credentials.API_KEY_SCOPE_ADMIN:
        return
    route = "/" + path.removeprefix(API_PREFIX).strip("/")
    if (method.upper(), route) not in SCOPE_ROUTES.get(key.scope, frozenset()):
        raise Forbidden(
            f"this API key has scope {key.scope!r} and may not call {method.upper()}"
            f" {API_PREFIX}{route}: use an admin API key (apikeys create --scope admin)"
        )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: Exception) -> Response:
        status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 400)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if not errors:
            return JSONResponse({"error": "invalid request"}, status_code=400)
        first = errors[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=400)


def router(
    service: ControlService,
    hub: Hub,
    clock: Callable[[], float],
    own_relays: Callable[[Request], tuple[tailcfg.RelayRegion, ...]] = lambda _request: (),
    on_login_approved: Callable[[str], None] = lambda _code: None,
    server_public: bytes | None = None,
    base_url: Callable[[Request], str] = lambda request: str(request.base_url),
) -> APIRouter:
    """The admin API. New auth keys carry the fingerprint of ``server_public`` (when given),
    so a node that logs in with one refuses any other server (weftnet.serverkey).
    ``base_url`` is the server's URL as nodes reach it (``--server-url``): the DNS
    settings may not put its host under the tailnet's domain."""

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def require_api_key(request: Request) -> AsyncIterator[ApiKey]:
        """The caller's API key; the request's service calls run as its actor (audit)."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing API key: send Authorization: Bearer weftapi-...")
        key: ApiKey = await call(service.check_api_key, token.strip(), clock())
        check_scope(key, request.method, request.url.path)
        actor = Actor(
            type="api_key",
            id=key.prefix,
            name=key.description or key.prefix,
            origin=ORIGIN_API,
            remote_addr=request.client.host if request.client else "",
        )
        with acting_as(actor):
            yield key

    api = APIRouter(dependencies=[Depends(require_api_key)])

    # users

    @api.get("/users")
    async def list_users() -> list[dict[str, Any]]:
        return [user_json(u) for u in await call(service.list_users)]

    @api.post("/users", status_code=201)
    async def create_user(body: NewUser) -> dict[str, Any]:
        return user_json(await call(service.create_user, body.name, clock()))

    @api.delete("/users/{name}")
    async def delete_user(name: str, force: bool = False) -> dict[str, Any]:
        deleted = await call(service.delete_user, name, force, clock())
        return {"deleted": name, "nodes_deleted": deleted}

    @api.put("/users/{name}/password")
    async def set_password(name: str, body: PasswordBody) -> dict[str, Any]:
        user = await call(service.set_user_password, name, body.password)
        return {"name": user.name, "password_set": body.password is not None}

    @api.put("/users/{name}/role")
    async def set_role(name: str, body: RoleBody) -> dict[str, Any]:
        user = await call(service.set_user_role, name, body.role)  # an API key acts as owner
        return {"name": user.name, "role": user.role}

    @api.get("/users/{name}/identities")
    async def list_identities(name: str) -> list[dict[str, Any]]:
        return [identity_json(i) for i, _ in await call(service.list_identities, name)]

    @api.post("/users/{name}/identities", status_code=201)
    async def link_identity(name: str, body: LinkBody) -> dict[str, Any]:
        linked = await call(service.link_identity, name, body.issuer, body.subject, clock())
        return identity_json(linked)

    @api.delete("/users/{name}/identities")
    async def unlink_identity(name: str, issuer: str) -> dict[str, Any]:
        return {"unlinked": await call(service.unlink_identity, name, issuer, clock())}

    # auth keys

    @api.get("/keys")
    async def list_keys(user: str | None = None) -> list[dict[str, Any]]:
        now = clock()
        keys = await call(service.list_auth_keys, user)
        return [auth_key_json(k, u.name if u else None, now) for k, u in keys]

    @api.post("/keys", status_code=201)
    async def create_key(body: NewAuthKeyRequest) -> dict[str, Any]:
        now = clock()
        text, key = await call(
            service.create_auth_key,
            now,
            body.user,
            reusable=body.reusable,
            ephemeral=body.ephemeral,
            tags=body.tags,
            expiration=body.expiration,
            preauthorized=body.preauthorized,
        )
        if server_public is not None:
            text = serverkey.attach(text, server_public)
        return {"key": text, **auth_key_json(key, body.user, now)}

    @api.delete("/keys/{ref}")
    async def revoke_key(ref: str) -> dict[str, Any]:
        key = await call(service.revoke_auth_key, ref, clock())
        return {"revoked": key.prefix, "id": key.id}

    # nodes

    @api.get("/nodes")
    async def list_nodes(user: str | None = None) -> list[dict[str, Any]]:
        now, online = clock(), hub.online()
        nodes = await call(service.list_nodes, user)
        return [node_json(n, u.name if u else None, n.id in online, now) for n, u in nodes]

    @api.delete("/nodes/{node_id}")
    async def delete_node(node_id: int) -> dict[str, Any]:
        node = await call(service.delete_node, node_id, clock())
        return {"deleted": node.id, "given_name": node.given_name}

    @api.post("/nodes/{node_id}/expire")
    async def expire_node(node_id: int) -> dict[str, Any]:
        node = await call(service.expire_node, node_id, clock())
        return {"expired": node.id, "key_expiry": node.key_expiry}

    @api.post("/nodes/{node_id}/rename")
    async def rename_node(node_id: int, body: Rename) -> dict[str, Any]:
        node = await call(service.rename_node, node_id, body.name, clock())
        return {"id": node.id, "given_name": node.given_name}

    @api.post("/nodes/register", status_code=201)
    async def register_node(body: RegisterByCode) -> dict[str, Any]:
        now = clock()
        registered = await call(service.register_by_code, body.user, body.code, now)
        on_login_approved(body.code)  # wakes that login's waiting followup
        node = registered.node
        owner = registered.user.name if registered.user else None
        return node_json(node, owner, node.id in hub.online(), now)

    admin_approval.add_routes(api, service, hub, clock, call)

    # routes (docs/routes.md): read from a map built after every change made before

    async def fresh_map() -> netmap.NetMap:
        current = await hub.netmap_since(hub.generation)
        if current is None:
            raise Conflict("the server is shutting down; try again")
        return current

    def node_routes(current: netmap.NetMap, node_id: int) -> dict[str, Any]:
        node, status = current.nodes.get(node_id), current.route_status(node_id)
        if node is None or status is None:
            raise NotFound(f"no node with id {node_id}: see `weft-control nodes list`")
        return routes_json(node, status)

    @api.get("/routes")
    async def list_routes() -> list[dict[str, Any]]:
        current = await fresh_map()
        out = [node_routes(current, i) for i in sorted(current.nodes)]
        return [r for r in out if r["announced"] or r["approved"]]

    @api.get("/nodes/{node_id}/routes")
    async def get_routes(node_id: int) -> dict[str, Any]:
        return node_routes(await fresh_map(), node_id)

    @api.post("/nodes/{node_id}/routes")
    async def approve_routes(node_id: int, body: RouteApproval) -> dict[str, Any]:
        await call(service.approve_routes, node_id, body.routes, clock())
        return node_routes(await fresh_map(), node_id)

    @api.put("/nodes/{node_id}/attributes/{name}")
    async def set_attribute(node_id: int, name: str, body: AttributeValue) -> dict[str, Any]:
        node = await call(service.set_node_attr, node_id, name, body.value)
        return {"id": node.id, "attributes": {f"custom:{k}": v for k, v in node.attrs}}

    @api.delete("/nodes/{node_id}/attributes/{name}")
    async def delete_attribute(node_id: int, name: str) -> dict[str, Any]:
        node = await call(service.set_node_attr, node_id, name, None)
        return {"id": node.id, "attributes": {f"custom:{k}": v for k, v in node.attrs}}

    # DNS settings

    def dns_hosts(request: Request) -> tuple[list[str], list[str]]:
        """The hosts the tailnet's domain must not swallow: the server's, the relays'."""
        server = [urlsplit(base_url(request)).hostname or "", request.url.hostname or ""]
        regions = [*own_relays(request), *hub.relays.regions()]
        return server, [urlsplit(r.url).hostname or "" for r in regions]

    @api.get("/dns")
    async def get_dns() -> dict[str, Any]:
        result: dict[str, Any] = await call(service.get_dns)
        return result

    @api.put("/dns")
    async def set_dns(body: DnsBody, request: Request) -> dict[str, Any]:
        result: dict[str, Any] = await call(service.set_dns, body.dns, *dns_hosts(request))
        return result

    @api.post("/dns/check")
    async def check_dns(body: DnsBody, request: Request) -> dict[str, Any]:
        document = await call(service.check_dns, body.dns, *dns_hosts(request))
        return {"ok": True, "dns": document}

    # access policy

    @api.get("/policy")
    async def get_policy() -> dict[str, Any]:
        return {"policy": await call(service.get_policy)}

    @api.put("/policy")
    async def set_policy(body: PolicyText) -> dict[str, Any]:
        policy = await call(service.set_policy, body.policy)
        return {"set": True, **policy_json(policy)}

    @api.post("/policy/check")
    async def check_policy(body: PolicyText) -> dict[str, Any]:
        policy = await call(service.check_policy, body.policy)
        return {"set": False, **policy_json(policy)}

    # admin API keys

    @api.get("/apikeys")
    async def list_api_keys() -> list[dict[str, Any]]:
        now = clock()
        return [api_key_json(k, now) for k in await call(service.list_api_keys)]

    @api.post("/apikeys", status_code=201)
    async def create_api_key(body: NewApiKeyRequest) -> dict[str, Any]:
        now = clock()
        text, key = await call(
            service.create_api_key, now, body.expiration, body.description, body.scope
        )
        return {"key": text, **api_key_json(key, now)}

    @api.delete("/apikeys/{prefix}")
    async def revoke_api_key(prefix: str) -> dict[str, Any]:
        key = await call(service.revoke_api_key, prefix, clock())
        return {"revoked": key.prefix, "id": key.id}

    # relays

    @api.get("/relays")
    async def list_relays(request: Request) -> list[dict[str, Any]]:
        own = [relay_json(r, None) for r in own_relays(request)]
        return own + [relay_json(r.region, r) for r in hub.relays.registrations()]

    @api.post("/relays")
    async def register_relay(body: RelayRegistration, request: Request) -> dict[str, Any]:
        try:
            region = relays.region(
                body.region, body.url, body.public_key, body.stun_port, body.mesh
            )
        except ValueError as e:
            raise Invalid(str(e)) from None
        if {body.region, region.region} & {r.name for r in own_relays(request)}:
            raise Conflict(
                f"region {region.region} is the control server's own relay:"
                " pick another --region (or --mesh)"
            )
        try:
            hub.register_relay(region)
        except OverflowError as e:
            raise Conflict(f"{e}: remove one with DELETE /api/v1/relays/REGION") from None
        except ValueError as e:
            raise Conflict(str(e)) from None
        registration = hub.relays.get(region.name)
        return {**relay_json(region, registration), "refresh_s": relays.REGISTER_INTERVAL_S}

    @api.delete("/relays/{name}")
    async def remove_relay(name: str, request: Request) -> dict[str, Any]:
        if name in {r.name for r in own_relays(request)}:
            raise Conflict(f"region {name} is the control server's own relay (serve --no-relay)")
        if not hub.remove_relay(name):
            raise NotFound(f"no relay region {name}: see `weft-control relays list`")
        return {"removed": name}

    @api.get("/relay/nodekeys", response_model=None)
    async def relay_node_keys() -> dict[str, Any] | JSONResponse:
        """The node keys a relay may admit now (nodes that exist, keys not expired)."""
        try:
            async with asyncio.timeout(NODE_KEYS_WAIT_S):
                current = await hub.netmap_since(hub.generation)
        except TimeoutError:
            current = None
        if current is None:
            return JSONResponse(
                {"error": "the network map is not available (database unreachable?)"},
                status_code=503,
            )
        return {"node_keys": current.admitted_keys(clock())}

    return api
