"""A standalone relay (``weft-control relay``): a relay region of its own, run anywhere.

Theory of operation: the process listens on TCP (``RelayServer.serve_tcp``: TLS with
``--tls-cert``/``--tls-key``, the HTTP upgrade on ``/relay``, then relay frames) and,
unless disabled, answers STUN on UDP. It has its own key (``DATA_DIR/relay.key``) and
talks to the coordination server's admin API with an API key (scope ``relay`` is
enough), which it sends only over a verified channel (https, or http to this host, or
``--allow-insecure-http``: weftnet.tls, adminclient.check_channel):

- it registers its region (``POST /api/v1/relays``: region, URL, public key, STUN port)
  at start and every ``REGISTER_INTERVAL_S`` after; the server drops a region that was
  not refreshed for 30 s, and sends the relay map to every node;
- it keeps the set of node keys it may admit (``GET /api/v1/relay/nodekeys``: nodes
  that exist and whose key has not expired), fetched every ``KEYS_INTERVAL_S`` and at
  once when a client presents a key that is not in it. After every fetch it disconnects
  connected clients whose key left the set, so a deleted or expired node is cut off
  within about a second. Fetches run one at a time; a miss waits for a fetch that began
  after it, so a node registered a moment ago is admitted. Misses cannot make the relay
  hammer the control server (an anonymous client can claim a new key per connection):
  a fetch for a miss begins at least ``MISS_FETCH_INTERVAL_S`` after the previous
  fetch began (misses meanwhile share it), and a key found unknown is refused without a
  fetch for ``UNKNOWN_TTL_S`` (a negative cache of at most ``MAX_UNKNOWN`` keys, the
  oldest forgotten first). A key that appears in a later fetch is admitted at once.

With ``--mesh REGION`` (and ``--mesh-secret-file``) the relay registers as one of the
relays serving REGION and keeps watching the others (mesh.py): every ``MESH_REFRESH_S``
it reads the relay map (``GET /api/v1/relays``) and watches every other relay that
registered with the same mesh (their keys pinned), plus any ``--mesh-peer`` URL. The
mesh's connections run under a supervisor (weftnet.node.supervisor), restarted with
backoff if they fail in a way nobody foresaw. A relay that left the map is no longer
watched; its clients move to another relay of the region by themselves.

If the control server cannot be reached, the relay keeps the last set it fetched (the
tailnet keeps working through a control outage) and refuses keys outside it with
"admission check failed; try again later". A refusal of the registration at start (bad
API key, region taken by the server's own relay, malformed URL) is a startup error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry

from weftnet import controlbox, keyfile, logformat, tailcfg, tls
from weftnet.control.domain.relays import REGISTER_INTERVAL_S, check_region_name, relay_key_text
from weftnet.control.server.relayhost import DEFAULT_RELAY_RATE, REVOKED
from weftnet.endpoint import format_endpoint
from weftnet.metrics import http as metrics_http
from weftnet.node.supervisor import Supervisor
from weftnet.relay import meshauth
from weftnet.relay.client import RelayTarget
from weftnet.relay.mesh import Mesh, load_secret
from weftnet.relay.metrics import RelayCollector
from weftnet.relay.server import RelayServer
from weftnet.relay.upgrade import parse_relay_url
from weftnet.stun import server as stunserver

log = logging.getLogger("weftnet.relayd")

KEYS_INTERVAL_S = 1.0  # the admitted node keys are fetched this often
MISS_FETCH_INTERVAL_S = 1.0  # a fetch for an unknown key waits this long after the last
MESH_REFRESH_S = 2.0  # the relays of the mesh are read from the relay map this often
UNKNOWN_TTL_S = 5.0  # a key found unknown is refused without a fetch for this long
MAX_UNKNOWN = 4096  # keys in that negative cache
HTTP_TIMEOUT_S = 5.0  # one request to the control server
RELAY_KEY_FILE = "relay.key"
DEFAULT_LISTEN = "0.0.0.0:8081"
DEFAULT_DATA_DIR = "/var/lib/weft-relay"


class RelayError(Exception):
    """The relay cannot start; the message says why and what to do."""


@dataclass
class RelayOptions:
    control_url: str
    api_key: str
    region: str
    host: str = "0.0.0.0"
    port: int = 8081
    stun_port: int = stunserver.DEFAULT_STUN_PORT  # 0: no STUN server
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    public_url: str | None = None  # what nodes connect to; derived when None
    rate_bytes_per_s: int = DEFAULT_RELAY_RATE
    register_interval_s: float = REGISTER_INTERVAL_S
    keys_interval_s: float = KEYS_INTERVAL_S
    tls_cert: str | None = None  # serve relay clients over TLS with this chain ...
    tls_key: str | None = None  # ... and key
    tls_ca: str | None = None  # the CAs an https control server must chain to
    allow_insecure_http: bool = False  # send the API key over http to another host
    mesh: str | None = None  # the region this relay serves with others
    mesh_secret_file: Path | None = None  # the secret they share (mode 0600)
    mesh_peers: list[str] = field(default_factory=list)  # more peers' URLs to watch
    mesh_refresh_s: float = MESH_REFRESH_S
    metrics_listen: tuple[str, int] | None = None  # Prometheus metrics (docs/metrics.md)


class NodeKeys:
    """The node keys the control server admits, as last fetched."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[frozenset[bytes]]],
        *,
        miss_interval_s: float = MISS_FETCH_INTERVAL_S,
        unknown_ttl_s: float = UNKNOWN_TTL_S,
        max_unknown: int = MAX_UNKNOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.keys: frozenset[bytes] | None = None  # None until the first fetch succeeds
        self.error: str | None = None  # why the last fetch failed, if it did
        self.miss_interval_s = miss_interval_s
        self.unknown_ttl_s = unknown_ttl_s
        self.max_unknown = max_unknown
        self._clock = clock
        self._lock = asyncio.Lock()
        self._started = 0  # fetches begun, ever
        self._last_start: float | None = None  # clock() when the last fetch began
        self._unknown: OrderedDict[bytes, float] = OrderedDict()  # key -> when found unknown
        self.fetches = 0  # fetches done, ever
        self.refused_cached = 0  # admissions refused from the negative cache

    @property
    def unknown(self) -> int:
        """How many keys the negative cache holds now (at most ``max_unknown``)."""
        return len(self._unknown)

    async def refresh(self, min_interval_s: float = 0.0) -> bool:
        """Fetch the set, unless a fetch that began after this call already finished;
        False if the fetch failed (the old set stays). The fetch begins no sooner than
        ``min_interval_s`` after the previous one began."""
        asked = self._started
        async with self._lock:
            if self._started > asked:  # one began after we asked, and has finished
                return self.error is None
            if self._last_start is not None:
                wait = self._last_start + min_interval_s - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._started += 1
            self.fetches += 1
            self._last_start = self._clock()
            try:
                self.keys = await self._fetch()
            except Exception as e:
                if self.error is None:
                    log.warning("cannot fetch the admitted node keys: %s", _first_line(e))
                self.error = _first_line(e)
                return False
            if self.error is not None:
                log.info("fetching the admitted node keys works again")
            self.error = None
            return True

    async def admit(self, key: bytes) -> bool:
        if self.keys is not None and key in self.keys:
            self._unknown.pop(key, None)
            return True
        found_at = self._unknown.get(key)
        if found_at is not None:
            if self._clock() - found_at < self.unknown_ttl_s:
                self.refused_cached += 1
                return False
            del self._unknown[key]
        fetched = await self.refresh(self.miss_interval_s)
        if self.keys is not None and key in self.keys:
            return True
        if not fetched:
            raise ConnectionError(f"the control server did not answer: {self.error}")
        self._unknown[key] = self._clock()
        while len(self._unknown) > self.max_unknown:
            self._unknown.popitem(last=False)
        return False


