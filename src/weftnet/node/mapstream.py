"""Following the map stream: report our endpoints, read frames, reconnect with backoff.

``MapStream.run`` is the supervised task "map". Each connection reports what peers
should try to reach us (at most ``tailcfg.MAX_ENDPOINTS``, usable addresses first), then
hands every frame to ``on_frame``. It reconnects when our endpoints change (STUN found
a new public address), when our home relay changes, and, with backoff, when the stream
breaks; meanwhile the data plane runs on the last map.

With several control URLs (replicas of one server), a stream that broke or could not
connect moves to the next URL (``ControlClient.fail_over``); a stream that had been
working starts the backoff over, so its node is back on another replica within about
a second.

A refusal (``MapResponse.error``) is a logout only when the server says this node is
logged out or expired (``error_kind`` "logged_out"/"expired", or an old server's words
for those). Anything else (clock skew, a bad request, a server error, a message we do
not know) keeps the node registered with its last map; Health shows the refusal, and
the stream is retried with backoff (review defect D5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from weftnet import tailcfg
from weftnet.endpoint import Endpoint, canonical, format_endpoint, is_usable_peer_address
from weftnet.node.controlclient import ControlError, backoff_delays

log = logging.getLogger("weftd")

LOGOUT_KINDS = frozenset({tailcfg.ERROR_LOGGED_OUT, tailcfg.ERROR_EXPIRED})
# What servers without error_kind say, for the refusals that are a logout.
_LEGACY_KINDS = (
    ("node deleted", "logged_out"),
    ("this machine is not registered", "logged_out"),
    ("this node key is not the one registered", "logged_out"),
    ("node key expired", "expired"),
    ("off the server clock", "clock_skew"),
)


def refusal_kind(resp: tailcfg.MapResponse) -> str:
    """The kind of a refusal; "unknown" for a message an old server sent that we do not
    recognise (treated as transient)."""
    if resp.error_kind:
        return resp.error_kind
    text = resp.error or ""
    return next((kind for words, kind in _LEGACY_KINDS if words in text), "unknown")


def endpoints_to_report(endpoints: list[tuple[str, int]]) -> list[str]:
    """Usable addresses first, at most MAX_ENDPOINTS (the server keeps no more)."""
    known = []
    for ep in endpoints:
        with contextlib.suppress(ValueError):
            known.append(canonical(ep))
    ranked = sorted(known, key=lambda ep: not is_usable_peer_address(ep))
    return [format_endpoint(ep) for ep in ranked[: tailcfg.MAX_ENDPOINTS]]


class MapStream:
    def __init__(
        self,
        control: Any,  # a ControlClient
        magic: Callable[[], Any],  # the current path layer
        hostname: Callable[[], str],
        local_endpoints: Callable[[], Awaitable[list[Endpoint]]],
        on_frame: Callable[[tailcfg.MapResponse], Awaitable[None]],
        on_logged_out: Callable[[str], Awaitable[None]],
        routable_ips: Callable[[], list[str]] = list,  # Hostinfo.routable_ips, from prefs
    ) -> None:
        self.control = control
        self.magic = magic
        self.hostname = hostname
        self.local_endpoints = local_endpoints
        self.on_frame = on_frame
        self.on_logged_out = on_logged_out
        self.routable_ips = routable_ips
        self.online = False  # the stream is connected
        self.since = time.monotonic()  # when `online` last changed
        self.last_error: str | None = None  # why the last connection ended
        self.refusal: tuple[str, str] | None = None  # (kind, message) of the last refusal

    def health(self, now: float) -> list[str]:
        out = []
        if self.refusal is not None:
            kind, text = self.refusal
            if kind == "clock_skew":
                out.append(f"clock skew reported by the control server: {text}")
            else:
                out.append(f"the control server refused the map request ({kind}): {text}")
        if not self.online:
            why = f": {self.last_error}" if self.last_error else ""
            out.append(f"not connected to the control server for {now - self.since:.0f} s{why}")
        return out

    def _set_online(self, online: bool) -> None:
        if online != self.online:
            self.online = online
            self.since = time.monotonic()

    async def run(self) -> None:
        """Until cancelled, or until the server says we are logged out."""
        delays = backoff_delays()
        try:
            while True:
                try:
                    outcome = await self._one_stream()
                except ControlError as e:
                    self.last_error = str(e)
                    log.warning("%s", e)
                    outcome = "connected" if self.online else "broken"
                if outcome == "logged_out":
                    return
                if outcome == "restart":
                    continue
                if outcome == "connected":
                    delays = backoff_delays()
                self._set_online(False)
                if self.control.fail_over():
                    log.info("trying the next control URL: %s", self.control.url)
                await asyncio.sleep(next(delays))
        finally:
            self._set_online(False)

    async def _one_stream(self) -> str:
        """One connection: "restart" (reconnect now), "broken", "connected" (it worked a
        while, then ended), or "logged_out"."""
        magic = self.magic()
        home = magic.relays.home
        magic.local_endpoints = await self.local_endpoints()
        reported = magic.endpoints()
        magic.published_endpoints = reported
        magic.endpoints_changed.clear()
        stream = self.control.map_stream(
            endpoints_to_report(reported),
            self.hostname(),
            disco_key=magic.disco_key_text,
            home_relay=home,
            routable_ips=self.routable_ips(),
        )
        outcome = "broken"
        try:
            while True:
                resp = await next_or_change(stream, magic.endpoints_changed)
                if resp is None:
                    return "restart" if magic.endpoints_changed.is_set() else outcome
                if resp.error:
                    return await self._refused(resp)
                if not self.online:
                    log.info("connected to %s", self.control.url)
                    self._set_online(True)
                    self.last_error = None
                self.refusal = None
                outcome = "connected"
                if resp.keepalive:
                    continue
                restart = False
                if resp.relay_map is not None:
                    await magic.relays.update(resp.relay_map)
                    restart = await magic.relays.measure() != home  # tell peers our home
                await self.on_frame(resp)
                if restart:
                    return "restart"
        finally:
            await stream.aclose()

    async def _refused(self, resp: tailcfg.MapResponse) -> str:
        kind, text = refusal_kind(resp), resp.error or ""
        log.warning("the coordination server says (%s): %s", kind, text)
        self._set_online(False)
        self.last_error = text
        if kind in LOGOUT_KINDS:
            self.refusal = None
            await self.on_logged_out(text)
            return "logged_out"
        self.refusal = (kind, text)
        return "broken"


async def next_or_change(
    stream: AsyncGenerator[tailcfg.MapResponse, None], changed: asyncio.Event
) -> tailcfg.MapResponse | None:
    """The next frame, or None when the stream ends or ``changed`` is set first."""
    nxt = asyncio.ensure_future(anext(stream))
    # However this ends (even cancelled from outside), the frame's outcome is consumed.
    nxt.add_done_callback(lambda f: f.cancelled() or f.exception())
    chg = asyncio.ensure_future(changed.wait())
    try:
        done, _ = await asyncio.wait({nxt, chg}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        chg.cancel()
        if not nxt.done():
            # Let the generator unwind before anyone closes it (aclose() on a running
            # generator raises), even when we are cancelled ourselves.
            nxt.cancel()
            await asyncio.wait({nxt})
    if nxt not in done:
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, ControlError):
            await nxt
        return None
    try:
        return nxt.result()
    except StopAsyncIteration:
        return None
