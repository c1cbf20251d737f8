"""Watching the host's network: netlink events and our local endpoints.

``NetlinkWatcher.run`` is a supervised task: a thread reads netlink (pyroute2 blocks)
and calls back on the event loop for every address or route change; if the thread
dies the coroutine raises, so the supervisor logs it and starts a new watcher.
``local_endpoints`` lists the host's own addresses with our port, for peers on the same
network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import select
import threading
from collections.abc import Awaitable, Callable

from weftnet.endpoint import Endpoint, canonical

log = logging.getLogger("weftd.netmon")

OVERLAY_ROUTES = [
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
]
NETWORK_SETTLE_S = 0.1  # wait this long after a netlink event before re-checking
POLL_S = 0.5  # how often the reader thread looks whether it should stop
_WANTED = {"RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWROUTE", "RTM_DELROUTE"}


def local_endpoints(port: int, exclude_ifname: str) -> list[Endpoint]:
    """The host's addresses (not loopback, link-local, ours in the overlay) with ``port``."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            name = names.get(msg["index"])
            addr = msg.get_attr("IFA_ADDRESS")
            if not addr or name in ("lo", exclude_ifname):
                continue
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local or any(ip in n for n in OVERLAY_ROUTES):
                continue
            out.append(canonical((str(ip), port)))
    return out


class NetlinkWatcher:
    def __init__(self, on_event: Callable[[], None]) -> None:
        self.on_event = on_event

    async def run(self) -> None:
        """Until cancelled; raises when the reader thread dies."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        stop = threading.Event()

        def finish(error: BaseException | None) -> None:
            if not ended.done():
                if error is None:
                    ended.set_exception(RuntimeError("the netlink watcher ended"))
                else:
                    ended.set_exception(error)

        def body() -> None:
            error: BaseException | None = None
            try:
                self._read(loop, stop)
            except BaseException as e:  # handed to the coroutine, which raises it
                error = e
            if not stop.is_set() and not loop.is_closed():
                loop.call_soon_threadsafe(finish, error)

        thread = threading.Thread(target=body, name="netlink", daemon=True)
        thread.start()
        try:
            await ended
        finally:
            stop.set()

    def _read(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.bind()
            while not stop.is_set() and not loop.is_closed():
                readable, _, _ = select.select([ipr], [], [], POLL_S)
                if not readable:
                    continue
                for msg in ipr.get():
                    if msg.get("event") in _WANTED and not loop.is_closed():
                        loop.call_soon_threadsafe(self.on_event)


class Debounced:
    """Netlink events (they come in bursts) to one ``on_change(local endpoints)`` call
    after the burst settles."""

    def __init__(
        self,
        list_endpoints: Callable[[], Awaitable[list[Endpoint]]],
        on_change: Callable[[list[Endpoint]], None],
    ) -> None:
        self.list_endpoints = list_endpoints
        self.on_change = on_change
        self._pending: asyncio.Future[None] | None = None

    def event(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._check())

    async def _check(self) -> None:
        await asyncio.sleep(NETWORK_SETTLE_S)  # let a burst of events settle
        try:
            eps = await self.list_endpoints()
        except Exception:
            log.exception("cannot list the local addresses")
            return
        self.on_change(eps)
