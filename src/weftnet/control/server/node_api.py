"""HTTP routes of the node protocol (``/key``, ``/machine/...``), and the app itself.

Theory of operation (see docs/control-protocol.md): a node POSTs a body sealed from its
machine key to the server key (``controlbox``). The machine key is in the URL; a body
that does not open with (server private, machine public) did not come from that
machine and gets a plain-text 401. Every body that opens is answered with HTTP 200 and
a sealed answer; refusals (a bad auth key, a replayed or stale request, a node key of
another machine) travel inside it as ``error``. The map answer is a stream of frames
(``controlbox.frame``), each a sealed MapResponse: the first full, then deltas and
keepalives; a refusal is a single frame carrying ``error``.

Every full map carries the relay map, led by the server's own relay at the URL this
node used to reach us (``ControlContext.own_relays``); the app's lifespan runs the STUN
server and closes the embedded relay (which uvicorn's protocol class feeds).

The rules are in the service (called in worker threads: it blocks on the database);
streams are fed by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from weftnet import controlbox, tailcfg
from weftnet.control.domain import credentials, names, netmap
from weftnet.control.server import admin_api, console, oidc_routes
from weftnet.control.server.hub import Hub, StreamClosed, Subscription
from weftnet.control.server.limits import ADMIN_BODY_LIMIT, BodyLimits
from weftnet.control.server.logins import RECHECK_S, LoginLimiter, LoginWaiters, TooManyLogins
from weftnet.control.server.metrics import ServerMetrics
from weftnet.control.server.oidc import OidcClient
from weftnet.control.server.relayhost import EmbeddedRelay
from weftnet.control.service import (
    ControlService,
    Refused,
    Registered,
    ServiceError,
    Unauthorized,
)
from weftnet.control.service.audit import ORIGIN_NODE, Actor, acting_as
from weftnet.control.store.sql import redact_error
from weftnet.metrics import http as metrics_http
from weftnet.stun import server as stunserver

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # a sealed request larger than this is refused (413)
OCTET_STREAM = "application/octet-stream"
DEFAULT_FOLLOWUP_WAIT_S = 60.0  # an interactive login's followup is held this long

W = TypeVar("W", bound=tailcfg.Wire)

NODE_DELETED = tailcfg.MapResponse(error="node deleted", error_kind=tailcfg.ERROR_LOGGED_OUT)


@dataclass
class ControlContext:
    service: ControlService
    hub: Hub
    server_private: bytes
    server_public: bytes
    server_url: str | None = None  # the base of login URLs; else the request's own
    followup_wait_s: float = DEFAULT_FOLLOWUP_WAIT_S
    replay: controlbox.ReplayGuard = field(default_factory=controlbox.ReplayGuard)
    # Replicas on one database also share one (replicas.shared_replay_check): a request
    # replayed to another replica is refused too. (nonce, expires_at) -> first use?
    shared_replay: Callable[[bytes, float], bool] | None = None
    clock: Callable[[], float] = time.time
    relay: EmbeddedRelay | None = None  # the server's own relay, if it runs one
    stun_socket: socket.socket | None = None  # bound UDP socket for the STUN server
    logins: LoginLimiter | None = None  # None: made from the service's pending-login TTL
    waiters: LoginWaiters = field(default_factory=LoginWaiters)
    oidc: OidcClient | None = None  # logins through an OpenID provider, if configured
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    metrics_socket: socket.socket | None = None  # bound: serve metrics there (plain http)

    def __post_init__(self) -> None:
        if self.logins is None:
            self.logins = LoginLimiter(self.service.settings.pending_ttl_s)
        self.hub.on_close.append(self.waiters.close)

    def base_url(self, request: Request) -> str:
        """The server's URL for this client: ``--server-url``, else what it asked for."""
        return self.server_url or str(request.base_url)

    def own_relays(self, base_url: str) -> tuple[tailcfg.RelayRegion, ...]:
        """The embedded relay's relay map entry for a client that reached us at base_url."""
        return (self.relay.region(base_url),) if self.relay is not None else ()

    def seal(
        self,
        machine_public: bytes,
        model: tailcfg.Wire,
        request: bytes,
        index: int = 0,
        sealer: controlbox.Sealer | None = None,
    ) -> bytes:
        """``model`` sealed as the ``index``-th answer to the sealed ``request``; a map
        stream passes its ``sealer`` (the shared key, worked out once per stream)."""
        body = model.model_dump_json().encode()
        nonce = controlbox.answer_nonce(request, index)
        sealer = sealer or controlbox.Sealer(self.server_private, machine_public)
        return sealer.seal(body, nonce)

    def frame(
        self,
        machine_public: bytes,
        model: tailcfg.MapResponse,
        request: bytes,
        index: int = 0,
        sealer: controlbox.Sealer | None = None,
    ) -> bytes:
        return controlbox.frame(self.seal(machine_public, model, request, index, sealer))


