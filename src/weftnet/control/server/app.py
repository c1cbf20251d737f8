"""Running the coordination server: data directory, keys, database, relay, STUN, uvicorn.

``ControlServer.open()`` does everything that can fail with a clear message before any
request is served - data directory (0700), the TLS certificate and key (``--tls-cert``,
``--tls-key``: then the API, the node protocol and the embedded relay are https only), server key (``server.key``, 0600, made on
first start), relay key (``relay.key``, likewise), database (migrated to the newest
schema), the listening socket, the STUN socket (UDP ``stun_port``), the metrics socket
(``--metrics-listen``: plain http on a port of its own, off by default) - and writes ``admin.json`` (0600): the local URL and an admin API key, so ``weft-control
--data-dir DIR`` on this host can talk to the server. ``run()`` then serves until
SIGTERM/SIGINT (or ``request_stop()``), ending every map stream so shutdown is prompt.
The embedded relay shares uvicorn's port and loop (``relay.mount.uvicorn_protocol``);
it closes, with ERROR ``relay shutting down`` to every client, when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from weftnet import controlbox, keyfile, logformat, tailcfg, tls
from weftnet.control.domain import dnsdoc
from weftnet.control.domain.relays import check_region_name
from weftnet.control.server import connlimit, replicas
from weftnet.control.server.hub import (
    DEFAULT_EPHEMERAL_GRACE_S,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_ROUTER_KEEPALIVE_S,
    Hub,
)
from weftnet.control.server.metrics import ServerMetrics
from weftnet.control.server.node_api import DEFAULT_FOLLOWUP_WAIT_S, ControlContext, create_app
from weftnet.control.server.oidc import OidcClient, OidcConfig, OidcOptions
from weftnet.control.server.relayhost import DEFAULT_REGION, DEFAULT_RELAY_RATE, EmbeddedRelay
from weftnet.control.service import ControlService, ServiceError, Unauthorized
from weftnet.control.service.audit import ORIGIN_CLI, Actor, acting_as
from weftnet.control.store import sql as store
from weftnet.endpoint import format_endpoint
from weftnet.metrics import http as metrics_http
from weftnet.relay.mount import uvicorn_protocol
from weftnet.stun import server as stunserver
from weftnet.tcplisten import listen_tcp, split_hostport

log = logging.getLogger("weftnet.control")
# Who changes settings given on the `weft-control serve` command line (audit log).
SERVE_ACTOR = Actor(type="system", id="", name="weft-control serve", origin=ORIGIN_CLI)

SERVER_KEY_FILE = "server.key"
RELAY_KEY_FILE = "relay.key"
ADMIN_FILE = "admin.json"
GRACEFUL_SHUTDOWN_S = 5.0  # after this, connections still open are cut
LOCAL_ADMIN_DESCRIPTION = "local admin (admin.json)"
LOCAL_ADMIN_LIFETIME = "365d"  # the longest an API key may live
LOCAL_ADMIN_RENEW_BELOW_S = 275 * 86400.0  # replaced at a start once 90 days old
# Connection limits (security audit M5; docs/control-protocol.md, "Limits").
DEFAULT_HEAD_TIMEOUT_S = 10.0  # a request head (line and headers) must arrive within this
DEFAULT_MAX_CONNECTIONS = 4096  # beyond this many connections, requests are answered 503
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_HEAD_BYTES = 16 * 1024  # a request head larger than this is refused (400)
LISTEN_BACKLOG = 2048
OPEN_FILES_SPARE = 256  # descriptors beyond the connections: database, logs, relay, STUN


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


def _fit_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit so ``max_connections`` streams fit (each is a
    socket), as far as the hard limit allows; a warning when it does not reach."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + OPEN_FILES_SPARE
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < max_connections + OPEN_FILES_SPARE:
        log.warning(
            "the open-file limit (%d) is below --max-connections (%d): raise `ulimit -Hn`",
            want,
            max_connections,
        )


@dataclass
class ServeOptions:
    data_dir: Path
    host: str = "0.0.0.0"
    port: int = 8080
    database_url: str | None = None
    server_url: str | None = None
    node_key_expiry: str | None = None  # saved in the database when given
    dns_domain: str | None = None  # saved in the database when given
    device_approval: bool | None = None  # the tailnet setting, saved when given
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    router_keepalive_s: float = DEFAULT_ROUTER_KEEPALIVE_S  # streams of route candidates
    ephemeral_grace_s: float = DEFAULT_EPHEMERAL_GRACE_S
    followup_wait_s: float = DEFAULT_FOLLOWUP_WAIT_S
    access_log: bool = True
    relay: bool = True  # run the embedded relay on the HTTP port
    region: str = DEFAULT_REGION  # its region name in the relay map
    relay_rate_bytes_per_s: int = DEFAULT_RELAY_RATE  # per client
    stun_port: int = stunserver.DEFAULT_STUN_PORT  # UDP, on the --listen host; 0: none
    # The wall clock policy schedules are judged by; None: the system clock. Keys,
    # logins and requests always use the system clock.
    policy_clock: Callable[[], float] | None = None
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = connlimit.DEFAULT_PER_ADDRESS  # more: closed at once
    # TLS for everything on the HTTP port (API, node protocol, embedded relay): a PEM
    # certificate chain and its key; None: plain http.
    tls_cert: str | None = None
    tls_key: str | None = None
    oidc: OidcOptions | None = None  # logins through an OpenID provider (docs/identity.md)
    # Prometheus metrics on a listener of their own, plain http (docs/metrics.md); None: off.
    metrics_listen: tuple[str, int] | None = None
    log_format: str = "text"  # or "json": JSON lines (weftnet.logformat)


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPV6]:PORT or :PORT (all addresses)."""
    try:
        host, port = split_hostport(text)
    except ValueError as e:
        raise ValueError(
            f"invalid --listen {text!r}: {e}; expected HOST:PORT, e.g. 0.0.0.0:8080"
        ) from None
    return host or "0.0.0.0", port


