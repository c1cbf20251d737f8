"""The node's side of the control protocol: pin, register, and follow the map stream.

Every request is sealed from the machine key to the pinned server key (controlbox);
every answer must open with that pair, so a server that is not the pinned one is
refused. The map stream is read frame by frame; when it breaks, the caller retries with
``backoff_delays`` while the data plane keeps running on the last map.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import httpx

from weftnet import controlbox, tailcfg
from weftnet.node.state import NodeState, Pin

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0  # longer than the server's keepalive interval and login long-poll
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0  # a restarted server sees every node back within ~10 s


class ControlError(Exception):
    """Something a user should read: the server refused, or could not be reached."""


def backoff_delays(start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S) -> Iterator[float]:
    """0.5, 1, 2, 4 ... seconds, capped, with a little jitter so nodes spread out."""
    d = start
    while True:
        jitter = int.from_bytes(os.urandom(2), "big") / 65536 * d * 0.2
        yield min(d, cap) + jitter
        d = min(d * 2, cap)


class ControlClient:
    def __init__(self, state: NodeState, login_server: str) -> None:
        self.state = state
        self.url = login_server.rstrip("/")
        self.server_key: bytes | None = None
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def ensure_server_key(self) -> bytes:
        """The server's key: pinned on first contact, checked on every later one."""
        if self.server_key is not None:
            return self.server_key
        pin = self.state.pin()
        try:
            r = await self.http.get(f"{self.url}/key")
            r.raise_for_status()
            offered = tailcfg.ServerKey.model_validate_json(r.content)
        except (httpx.HTTPError, ValueError) as e:
            raise ControlError(f"cannot reach the coordination server at {self.url}: {e}") from e
        if offered.capability_version < tailcfg.ANSWER_BINDING_VERSION:
            raise ControlError(
                f"the server at {self.url} is too old (capability version"
                f" {offered.capability_version}; weftd needs {tailcfg.ANSWER_BINDING_VERSION}"
                " or newer, which binds answers to requests): upgrade weft-control"
            )
        key = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, offered.public_key)
        if pin is not None and pin.login_server == self.url:
            pinned = controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, pin.server_key)
            if pinned != key:
                raise ControlError(
                    f"the server at {self.url} presents a different key than the one pinned"
                    f" in {self.state.directory}/server.json: refusing (log out to re-pin)"
                )
        else:
            self.state.save_pin(Pin(self.url, offered.public_key))
        self.server_key = key
        return key

    def _seal(self, model: tailcfg.Wire) -> bytes:
        assert self.server_key is not None
        return controlbox.seal(
            self.state.machine_private,
            self.server_key,
            model.model_dump_json().encode(),
            os.urandom(controlbox.NONCE_LEN),
        )

    def _open(self, sealed: bytes, request: bytes, index: int = 0) -> bytes:
        """The ``index``-th answer to our sealed ``request``: sealed with the pinned key and
        bound to that request (a recorded older answer is refused)."""
        assert self.server_key is not None
        try:
            return controlbox.open_answer(
                self.state.machine_private, self.server_key, sealed, request, index
            )
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
    ) -> tailcfg.RegisterResponse:
        await self.ensure_server_key()
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
        except httpx.HTTPError as e:
            raise ControlError(f"cannot reach the coordination server at {self.url}: {e}") from e
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
    ) -> AsyncGenerator[tailcfg.MapResponse, None]:
        """Yield each frame of one map stream until it ends or breaks (ControlError)."""
        await self.ensure_server_key()
        req = tailcfg.MapRequest(
            ts=time.time(),
            node_key=controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, self.state.node_public),
            disco_key=disco_key,
            home_relay=home_relay,
            endpoints=endpoints,
            hostinfo=tailcfg.Hostinfo(hostname=hostname, client_version=_version()),
        )
        reader = controlbox.FrameReader()
        sealed_req = self._seal(req)
        frames = 0
        try:
            async with self.http.stream("POST", self._machine_url("map"), content=sealed_req) as r:
                if r.status_code != 200:
                    body = (await r.aread())[:200]
                    raise ControlError(f"map request refused: {r.status_code} {body!r}")
                async for chunk in r.aiter_raw():
                    for sealed in reader.feed(chunk):
                        plain = self._open(sealed, sealed_req, frames)
                        frames += 1
                        yield tailcfg.MapResponse.model_validate_json(plain)
        except (httpx.HTTPError, controlbox.SealError, ValueError) as e:
            raise ControlError(f"map stream from {self.url} broke: {e}") from e


def _version() -> str:
    from weftnet import __version__

    return __version__


def dump(model: tailcfg.Wire) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(model.model_dump_json())
    return result
