"""ADDR:PORT of a proxy's listening socket, loopback only unless allowed."""

from __future__ import annotations

import ipaddress

from weftnet.tcplisten import split_hostport


class ListenError(ValueError):
    pass


def parse_hostport(text: str) -> tuple[str, int]:
    """ "127.0.0.1:1055", "[::1]:1055", "localhost:1055" -> (host, port)."""
    try:
        host, port = split_hostport(text)
    except ValueError as e:
        raise ListenError(f"bad address {text!r}: {e}; use ADDR:PORT or [IPV6]:PORT") from None
    return host or "0.0.0.0", port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(text: str, *, allow_remote: bool, flag: str = "the proxy") -> tuple[str, int]:
    """The (host, port) to listen on; ListenError for a malformed one, or a non-loopback
    one without ``allow_remote``."""
    host, port = parse_hostport(text)
    if not is_loopback(host) and not allow_remote:
        raise ListenError(
            f"{flag} {text}: not a loopback address, so anyone who can reach this host"
            " could use this node's tailnet access; pass --proxy-allow-remote to allow it"
            " (and better --proxy-auth-file too)"
        )
    return host, port
