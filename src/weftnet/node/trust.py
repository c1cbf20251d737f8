"""Whether a node may trust the coordination server's key: no trust on first use.

The node seals its auth key to the key ``GET /key`` offers (weftnet.serverkey explains
why that offer must be checked). Before contact, ``check_login_channel`` says whether a
login may begin at all; after ``GET /key``, ``check_offered`` accepts or refuses the
key. A key is verified by, in this order:

1. ``--server-key mkey:...`` given with ``weft up``: the offer must be that key;
2. the fingerprint an auth key carries: the offer must match it;
3. a key pinned for this URL at an earlier login: the offer must be that key;
4. an https:// URL (the TLS certificate was verified before any byte of the answer was
   read), or a loopback URL (nobody is on the path).

1, 2 and a verified https:// URL outrank a pin: they come from the server's admin by
another way, so a server that was re-keyed (a lost data directory) is rejoined with a new
auth key, or over https. Over plain
http to another host with none of these, a login is refused unless the user passes
``--allow-insecure-http``: then the first key is pinned as before, with a warning.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from weftnet import controlbox, serverkey, tailcfg
from weftnet.tls import is_https, is_loopback_url


class TrustError(Exception):
    """The server's key cannot be trusted; the message says why and what to do."""


@dataclass(frozen=True)
class ServerTrust:
    """What the user gave to verify the server's key with (all optional)."""

    server_key: bytes | None = None  # --server-key
    fingerprint: str | None = None  # from the auth key
    allow_insecure_http: bool = False  # --allow-insecure-http

    @property
    def explicit(self) -> bool:
        return self.server_key is not None or self.fingerprint is not None


def parse_server_key(text: str) -> bytes:
    """``mkey:<64 hex>`` (as ``weft-control server-key`` prints it); ValueError otherwise."""
    try:
        return controlbox.key_from_text(tailcfg.MACHINE_KEY_PREFIX, text.strip())
    except ValueError:
        raise ValueError(
            f"--server-key {text!r}: expected mkey:<64 hex digits>"
            " (run `weft-control server-key` on the server)"
        ) from None


def check_login_channel(url: str, trust: ServerTrust, pinned: bytes | None) -> str | None:
    """Before a login to ``url``: TrustError if nothing could verify the server's key;
    a warning to show when only ``--allow-insecure-http`` lets it go on; else None."""
    if trust.explicit or pinned is not None or is_https(url) or is_loopback_url(url):
        return None
    if trust.allow_insecure_http:
        return (
            f"logging in to {url} over plain http with nothing to verify the server's key"
            " (--allow-insecure-http): anyone on the path could pose as the server and"
            " take this login; prefer https://, an auth key made by the server,"
            " or --server-key"
        )
    raise TrustError(
        f"refusing to log in to {url} over plain http: nothing verifies the server's key,"
        " so anyone on the path could pose as the server. Use an https:// URL, an auth key"
        " made by that server (it carries the server's fingerprint), or --server-key mkey:..."
        " (run `weft-control server-key` on the server); --allow-insecure-http accepts the risk"
    )


def check_offered(url: str, offered: bytes, trust: ServerTrust, pinned: bytes | None) -> None:
    """TrustError unless the key the server at ``url`` offers is the one expected."""
    shown = controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, offered)
    if trust.server_key is not None and offered != trust.server_key:
        expected = controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, trust.server_key)
        raise TrustError(
            f"the server at {url} presents the key {shown}, not {expected} given with"
            " --server-key: refusing to send it anything (someone may be posing as the server)"
        )
    if trust.fingerprint is not None and not serverkey.matches(trust.fingerprint, offered):
        raise TrustError(
            f"the server at {url} presents the key {shown}, whose fingerprint"
            f" {serverkey.fingerprint(offered)} is not the {trust.fingerprint} the auth key"
            " was made for: refusing to send it the auth key (someone may be posing as the"
            " server, or the key is for another server)"
        )
    if not trust.explicit and not is_https(url) and pinned is not None and offered != pinned:
        raise TrustError(
            f"the server at {url} presents the key {shown}, not the one pinned at this node's"
            " first login: refusing (someone may be posing as the server). If the server"
            " really was re-keyed, log in with a new auth key from it or --server-key"
        )