class StandaloneRelay:
    def __init__(self, options: RelayOptions) -> None:
        opts = options
        self.options = opts
        try:
            check_region_name(opts.region)
        except ValueError as e:
            raise RelayError(f"--region: {e}") from None
        if opts.rate_bytes_per_s <= 0:
            raise RelayError("--relay-rate must be a positive number of bytes per second")
        if (opts.tls_cert is None) != (opts.tls_key is None):
            raise RelayError("--tls-cert and --tls-key go together")
        self._mesh_secret = self._check_mesh(opts)
        if not opts.control_url.startswith(("http://", "https://")):
            raise RelayError(f"--control-url {opts.control_url!r}: expected https://HOST:PORT")
        if not (
            tls.is_https(opts.control_url)
            or tls.is_loopback_url(opts.control_url)
            or opts.allow_insecure_http
        ):
            raise RelayError(
                f"refusing to send the API key to {opts.control_url} over plain http, where"
                " anyone on the path can read it: use an https:// control URL, or"
                " --allow-insecure-http to accept the risk"
            )
        try:
            self._server_tls = (
                tls.server_context(opts.tls_cert, opts.tls_key)
                if opts.tls_cert is not None and opts.tls_key is not None
                else None
            )
            self._client_tls = tls.client_context(opts.tls_ca)
        except tls.TlsError as e:
            raise RelayError(str(e)) from None
        self.url = ""  # the public URL registered (known after start)
        self.port = 0
        self.stun_port: int | None = None
        self.relay: RelayServer | None = None
        self.node_keys = NodeKeys(self._fetch_keys)
        self._http: httpx.AsyncClient | None = None
        self._listener: asyncio.Server | None = None
        self._stun: asyncio.DatagramTransport | None = None
        self._metrics: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.mesh: Mesh | None = None
        self._supervisor = Supervisor()  # the mesh's tasks

    @staticmethod
    def _check_mesh(opts: RelayOptions) -> bytes | None:
        """The mesh secret, if this relay is in a mesh; RelayError for a bad setup."""
        if opts.mesh is None:
            if opts.mesh_secret_file is not None or opts.mesh_peers:
                raise RelayError("--mesh-secret-file and --mesh-peer go with --mesh REGION")
            return None
        try:
            check_region_name(opts.mesh)
        except ValueError as e:
            raise RelayError(f"--mesh: {e}") from None
        if opts.mesh == opts.region:
            raise RelayError("--region names this relay and --mesh its region: make them differ")
        if opts.mesh_secret_file is None:
            raise RelayError("--mesh needs --mesh-secret-file (the secret the mesh shares)")
        for url in opts.mesh_peers:
            try:
                parse_relay_url(url)
            except ValueError as e:
                raise RelayError(f"--mesh-peer {url}: {e}") from None
        try:
            return load_secret(opts.mesh_secret_file)
        except meshauth.MeshSecretError as e:
            raise RelayError(str(e)) from None

    async def start(self) -> None:
        opts = self.options
        try:
            opts.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            private, created = keyfile.load_or_create(opts.data_dir / RELAY_KEY_FILE)
        except OSError as e:
            raise RelayError(f"cannot use the data directory {opts.data_dir}: {e}") from None
        except keyfile.KeyFileError as e:
            raise RelayError(str(e)) from None
        if created:
            log.info("created the relay key in %s", opts.data_dir / RELAY_KEY_FILE)
        if self._mesh_secret is not None:
            self.mesh = Mesh(
                self._mesh_secret, private, tls_context=self._client_tls,
                spawn=self._supervisor.spawn,
            )  # fmt: skip
        self.relay = RelayServer(
            private, self.node_keys.admit, rate_bytes_per_s=opts.rate_bytes_per_s, mesh=self.mesh
        )
        try:
            self._listener = await self.relay.serve_tcp(opts.host, opts.port, self._server_tls)
        except OSError as e:
            raise RelayError(
                f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}"
            ) from None
        self.port = self._listener.sockets[0].getsockname()[1]
        if opts.metrics_listen is not None:
            self._metrics = await self._serve_metrics(self.relay, opts.metrics_listen)
        if opts.stun_port:
            try:
                sock = stunserver.bind_udp(opts.host, opts.stun_port)
            except OSError as e:
                raise RelayError(
                    f"cannot listen for STUN on UDP {opts.host}:{opts.stun_port}:"
                    f" {e.strerror or e}: pass --stun-port with a free port, or 0 for none"
                ) from None
            self._stun, _ = await stunserver.start(sock)
            self.stun_port = sock.getsockname()[1]
        scheme = "https" if self._server_tls is not None else "http"
        self.url = opts.public_url or derive_public_url(
            opts.host, self.port, opts.control_url, scheme
        )
        try:
            parse_relay_url(self.url)
        except ValueError as e:
            raise RelayError(f"--public-url: {e}") from None
        self._http = httpx.AsyncClient(
            base_url=opts.control_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {opts.api_key}"},
            timeout=HTTP_TIMEOUT_S,
            verify=self._client_tls,
        )
        public_key = relay_key_text(self.relay.public_key)
        log.info(
            "relay region %s at %s (%s), STUN %s",
            opts.region,
            self.url,
            public_key,
            f"UDP {self.stun_port}" if self.stun_port else "off",
        )
        try:
            await self._register()
        except RelayError:
            raise
        except httpx.HTTPError as e:
            if tls.is_verify_error(e):  # not an outage: a configuration to fix
                raise RelayError(
                    f"cannot register with {opts.control_url}: {tls.describe(e)}"
                ) from None
            log.warning(
                "cannot register with the control server at %s yet: %s (retrying every %g s)",
                opts.control_url,
                tls.describe(e),
                opts.register_interval_s,
            )
        await self.node_keys.refresh()
        self._cut_revoked()
        self._tasks = [
            asyncio.create_task(self._register_forever()),
            asyncio.create_task(self._sync_keys_forever()),
        ]
        if self.mesh is not None:
            self._supervisor.spawn("mesh peers", self._mesh_forever)

    @staticmethod
    async def _serve_metrics(relay: RelayServer, listen: tuple[str, int]) -> asyncio.Server:
        registry = CollectorRegistry()
        registry.register(RelayCollector(relay))
        try:
            sock = metrics_http.bind(*listen)
        except metrics_http.ListenError as e:
            raise RelayError(str(e)) from None
        log.info("metrics on http://%s/metrics", format_endpoint(listen))
        return await metrics_http.serve(registry, sock)

    async def close(self) -> None:
        await self._supervisor.close()
        if self.mesh is not None:
            await self.mesh.close()
        if self._metrics is not None:
            self._metrics.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.relay is not None:
            await self.relay.close()
        if self._stun is not None:
            self._stun.close()
        if self._http is not None:
            await self._http.aclose()

    # -- talking to the control server ------------------------------------------------

    async def _register(self) -> None:
        """One registration; RelayError when the server refuses it (not when unreachable)."""
        assert self._http is not None and self.relay is not None
        body: dict[str, Any] = {
            "region": self.options.region,
            "url": self.url,
            "public_key": relay_key_text(self.relay.public_key),
            "stun_port": self.stun_port,
        }
        if self.options.mesh is not None:
            body["mesh"] = self.options.mesh
        r = await self._http.post("/relays", json=body)
        if r.status_code >= 400:
            raise RelayError(f"the control server refused this relay: {_api_error(r)}")

    async def _register_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.options.register_interval_s)
            try:
                await self._register()
            except (RelayError, httpx.HTTPError) as e:
                if not failing:
                    log.warning("registration failed: %s (retrying)", tls.describe(e))
                failing = True
                continue
            if failing:
                log.info("registered with the control server again")
            failing = False

    async def _fetch_keys(self) -> frozenset[bytes]:
        assert self._http is not None
        r = await self._http.get("/relay/nodekeys")
        if r.status_code != 200:
            raise RelayError(f"GET /api/v1/relay/nodekeys: {_api_error(r)}")
        keys = set()
        for text in r.json().get("node_keys", []):
            with contextlib.suppress(ValueError):
                keys.add(controlbox.key_from_text(tailcfg.NODE_KEY_PREFIX, text))
        return frozenset(keys)

    async def _sync_keys_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.keys_interval_s)
            if await self.node_keys.refresh():
                self._cut_revoked()

    async def _mesh_forever(self) -> None:
        """Watch the relays of our mesh as the relay map lists them (and --mesh-peer)."""
        assert self.mesh is not None
        failing = False
        while True:
            try:
                await self.mesh.set_peers(await self._mesh_peers())
                if failing:
                    log.info("reading the relays of the mesh works again")
                failing = False
            except (RelayError, httpx.HTTPError) as e:
                if not failing:  # keep watching the peers we knew: the mesh still works
                    log.warning("cannot read the relays of the mesh: %s", tls.describe(e))
                failing = True
            await asyncio.sleep(self.options.mesh_refresh_s)

    async def _mesh_peers(self) -> list[RelayTarget]:
        assert self._http is not None
        r = await self._http.get("/relays")
        if r.status_code != 200:
            raise RelayError(f"GET /api/v1/relays: {_api_error(r)}")
        targets = [RelayTarget(url, url) for url in self.options.mesh_peers]
        for entry in r.json():
            if entry.get("mesh") != self.options.mesh or entry.get("region") == self.options.region:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                key = controlbox.key_from_text(tailcfg.RELAY_KEY_PREFIX, entry["public_key"])
                parse_relay_url(entry["url"])
                targets.append(RelayTarget(entry["region"], entry["url"], key))
        return targets

    def _cut_revoked(self) -> None:
        keys = self.node_keys.keys
        if keys is None or self.relay is None:
            return
        for client in self.relay.clients():
            if client.node_key not in keys:
                log.info("cutting off %s: not admitted any more", client.node_key.hex()[:16])
                self.relay.disconnect(client.node_key, REVOKED)