def local_url(host: str, port: int, scheme: str = "http") -> str:
    """How a client on this host reaches a server listening on ``host``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def load_or_create_server_key(data_dir: Path) -> tuple[bytes, bytes]:
    """The server's (private, public) X25519 key, made on first start."""
    return _load_key(data_dir / SERVER_KEY_FILE, "server")


def load_or_create_relay_key(data_dir: Path) -> tuple[bytes, bytes]:
    """The embedded relay's (private, public) X25519 key, made on first start."""
    return _load_key(data_dir / RELAY_KEY_FILE, "relay")


def _load_key(path: Path, what: str) -> tuple[bytes, bytes]:
    try:
        private, created = keyfile.load_or_create(path)
    except keyfile.KeyFileError as e:
        raise ServeError(f"cannot read the {what} key: {e}") from None
    if created:
        log.info("created the %s key in %s", what, path)
    return private, keyfile.public_of(private)


def ensure_admin_key(
    service: ControlService, data_dir: Path, url: str, tls_cert: str | None = None
) -> str:
    """Reuse the admin API key in admin.json if still valid, else make one; write the file.

    With TLS, the file also names the server's certificate: the admin CLI on this host
    trusts exactly that certificate (weftnet.tls.pinned_context), whatever name it has.
    """
    path = data_dir / ADMIN_FILE
    api_key = None
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        api_key = json.loads(path.read_text()).get("api_key")
    now = time.time()
    if api_key:
        try:
            key = service.check_api_key(api_key, now)
        except Unauthorized:
            api_key = None
        else:
            # Renewed at a start once it has aged (or never expires: from before 0004), so
            # a running server keeps a local key for LOCAL_ADMIN_LIFETIME - its age.
            if key.expires_at is None or key.expires_at - now < LOCAL_ADMIN_RENEW_BELOW_S:
                service.revoke_api_key(key.prefix, now)
                api_key = None
    if not api_key:
        api_key, _ = service.create_api_key(
            now, LOCAL_ADMIN_LIFETIME, description=LOCAL_ADMIN_DESCRIPTION
        )
    info: dict[str, object] = {"url": url, "api_key": api_key}
    if tls_cert is not None:
        info["tls_cert"] = str(Path(tls_cert).resolve())
    info.update(pid=os.getpid(), started_at=now)
    keyfile.write_private(path, json.dumps(info, indent=2) + "\n")
    return api_key


# Data unacknowledged this long aborts a connection (Linux TCP_USER_TIMEOUT, RFC 5482),
# instead of after tcp_retries2 (many minutes): with the 3 s keepalives of a router's
# map stream (hub.DEFAULT_ROUTER_KEEPALIVE_S), a router that silently died goes offline
# within about 13 s. Accepted sockets inherit it from the listening socket.
TCP_USER_TIMEOUT_S = 10.0


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = listen_tcp(host, port, backlog=LISTEN_BACKLOG, user_timeout_s=TCP_USER_TIMEOUT_S)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def bind_stun(host: str, port: int) -> socket.socket:
    try:
        return stunserver.bind_udp(host, port)
    except OSError as e:
        raise ServeError(
            f"cannot listen for STUN on UDP {host}:{port}: {e.strerror or e}:"
            " pass --stun-port with a free port, or --stun-port 0 for no STUN server"
        ) from None


