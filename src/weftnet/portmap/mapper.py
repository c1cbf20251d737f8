"""The port mapper in weftd: one UDP mapping of the WireGuard port, kept alive.

``PortMapper.run`` is a supervised task. It finds the default gateway, probes PCP,
NAT-PMP and UPnP at once (``client.probe``), maps the WireGuard port with the first
that works (PCP, then NAT-PMP, then UPnP), and renews the mapping at half its granted
lifetime. A network change (netmon) drops what it knew and starts over. The mapped
ip:port is handed to ``on_change`` (MagicSock publishes it as an endpoint, first in the
list); None when the mapping is gone. With no gateway or no protocol it tries again
every ``RETRY_S``. ``release`` deletes the mapping (`weft down`, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from weftnet.endpoint import Endpoint, format_endpoint
from weftnet.portmap import client
from weftnet.portmap.client import Mapping, Offers
from weftnet.wireguard.errors import ProtocolError

log = logging.getLogger("weftd.portmap")

DEFAULT_LEASE_S = 7200  # Tailscale asks for 2 h; RFC 6886 recommends 7200 s too
RETRY_S = 60.0  # no gateway or no port mapping: look again this often (or on a change)
RENEW_RETRY_S = 5.0  # a failed renewal is retried this soon while the lease lasts
RELEASE_TIMEOUT_S = 2.0  # `weft down` waits at most this long for the gateway

GatewayFinder = Callable[[], "tuple[str, str] | None"]


class PortMapper:
    def __init__(
        self,
        internal_port: Callable[[], int],
        on_change: Callable[[Endpoint | None], None],
        lease_s: int = DEFAULT_LEASE_S,
        find_gateway: GatewayFinder = client.default_gateway,
        probe: Callable[[str, str], Awaitable[Offers]] = client.probe,
    ) -> None:
        self.internal_port = internal_port
        self.on_change = on_change
        self.lease_s = lease_s
        self.find_gateway = find_gateway
        self.probe = probe
        self.offers: Offers | None = None
        self._said: tuple[str, list[str]] | None = None  # the gateway's last answer logged
        self.mapping: Mapping | None = None
        self.renewals = 0
        self.last_error: str | None = None
        self._changed = True
        self._wake = asyncio.Event()

    # -- inputs -------------------------------------------------------------------------

    def network_changed(self) -> None:
        """Addresses or routes changed: probe and map again."""
        self._changed = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            next_at = await self._step(time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_at - time.monotonic(), 0.0)):
                    await self._wake.wait()

    async def _step(self, now: float) -> float:
        """Do what is due; when to look again."""
        loop = asyncio.get_running_loop()
        renew_now = False
        if self._changed:
            # Still the same gateway and address (an event about another interface, or
            # our own TUN): keep the mapping and renew it now. Otherwise start over.
            self._changed = False
            gw = await loop.run_in_executor(None, self.find_gateway)
            if self.offers is not None and gw == (self.offers.gateway, self.offers.local_ip):
                renew_now = True
            else:
                self._set(None)
                self.offers = None
        m = self.mapping
        if m is not None and now < m.renew_at and not renew_now:
            return m.renew_at
        try:
            if self.offers is None or not self.offers.protocols():  # ask (again)
                gw = await loop.run_in_executor(None, self.find_gateway)
                if gw is None:
                    self.last_error = "no IPv4 default gateway"
                    return now + RETRY_S
                self.offers = await self.probe(*gw)
                said = (gw[0], self.offers.protocols())
                if said != self._said:  # once per gateway and answer, not every minute
                    self._said = said
                    log.info("gateway %s offers: %s", gw[0],
                             ", ".join(said[1]) or "no port mapping")  # fmt: skip
            if not self.offers.protocols():
                self.last_error = f"the gateway {self.offers.gateway} offers no port mapping"
                return now + RETRY_S
            new = await client.create(self.offers, self.internal_port(), self.lease_s, now, m)
        except (OSError, ProtocolError, TimeoutError) as e:
            self.last_error = str(e) or type(e).__name__
            if m is not None and now + RENEW_RETRY_S < m.expires_at:
                log.warning("port mapping: renewal failed (%s); retrying", self.last_error)
                return now + RENEW_RETRY_S
            log.warning("port mapping failed: %s", self.last_error)
            self._set(None)
            self.offers = None
            return now + RETRY_S
        self.last_error = None
        if m is not None:
            self.renewals += 1
        self._set(new)
        return new.renew_at

    def _set(self, mapping: Mapping | None) -> None:
        old = self.mapping.external if self.mapping is not None else None
        self.mapping = mapping
        new = mapping.external if mapping is not None else None
        if new != old:
            if mapping is not None:
                log.info("port mapping: %s via %s, lease %d s", format_endpoint(mapping.external),
                         mapping.protocol, mapping.lifetime_s)  # fmt: skip
            else:
                log.info("port mapping: none")
            self.on_change(new)

    async def release(self) -> None:
        """Delete the mapping on the gateway (bounded wait; a failure is logged)."""
        m, offers = self.mapping, self.offers
        self._set(None)
        self._changed = True
        if m is None or offers is None:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await client.delete(offers, m)
            log.info("port mapping %s released", format_endpoint(m.external))
        except Exception as e:  # the gateway may be gone: its lease ends it anyway
            log.warning("port mapping %s: release failed: %s", format_endpoint(m.external), e)

    # -- for `weft status` and `weft netcheck` --------------------------------------------

    def status(self) -> dict[str, Any]:
        m, now = self.mapping, time.monotonic()
        return {
            "gateway": self.offers.gateway if self.offers else None,
            "offered": self.offers.protocols() if self.offers else [],
            "protocol": m.protocol if m else None,
            "mapped_address": format_endpoint(m.external) if m else None,
            "lease_s": m.lifetime_s if m else None,
            "renews_in_s": round(m.renew_at - now, 1) if m else None,
            "renewals": self.renewals,
            "error": self.last_error,
        }

    async def netcheck(self) -> dict[str, Any]:
        """A fresh probe of the gateway: which protocols it answers, and our mapping."""
        loop = asyncio.get_running_loop()
        gw = await loop.run_in_executor(None, self.find_gateway)
        offers = await self.probe(*gw) if gw is not None else None
        m = self.mapping
        return {
            "gateway": gw[0] if gw else None,
            "upnp": bool(offers and offers.upnp is not None),
            "nat_pmp": bool(offers and offers.nat_pmp),
            "pcp": bool(offers and offers.pcp),
            "mapped_address": format_endpoint(m.external) if m else None,
            "protocol": m.protocol if m else None,
        }
