"""The node's side of the control protocol: verify, register, and follow the map stream.

The server's key is checked before anything secret is sealed to it (node.trust: an auth
key's fingerprint, ``--server-key``, a verified https:// URL, or the key pinned at an
earlier login). Every request is sealed from the machine key to that key (controlbox);
every answer must open with that pair, so a server that is not the verified one is
refused. https:// URLs are verified against the system's CAs or ``--tls-ca`` (weftnet.tls). The map stream is read frame by frame; when it breaks, the caller retries with
``backoff_delays`` while the data plane keeps running on the last map.

Several replicas of one server (docs/scaling.md): the login server may be a list,
``URL1,URL2`` (``parse_login_servers``); they share one server key, pinned for the
list. ``url`` is the one in use; ``fail_over`` moves to the next (the map stream does
when its stream breaks or cannot connect), and a request that could not even connect
is tried at the next one at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx

from weftnet import controlbox, sockmark, tailcfg, tls
from weftnet.node.state import NodeState, Pin
from weftnet.node.trust import ServerTrust, TrustError, check_login_channel, check_offered

log = logging.getLogger("weftd")

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # longer than the server's keepalive interval and login long-poll
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0  # a restarted server sees every node back within ~10 s

T = TypeVar("T")


class ControlError(Exception):
    """Something a user should read: the server refused, or could not be reached."""


class Unreachable(ControlError):
    """No connection to the server at all (nothing was sent): another replica may answer."""


def parse_login_servers(text: str) -> list[str]:
    """The URLs of ``URL`` or ``URL1,URL2,...``, without trailing slashes; ValueError
    for anything but http(s) URLs."""
    urls = [u.strip().rstrip("/") for u in text.split(",")]
    for url in urls:
        if not url.startswith(("http://", "https://")) or len(url) <= len("https://"):
            raise ValueError(
                f"--login-server must be an http(s) URL (or several, comma-separated), not {url!r}"
            )
    if len(set(urls)) != len(urls):
        raise ValueError("--login-server names the same URL twice")
    return urls


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S) -> Iterator[float]:
    """0.5, 1, 2, 4 ... seconds, capped, with a little jitter so nodes spread out."""
    d = start
    while True:
        jitter = int.from_bytes(os.urandom(2), "big") / 65536 * d * 0.2
        yield min(d, cap) + jitter
        d = min(d * 2, cap)


class ControlClient:
    def __init__(
        self,
        state: NodeState,
        login_server: str,
        tls_ca: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """``http``: a client shared with other ControlClients (a load generator driving
        many nodes from one process), closed by its owner; else each has its own."""
        self.state = state
        self.urls = parse_login_servers(login_server)
        self.login_server = ",".join(self.urls)  # what the pin is for
        self.url = self.urls[0]  # the replica in use
        self.server_key: bytes | None = None
        self.warning: str | None = None  # why the server's key is not verified, if it is not
        self.frame_bytes = 0  # the size on the wire of the last map frame yielded
        self._owns_http = http is None
        if http is not None:
            self.http = http
            return
        context = tls.client_context(tls_ca)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            verify=context,
            # Marked: the control connection bypasses weftd's routes (docs/routes.md).
            transport=httpx.AsyncHTTPTransport(
                verify=context,
                socket_options=sockmark.SOCKET_OPTIONS if sockmark.may_mark() else None,
            ),
        )

    async def close(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def ensure_server_key(self, trust: ServerTrust | None = None) -> bytes:
        """The server's key, verified (node.trust) before it is used. A login passes
        ``trust`` (what the user gave to verify with): the key is fetched and checked
        again. Otherwise the key already verified, or the one pinned, is used."""
        if self.server_key is not None and trust is None:
            return self.server_key
        trust = trust or ServerTrust()
        pin = self.state.pin()
        pinned = None
        if pin is not None and pin.login_server == self.login_server:
            with contextlib.suppress(ValueError):  # a damaged pin is as good as none
                pinned = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, pin.server_key)
        try:
            warning = check_login_channel(self.url, trust, pinned)
        except TrustError as e:
            raise ControlError(str(e)) from None
        offered = await self._fetch_key()
        try:
            check_offered(self.url, offered, trust, pinned)
        except TrustError as e:
            raise ControlError(str(e)) from None
        if warning is not None:
            log.warning("%s", warning)
        self.warning = warning
        if offered != pinned:
            self.state.save_pin(
                Pin(
                    self.login_server,
                    controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, offered),
                )
            )
        self.server_key = offered
        return offered

    def fail_over(self) -> bool:
        """Use the next URL of the list (round robin); False when there is only one."""
        if len(self.urls) == 1:
            return False
        self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
        return True

    async def _first_reachable(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` at the URL in use, and at the next ones while it raises
        ``Unreachable`` (nothing was sent, so trying again is safe)."""
        for _ in range(len(self.urls) - 1):
            try:
                return await attempt()
            except Unreachable as e:
                log.warning("%s: trying the next control URL", e)
                self.fail_over()
        return await attempt()

    async def _fetch_key(self) -> bytes:
        """What ``GET /key`` offers (not yet trusted), from the first URL that answers."""
        return await self._first_reachable(self._fetch_key_once)

    async def _fetch_key_once(self) -> bytes:
        try:
            r = await self.http.get(f"{self.url}/key")
            r.raise_for_status()
            offered = tailcfg.ServerKey.model_validate_json(r.content)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise Unreachable(
                f"cannot reach the coordination server at {self.url}: {tls.describe(e)}"
            ) from e
        except (httpx.HTTPError, ValueError) as e:
            raise ControlError(
                f"cannot reach the coordination server at {self.url}: {tls.describe(e)}"
            ) from e
        if offered.capability_version < tailcfg.ANSWER_BINDING_VERSION:
            raise ControlError(
                f"the server at {self.url} is too old (capability version"
                f" {offered.capability_version}; weftd needs {tailcfg.ANSWER_BINDING_VERSION}"
                " or newer, which binds answers to requests): upgrade weft-control"
            )
        try:
            return controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, offered.public_key)
        except ValueError as e:
            raise ControlError(f"the server at {self.url} offered a malformed key: {e}") from e

    def _seal(self, model: tailcfg.Wire) -> bytes:
        assert self.server_key is not None
        return controlbox.seal(
            self.state.machine_private,
            self.server_key,
            model.model_dump_json().encode(),
            os.urandom(controlbox.NONCE_LEN),
        )

    def _open(
        self,
        sealed: bytes,
        request: bytes,
        index: int = 0,
        sealer: controlbox.Sealer | None = None,
    ) -> bytes:
        """The ``index``-th answer to our sealed ``request``: sealed with the pinned key and
        bound to that request (a recorded older answer is refused)."""
        assert self.server_key is not None
        try:
            sealer = sealer or controlbox.Sealer(self.state.machine_private, self.server_key)
            return sealer.open_answer(sealed, request, index)
        except controlbox.SealError as e:
            raise ControlError(
                f"the server's answer is not sealed with the pinned key for this request: {e}"
            ) from e

    def _machine_url(self, what: str) -> str:
        return f"{self.url}/machine/{self.state.machine_public.hex()}/{what}"

    async def register(
        self,
        auth_key: str | None = None,
        hostname: str = "",
        followup: str | None = None,
        logout: bool = False,
        old_node_key: str | None = None,
        trust: ServerTrust | None = None,
    ) -> tailcfg.RegisterResponse:
        """One registration request. A login passes ``trust`` (node.trust): the server's
        key is verified with it before ``auth_key`` is sealed to it. A replica that
        cannot be reached at all is skipped for the next."""
        return await self._first_reachable(
            lambda: self._register_once(auth_key, hostname, followup, logout, old_node_key, trust)
        )

    async def _register_once(
        self,
        auth_key: str | None,
        hostname: str,
        followup: str | None,
        logout: bool,
        old_node_key: str | None,
        trust: ServerTrust | None,
    ) -> tailcfg.RegisterResponse:
        await self.ensure_server_key(trust)
        req = tailcfg.RegisterRequest(
            ts=time.time(),
            node_key=controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, self.state.node_public),
            old_node_key=old_node_key,
            auth_key=auth_key,
            hostinfo=tailcfg.Hostinfo(hostname=hostname, client_version=_version()),
            followup=followup,
            logout=logout,
        )
        sealed_req = self._seal(req)
        try:
            r = await self.http.post(self._machine_url("register"), content=sealed_req)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise Unreachable(
                f"cannot reach the coordination server at {self.url}: {tls.describe(e)}"
            ) from e
        except httpx.HTTPError as e:
            raise ControlError(
                f"cannot reach the coordination server at {self.url}: {tls.describe(e)}"
            ) from e
        if r.status_code != 200:
            raise ControlError(f"the server refused the request: {r.status_code} {r.text[:200]}")
        try:
            return tailcfg.RegisterResponse.model_validate_json(self._open(r.content, sealed_req))
        except ValueError as e:
            raise ControlError(f"malformed answer from the server: {e}") from e

    async def map_stream(
        self,
        endpoints: list[str],
        hostname: str,
        disco_key: str | None = None,
        home_relay: str | None = None,
        routable_ips: list[str] | None = None,
    ) -> AsyncGenerator[tailcfg.MapResponse, None]:
        """Yield each frame of one map stream until it ends or breaks (ControlError)."""
        server_key = await self.ensure_server_key()
        req = tailcfg.MapRequest(
            ts=time.time(),
            node_key=controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, self.state.node_public),
            disco_key=disco_key,
            home_relay=home_relay,
            endpoints=endpoints,
            hostinfo=tailcfg.Hostinfo(
                hostname=hostname, client_version=_version(), routable_ips=routable_ips or []
            ),
        )
        reader = controlbox.FrameReader()
        sealed_req = self._seal(req)
        sealer = controlbox.Sealer(self.state.machine_private, server_key)  # once a stream
        frames = 0
        try:
            async with self.http.stream("POST", self._machine_url("map"), content=sealed_req) as r:
                if r.status_code != 200:
                    body = (await r.aread())[:200]
                    raise ControlError(f"map request refused: {r.status_code} {body!r}")
                async for chunk in r.aiter_raw():
                    for sealed in reader.feed(chunk):
                        plain = self._open(sealed, sealed_req, frames, sealer)
                        frames += 1
                        self.frame_bytes = len(sealed) + controlbox.FRAME_HEADER.size
                        yield tailcfg.MapResponse.model_validate_json(plain)
        except (httpx.HTTPError, controlbox.SealError, ValueError) as e:
            raise ControlError(f"map stream from {self.url} broke: {tls.describe(e)}") from e


def _version() -> str:
    from weftnet import __version__

    return __version__


def dump(model: tailcfg.Wire) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(model.model_dump_json())
    return result
