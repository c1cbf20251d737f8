"""Listening addresses and sockets shared by every TCP server in weftnet: the
coordination server's `--listen`, the metrics endpoints' `--metrics-listen` and weftd's
proxies (`--socks5-server`, `--outbound-http-proxy-listen`).

Each caller words its own error (which flag, which example), so these raise ValueError
and OSError with the bare reason.
"""

from __future__ import annotations

import socket

__all__ = ["listen_tcp", "split_hostport"]


def split_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` -> (host, port); the host is "" for
    ``:PORT``. Raises ValueError naming what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("an IPv6 address is written [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("no port")
        if ":" in host:
            raise ValueError("an IPv6 address is written [IPV6]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port is a number from 0 to 65535")
    return host, int(port_text)


def listen_tcp(
    host: str, port: int, *, backlog: int = 128, user_timeout_s: float | None = None
) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (now, so that a taken port is
    a clear error at start). ``user_timeout_s``: TCP_USER_TIMEOUT for the connections it
    accepts (Linux), so a peer that vanished is noticed. Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if user_timeout_s is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout_s * 1000))
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