def head_timeout_protocol(base: type[H11Protocol], timeout_s: float) -> type[H11Protocol]:
    """``base`` (an uvicorn h11 protocol class), but a connection whose request head is not
    complete ``timeout_s`` after it opened (or after its previous answer) is closed.

    uvicorn's keep-alive timeout stops as soon as any byte arrives, so a client sending
    its head slowly (slowloris) would hold the connection for ever. The timer stops once
    a head is complete: a request's body and answer (a map stream runs for hours) are not
    limited by it.
    """

    class HeadTimeoutProtocol(base):  # type: ignore[valid-type,misc]
        _head_timer: asyncio.TimerHandle | None = None

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._cancel_head_timer()  # a head arrived (or the connection ended)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._arm_head_timer()  # the next request's head

    return HeadTimeoutProtocol


class _Uvicorn(uvicorn.Server):
    """uvicorn, but a signal also ends the map streams, and the exit status stays 0."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self._hub = hub

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True
        self._hub.close_threadsafe()


class ControlServer:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.url = ""
        self.api_key = ""
        self.port = 0
        self.store: store.SqlStore | None = None
        self.relay: EmbeddedRelay | None = None
        self.stun_port: int | None = None  # the bound STUN port, if STUN runs
        self._sock: socket.socket | None = None
        self._stun_sock: socket.socket | None = None
        self._metrics_sock: socket.socket | None = None
        self.metrics_port: int | None = None  # the bound metrics port, if metrics are on
        self._server: _Uvicorn | None = None

    def open(self) -> None:
        opts = self.options
        data_dir = opts.data_dir
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            data_dir.chmod(0o700)
        except OSError as e:
            raise ServeError(f"cannot use the data directory {data_dir}: {e.strerror}") from None
        try:
            check_region_name(opts.region)
        except ValueError as e:
            raise ServeError(f"--region: {e}") from None
        if opts.relay_rate_bytes_per_s <= 0:
            raise ServeError("--relay-rate must be a positive number of bytes per second")
        if opts.max_connections_per_address < 1:
            raise ServeError("--max-connections-per-address must be at least 1")
        _fit_open_files(opts.max_connections)
        if (opts.tls_cert is None) != (opts.tls_key is None):
            raise ServeError("--tls-cert and --tls-key go together")
        tls_context = None
        if opts.tls_cert is not None and opts.tls_key is not None:
            try:
                tls_context = tls.server_context(opts.tls_cert, opts.tls_key)
            except tls.TlsError as e:
                raise ServeError(str(e)) from None
        oidc_config = None
        if opts.oidc is not None:
            try:
                oidc_config = OidcConfig.load(opts.oidc, opts.server_url)
            except ValueError as e:
                raise ServeError(str(e)) from None
        private, public = load_or_create_server_key(data_dir)
        url = opts.database_url or store.sqlite_url(data_dir)
        try:
            self.store = store.SqlStore.open(url)
        except Exception as e:
            raise ServeError(
                f"cannot open the database {store.redact(url)}: {_first_line(e)}"
            ) from None
        try:  # on PostgreSQL: shared with the other replicas
            feed = replicas.change_feed(
                self.store, controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, public)
            )
        except replicas.ReplicaKeyMismatch as e:
            raise ServeError(str(e)) from None
        service = ControlService(self.store, feed=feed)
        # Nodes resolve the server's name with the tailnet's domain in force: a domain
        # that contains it would make the server unreachable (docs/control-protocol.md).
        server_host = urlsplit(opts.server_url).hostname or "" if opts.server_url else ""
        if opts.dns_domain is not None:
            try:
                dnsdoc.check_domain(opts.dns_domain, [server_host], what="--dns-domain")
            except dnsdoc.DNSError as e:
                raise ServeError(str(e)) from None
        try:
            with acting_as(SERVE_ACTOR):
                settings = service.load_settings(opts.node_key_expiry, opts.dns_domain)
                if opts.device_approval is not None:
                    service.set_tailnet_settings(device_approval=opts.device_approval)
        except ServiceError as e:
            raise ServeError(str(e)) from None
        try:
            dnsdoc.check_domain(settings.dns_domain, [server_host])
        except dnsdoc.DNSError as e:
            log.warning("%s: set another with `weft-control dns set`", e)
        hub = Hub(
            service,
            keepalive_s=opts.keepalive_s,
            router_keepalive_s=opts.router_keepalive_s,
            ephemeral_grace_s=opts.ephemeral_grace_s,
            policy_clock=opts.policy_clock,
        )
        feed.subscribe(hub.notify_threadsafe)
        replicas.attach(hub, feed)
        self._sock = bind(opts.host, opts.port)
        self.port = self._sock.getsockname()[1]
        self.url = local_url(opts.host, self.port, "https" if opts.tls_cert else "http")
        if opts.stun_port:
            self._stun_sock = bind_stun(opts.host, opts.stun_port)
            self.stun_port = self._stun_sock.getsockname()[1]
        if opts.metrics_listen is not None:
            try:
                self._metrics_sock = metrics_http.bind(*opts.metrics_listen)
            except metrics_http.ListenError as e:
                raise ServeError(str(e)) from None
            self.metrics_port = self._metrics_sock.getsockname()[1]
        if opts.relay:
            relay_private, _ = load_or_create_relay_key(data_dir)
            self.relay = EmbeddedRelay(
                relay_private,
                hub,
                region_name=opts.region,
                stun_port=self.stun_port,
                rate_bytes_per_s=opts.relay_rate_bytes_per_s,
            )
        self.api_key = ensure_admin_key(service, data_dir, self.url, opts.tls_cert)
        metrics = ServerMetrics()
        metrics.watch_hub(hub)
        metrics.watch_store(self.store.engine)
        if self.relay is not None:
            metrics.watch_relay(self.relay.server)
        ctx = ControlContext(
            service=service,
            hub=hub,
            server_private=private,
            server_public=public,
            server_url=opts.server_url,
            followup_wait_s=opts.followup_wait_s,
            relay=self.relay,
            stun_socket=self._stun_sock,
            oidc=OidcClient(oidc_config) if oidc_config is not None else None,
            shared_replay=replicas.shared_replay_check(feed),
            metrics=metrics,
            metrics_socket=self._metrics_sock,
        )
        if ctx.oidc is not None:
            ctx.oidc.discover_at_start()
            log.info("OIDC login through %s", ctx.oidc.config.issuer)
        base = uvicorn_protocol(self.relay.server) if self.relay is not None else H11Protocol
        base = connlimit.per_address_protocol(
            base, connlimit.AddressCounts(opts.max_connections_per_address)
        )
        config = uvicorn.Config(
            create_app(ctx),
            http=head_timeout_protocol(base, opts.head_timeout_s),
            limit_concurrency=opts.max_connections,
            backlog=LISTEN_BACKLOG,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            lifespan="on",
            access_log=opts.access_log,
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
            log_level="info",
            # JSON lines: uvicorn's loggers go through the root logger's JSON handler.
            log_config=None if opts.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            server_header=False,
            ssl_context_factory=(lambda *_: tls_context) if tls_context is not None else None,
        )
        self._server = _Uvicorn(config, hub)
        log.info(
            "serving on %s (database %s, server key mkey:%s)",
            self.url,
            store.redact(url),
            public.hex(),
        )
        if self.relay is not None:
            log.info(
                "relay region %s on %s/relay (%s)", opts.region, self.url, self.relay.public_key
            )
        if self.stun_port is not None:
            log.info("STUN on UDP %s:%d", opts.host, self.stun_port)
        if opts.metrics_listen is not None:
            log.info(
                "metrics on http://%s/metrics",
                format_endpoint((opts.metrics_listen[0], self.metrics_port or 0)),
            )

    def run(self) -> None:
        """Serve until stopped (blocking; any thread)."""
        assert self._server is not None and self._sock is not None, "open() first"
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self.close()

    def request_stop(self) -> None:
        """Stop serving (thread-safe): ends streams, then uvicorn shuts down."""
        if self._server is not None:
            self._server.handle_exit(0, None)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._stun_sock is not None:
            self._stun_sock.close()
        if self._metrics_sock is not None:
            self._metrics_sock.close()
        if self.store is not None:
            self.store.dispose()

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def serve(options: ServeOptions) -> None:
    """Open and run a server (the ``weft-control serve`` command)."""
    server = ControlServer(options)
    server.open()
    server.run()


def configure_logging(log_format: str = "text") -> None:
    logformat.configure(log_format, logging.INFO, "weft-control: %(message)s")
    for noisy in ("alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