def derive_public_url(host: str, port: int, control_url: str, scheme: str = "http") -> str:
    """SCHEME://HOST:PORT for a concrete listen address; for a wildcard one, the address
    this host uses to reach the control server (RelayError if there is none)."""
    if host not in ("", "0.0.0.0", "::"):
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    parts = urlsplit(control_url)
    try:
        target = parts.hostname or ""
        family = socket.AF_INET if host == "0.0.0.0" else socket.AF_UNSPEC  # IPv4-only listener
        infos = socket.getaddrinfo(target, parts.port or 80, family, socket.SOCK_DGRAM)
        found, _, _, _, address = infos[0]
        with socket.socket(found, socket.SOCK_DGRAM) as s:
            s.connect(address)  # UDP: no packet is sent, the kernel just picks a route
            ip = s.getsockname()[0]
    except (OSError, ValueError, IndexError) as e:
        raise RelayError(
            f"cannot tell this relay's address from the control URL ({e}): pass --public-url"
        ) from None
    return f"{scheme}://[{ip}]:{port}" if ":" in ip else f"{scheme}://{ip}:{port}"


def _api_error(r: httpx.Response) -> str:
    try:
        message = r.json().get("error")
    except ValueError:
        message = None
    return f"HTTP {r.status_code}: {message or r.text.strip()[:200]}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


async def run(options: RelayOptions, stop: asyncio.Event | None = None) -> None:
    """Run a standalone relay until SIGTERM/SIGINT (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    relay = StandaloneRelay(options)
    try:
        await relay.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await relay.close()


def configure_logging(log_format: str = "text") -> None:
    logformat.configure(log_format, logging.INFO, "weft-control relay: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