class PlainRefusal(Exception):
    """A request that did not prove its machine key: answered in plain text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SealedRefusal(Exception):
    """A request that opened but must be refused: the reason goes back sealed, with its
    kind (``tailcfg.ERROR_KINDS``) so the node knows whether to log in, fix or retry."""

    def __init__(self, message: str, kind: str = tailcfg.ERROR_BAD_REQUEST) -> None:
        super().__init__(message)
        self.kind = kind


def create_app(ctx: ControlContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await ctx.hub.start()
        stun: asyncio.DatagramTransport | None = None
        discovering = None
        if ctx.oidc is not None and not ctx.oidc.ready:
            discovering = asyncio.create_task(ctx.oidc.keep_discovering())
        metrics_server: asyncio.Server | None = None
        try:
            if ctx.stun_socket is not None:
                stun, _ = await stunserver.start(ctx.stun_socket)
            if ctx.metrics_socket is not None:
                metrics_server = await metrics_http.serve(ctx.metrics.registry, ctx.metrics_socket)
            yield
        finally:
            if metrics_server is not None:
                metrics_server.close()
            if discovering is not None:
                discovering.cancel()
            if ctx.relay is not None:
                await ctx.relay.close()
            if stun is not None:
                stun.close()
            await ctx.hub.stop()

    app = FastAPI(
        title="weft-control",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )

    @app.exception_handler(PlainRefusal)
    async def _plain(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PlainRefusal)
        return PlainTextResponse(str(exc) + "\n", status_code=exc.status)

    @app.get("/key")
    async def server_key() -> JSONResponse:
        key = tailcfg.ServerKey(
            public_key=controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, ctx.server_public)
        )
        return JSONResponse(key.model_dump())

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            await anyio.to_thread.run_sync(ctx.service.list_users)
        except Exception as e:
            # The detail (it can name the database host and user) stays in the log;
            # this route answers anyone.
            log.warning("health check: the database did not answer: %s", redact_error(e))
            return JSONResponse({"ok": False, "error": "database unavailable"}, status_code=503)
        relay_clients = len(ctx.relay.server.clients()) if ctx.relay is not None else 0
        body: dict[str, object] = {
            "ok": True,
            "nodes_online": len(ctx.hub.online()),
            "relay_clients": relay_clients,
        }
        if ctx.oidc is not None:  # existing nodes work either way; new logins wait
            body["oidc_login"] = "available" if ctx.oidc.ready else "unavailable"
        return JSONResponse(body)

    app.state.oidc_enabled = ctx.oidc is not None
    app.state.oidc_issuer = ctx.oidc.config.issuer if ctx.oidc is not None else None
    if ctx.oidc is not None:
        app.include_router(
            oidc_routes.router(
                ctx.service,
                ctx.oidc,
                ctx.clock,
                oidc_routes.confirm_key(ctx.server_private),
                ctx.waiters.approved,
            )
        )
    else:

        @app.get("/register/{code}")
        async def login_page(code: str) -> PlainTextResponse:
            return PlainTextResponse(
                "This device is waiting to join the tailnet.\n"
                "An administrator approves it on the control server with:\n\n"
                f"    weft-control nodes register --user USER --code {code}\n"
            )

    @app.post("/machine/{mkey}/register")
    async def register(mkey: str, request: Request) -> Response:
        machine_public = _machine_key(mkey)
        followup = False
        try:
            req = await _open(ctx, request, machine_public, tailcfg.RegisterRequest)
            followup = req.followup is not None
            answer = await _register(ctx, request, machine_public, req)
        except SealedRefusal as e:
            answer = tailcfg.RegisterResponse(
                machine_authorized=False, error=str(e), error_kind=e.kind
            )
        ctx.metrics.registered(answer, followup)
        sealed = ctx.seal(machine_public, answer, await request.body())
        return Response(sealed, media_type=OCTET_STREAM)

    @app.post("/machine/{mkey}/map")
    async def map_request(mkey: str, request: Request) -> Response:
        machine_public = _machine_key(mkey)
        machine_key = controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, machine_public)
        try:
            req = await _open(ctx, request, machine_public, tailcfg.MapRequest)
            observed = netmap.normalize_ip(request.client.host) if request.client else None
            node = await _call(ctx.service.map_request, machine_key, req, observed, ctx.clock())
        except SealedRefusal as e:
            error = tailcfg.MapResponse(error=str(e), error_kind=e.kind)
            framed = ctx.frame(machine_public, error, await request.body())
            return Response(framed, media_type=OCTET_STREAM)
        own_relays = ctx.own_relays(ctx.base_url(request))
        if req.omit_peers or not req.stream:
            return Response(
                await _one_map(ctx, machine_public, await request.body(), node.id, req, own_relays),
                media_type=OCTET_STREAM,
            )
        sub = ctx.hub.connect(node.id)
        return MapStreamResponse(
            _stream(ctx, machine_public, await request.body(), sub, own_relays, req.version),
            on_close=lambda: ctx.hub.disconnect(sub),
        )

    app.include_router(
        admin_api.router(
            ctx.service,
            ctx.hub,
            ctx.clock,
            lambda r: ctx.own_relays(ctx.base_url(r)),
            on_login_approved=ctx.waiters.approved,
            server_public=ctx.server_public,
            base_url=ctx.base_url,
        ),
        prefix="/api/v1",
    )
    admin_api.install_error_handlers(app)
    console.install(app, ctx)

    async def authenticate(token: str) -> str | None:
        try:
            await anyio.to_thread.run_sync(ctx.service.check_api_key, token, ctx.clock())
        except Unauthorized as e:
            return str(e)
        except ServiceError:
            return None  # e.g. the database is busy: the route's own check answers
        return None

    # Bodies are limited, and admin keys checked, before any body is read (H2).
    app.add_middleware(
        BodyLimits,
        authenticate=authenticate,
        node_limit=MAX_BODY,
        admin_limit=ADMIN_BODY_LIMIT,
    )
    return app


def _machine_key(text: str) -> bytes:
    hex_part = text.removeprefix(tailcfg.MACHINE_KEY_PREFIX)
    try:
        raw = bytes.fromhex(hex_part)
    except ValueError:
        raw = b""
    if len(raw) != controlbox.KEY_LEN:
        raise PlainRefusal(400, "malformed machine key in the URL: expected 64 hex digits")
    return raw


async def _open(ctx: ControlContext, request: Request, machine_public: bytes, model: type[W]) -> W:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise PlainRefusal(413, f"request body larger than {MAX_BODY} bytes")
    try:
        plain = controlbox.open_sealed(ctx.server_private, machine_public, body)
    except controlbox.SealError:
        raise PlainRefusal(
            401,
            "the request is not sealed by this machine key to this server's key"
            " (GET /key): refused",
        ) from None
    try:
        req = model.model_validate_json(plain)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise SealedRefusal(f"malformed {model.__name__}: {where}: {first['msg']}") from None
    ts = getattr(req, "ts", None)
    if not isinstance(ts, float):  # every request model has a float ts
        raise SealedRefusal(f"malformed {model.__name__}: ts: missing")
    try:
        ctx.replay.check(body, ts, ctx.clock())
    except controlbox.ClockSkew as e:
        raise SealedRefusal(str(e), tailcfg.ERROR_CLOCK_SKEW) from None
    except controlbox.GuardFull as e:
        raise SealedRefusal(str(e), tailcfg.ERROR_SERVER) from None
    except controlbox.SealError as e:
        raise SealedRefusal(str(e)) from None
    if ctx.shared_replay is not None:
        await _check_shared_replay(ctx.shared_replay, body, ts)
    return req


async def _check_shared_replay(
    first_use: Callable[[bytes, float], bool], body: bytes, ts: float
) -> None:
    nonce = body[: controlbox.NONCE_LEN]
    try:
        first = await anyio.to_thread.run_sync(first_use, nonce, ts + controlbox.MAX_CLOCK_SKEW_S)
    except Exception as e:
        log.warning("could not check a request against the shared replay guard: %s",
                    redact_error(e))  # fmt: skip
        raise SealedRefusal(
            "the server cannot check this request now: try again", tailcfg.ERROR_SERVER
        ) from None
    if not first:
        raise SealedRefusal("replayed request")


R = TypeVar("R")


async def _call(
    fn: Callable[..., R], *args: Any, limiter: anyio.CapacityLimiter | None = None
) -> R:
    """Run a service rule in a worker thread; a protocol refusal becomes SealedRefusal, and
    so does any other failure (as ``server_error``: the node retries, it is not logged out)."""
    try:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)
    except Refused as e:
        raise SealedRefusal(str(e), e.kind) from None
    except ServiceError as e:  # e.g. Conflict: the database stayed busy
        raise SealedRefusal(str(e), tailcfg.ERROR_SERVER) from None
    except Exception as e:
        log.error("%s failed: %s", getattr(fn, "__name__", "a rule"), redact_error(e))
        raise SealedRefusal(
            "the server could not answer this request: try again later", tailcfg.ERROR_SERVER
        ) from None


async def _register(
    ctx: ControlContext, request: Request, machine_public: bytes, req: tailcfg.RegisterRequest
) -> tailcfg.RegisterResponse:
    machine_key = controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, machine_public)
    base_url = ctx.base_url(request)
    assert ctx.logins is not None
    source = netmap.normalize_ip(request.client.host) if request.client else ""
    interactive = not (req.followup or req.auth_key or req.logout)
    reserved = False
    if interactive:
        try:
            reserved = ctx.logins.reserve(source, machine_key)  # before any row is written
        except TooManyLogins as e:
            raise SealedRefusal(str(e), tailcfg.ERROR_SERVER) from None
    code = None
    if req.followup is not None:
        with contextlib.suppress(ValueError):  # else the service refuses it
            code = credentials.code_from_url(req.followup)
    deadline_at = time.monotonic() + ctx.followup_wait_s
    limiter = None
    actor = Actor(
        type="node",
        id=machine_key[: len(tailcfg.MACHINE_KEY_PREFIX) + 16],
        name=names.clean_hostname(req.hostinfo.hostname),
        origin=ORIGIN_NODE,
        remote_addr=source,
    )
    while True:
        try:
            with acting_as(actor):
                outcome = await _call(
                    ctx.service.register, machine_key, req, ctx.clock(), base_url, limiter=limiter
                )
        except SealedRefusal:
            if reserved:
                ctx.logins.release(source, machine_key)
            raise
        if reserved and (isinstance(outcome, Registered) or outcome.auth_url is None):
            ctx.logins.release(source, machine_key)  # no login was started
        if isinstance(outcome, Registered):
            return _authorized(ctx, outcome)
        waiting = code is not None and outcome.error is None
        remaining_s = deadline_at - time.monotonic()
        if not waiting or remaining_s <= 0 or ctx.hub.closed:
            return outcome
        assert code is not None
        # Held open until an admin approves this code (which wakes us), re-checked every
        # RECHECK_S (another server on the same database may approve it) in few threads.
        await ctx.waiters.wait(code, min(remaining_s, RECHECK_S))
        limiter = ctx.waiters.limiter


def _authorized(ctx: ControlContext, registered: Registered) -> tailcfg.RegisterResponse:
    node, user = registered.node, registered.user
    users = {user.id: user} if user else {}
    online = node.id in ctx.hub.online()
    return tailcfg.RegisterResponse(
        # False: registered, but waiting for an admin's approval (device approval).
        machine_authorized=node.authorized_at is not None,
        node=netmap.wire_node(node, users, online, ctx.clock()),
        user=tailcfg.UserInfo(id=user.id, name=user.name) if user else None,
    )


async def _one_map(
    ctx: ControlContext,
    machine_public: bytes,
    request: bytes,
    node_id: int,
    req: tailcfg.MapRequest,
    own_relays: tuple[tailcfg.RelayRegion, ...],
) -> bytes:
    """The answer to a map request that does not stream: one frame, then the end."""
    snapshot = await anyio.to_thread.run_sync(ctx.service.snapshot)
    current = netmap.NetMap(
        snapshot.nodes,
        snapshot.users,
        ctx.hub.online(),
        ctx.clock(),
        snapshot.dns_config.domain
        if snapshot.dns_config is not None
        else ctx.service.settings.dns_domain,
        ctx.hub.relays.regions(),
        snapshot.policy,
        ctx.hub.policy_now(),
        snapshot.dns_config,
        ctx.hub.current.primaries if ctx.hub.current is not None else None,
        previous=ctx.hub.current,
    )
    view = current.view_for(node_id, own_relays, req.version)
    if view is None:
        return ctx.frame(machine_public, NODE_DELETED, request)
    if req.omit_peers:
        answer = tailcfg.MapResponse(node=view.node, dns_domain=current.dns_domain)
    else:
        answer = view.full(current.dns_domain)
    return ctx.frame(machine_public, answer, request)


async def _stream(
    ctx: ControlContext,
    machine_public: bytes,
    request: bytes,
    sub: Subscription,
    own_relays: tuple[tailcfg.RelayRegion, ...],
    version: int,
) -> AsyncIterator[bytes]:
    """The frames of one map stream: full first, then deltas, keepalives, a final error."""
    view: netmap.MapView | None = None
    frames = itertools.count()  # each frame is sealed as the next answer to the request
    sealer = controlbox.Sealer(ctx.server_private, machine_public)

    def frame(model: tailcfg.MapResponse) -> bytes:
        return ctx.frame(machine_public, model, request, next(frames), sealer)

    while True:
        try:
            quiet_s = ctx.hub.keepalive_for(sub.node_id) if view is not None else None
            current = await sub.next(quiet_s)
        except StreamClosed:
            return
        if current is None:
            yield frame(tailcfg.MapResponse(keepalive=True))
            continue
        new = current.view_for(sub.node_id, own_relays, version)
        if new is None:
            yield frame(NODE_DELETED)
            return
        # A frame is written once the response asks for the next one: then it counts.
        if view is None:
            yield frame(new.full(current.dns_domain))
            ctx.metrics.map_pushed("full", sub.changed_at)
        else:
            change = netmap.delta(view, new)
            if change is not None:
                yield frame(change)
                ctx.metrics.map_pushed("delta", sub.changed_at)
        view = new
        if new.node.expired:
            final = tailcfg.MapResponse(
                node=new.node,
                error="node key expired: run weft up to log in again",
                error_kind=tailcfg.ERROR_EXPIRED,
            )
            yield frame(final)
            return


class MapStreamResponse(StreamingResponse):
    """A streaming response that always tells the hub when it ends, however it ends."""

    def __init__(self, frames: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(frames, media_type=OCTET_STREAM)
        self._frames = frames
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            aclose: Callable[[], Awaitable[None]] | None = getattr(self._frames, "aclose", None)
            if aclose is not None:
                await aclose()
