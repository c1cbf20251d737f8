"""Where a proxy request goes: a tailnet address, or a MagicDNS name looked up in the
node's own name table (nothing outside the tailnet in userspace mode)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from weftnet.dns.records import NameTable

OVERLAY = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))


class NotInTailnet(OSError):
    """A name or address outside the tailnet: userspace networking reaches only peers."""


def tailnet_addresses(table: NameTable, name: str) -> list[str]:
    """The addresses of ``name`` ("peer", "peer.tail.example", absolute or not) in
    ``table``, IPv4 first; [] when the tailnet has no such name."""
    name = name.strip().lower().rstrip(".")
    if not name:
        return []
    candidates = [name + "."] + [f"{name}.{zone}" for zone in table.zones]
    for cand in candidates:
        host = table.hosts.get(cand)
        if host is not None:
            return [str(ip) for ip in (*host.v4, *host.v6)]
    return []


class Dialer:
    """Opens TCP connections into the tailnet through the stack."""

    def __init__(
        self,
        net: Any,
        resolve_name: Callable[[str], list[str]],
        routable: Callable[[str], bool] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.net = net
        self.resolve_name = resolve_name
        self.routable = routable or _in_overlay
        self.timeout_s = timeout_s

    def addresses(self, host: str) -> list[str]:
        """``host``'s tailnet addresses; NotInTailnet for anything else."""
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            addrs = self.resolve_name(host)
            if not addrs:
                raise NotInTailnet(
                    f"{host} is not a name in this tailnet: userspace networking reaches"
                    " only tailnet peers (MagicDNS names, 100.x and fd7a: addresses)"
                ) from None
            return addrs
        if not self.routable(str(ip)):
            raise NotInTailnet(
                f"{ip} is not a tailnet address: userspace networking reaches only tailnet peers"
            )
        return [str(ip)]

    async def connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the first address of ``host`` that answers.
        NotInTailnet, ConnectionRefusedError (RST), TimeoutError or OSError."""
        last: BaseException = OSError(f"no address for {host}")
        for ip in self.addresses(host):
            try:
                return await self.net.open_connection(ip, port, timeout=self.timeout_s)
            except (TimeoutError, OSError) as e:
                last = e
        raise last


def _in_overlay(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in n for n in OVERLAY)


async def pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
) -> None:
    """Copy ``reader`` to ``other`` until EOF, then half-close ``other``."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            other.write(data)
            await other.drain()
        if other.can_write_eof():
            other.write_eof()
    except (ConnectionError, OSError):
        other.close()


async def splice(
    r1: asyncio.StreamReader,
    w1: asyncio.StreamWriter,
    r2: asyncio.StreamReader,
    w2: asyncio.StreamWriter,
) -> None:
    """Both directions until both end; then both closed."""
    try:
        await asyncio.gather(pipe(r1, w1, w2), pipe(r2, w2, w1))
    finally:
        for w in (w1, w2):
            w.close()
