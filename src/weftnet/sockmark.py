"""weftd's own sockets carry a firewall mark, so its policy routes never capture them.

With subnet routes or an exit node, weftd's routing table (docs/routes.md, table 52) may
hold routes that cover the underlay, even 0.0.0.0/0. The WireGuard/disco/STUN UDP
socket, the relay clients' and the control client's TCP connections are marked with
``BYPASS_MARK`` (SO_MARK); ``ip rule``s at 5210-5250 send marked packets to the main
table first, so they leave by the underlay as before. Setting SO_MARK needs
CAP_NET_ADMIN: without it (an unprivileged test) the socket stays unmarked, which only
matters when routes are installed, and installing them needs the same privilege.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from weftnet.marks import BYPASS_MARK, MARK_MASK

__all__ = ["BYPASS_MARK", "MARK_MASK", "SOCKET_OPTIONS", "mark", "may_mark", "open_connection"]

SO_MARK = getattr(socket, "SO_MARK", 36)  # linux/asm-generic/socket.h

SOCKET_OPTIONS = [(socket.SOL_SOCKET, SO_MARK, BYPASS_MARK)]  # for httpx's transport


def mark(sock: socket.socket) -> bool:
    """Mark ``sock``; False when this process may not (no CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, BYPASS_MARK)
    except OSError:
        return False
    return True


def may_mark() -> bool:
    """Whether this process can mark its sockets (so httpx's transport may ask to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return mark(s)


async def open_connection(
    host: str, port: int, **kw: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` on a marked socket: each resolved address in turn."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        mark(sock)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        except BaseException:
            sock.close()
            raise
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return await asyncio.open_connection(sock=sock, **kw)
    raise last
