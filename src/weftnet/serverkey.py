"""The coordination server's key as a node learns it before sending anything secret.

A node seals every request to the server's X25519 key (controlbox), so whoever holds
that key's private half reads the node's auth key. The key is fetched with ``GET /key``;
over plain http an on-path attacker could answer with its own. So a node checks the
offered key against something it got by another, trusted way:

- an auth key made by the server carries the key's fingerprint: ``weftkey-<prefix>-
  <secret>-<fingerprint>``, the fingerprint being the first 16 bytes of SHA-256 of the
  key, in hex (128 bits: no attacker finds a second key with the same one). The node
  strips it before sending the key and refuses any server whose key does not match;
- ``weft up --server-key mkey:<hex>`` names the key itself (``weft-control server-key``
  prints it on the server);
- an https:// URL whose certificate verified; a key pinned at an earlier such login.

Pure: text in, text out.
"""

from __future__ import annotations

import hashlib
import re

FINGERPRINT_BYTES = 16
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{32}$")


def fingerprint(server_public: bytes) -> str:
    """The fingerprint of a server key: 32 lowercase hex digits."""
    if len(server_public) != 32:
        raise ValueError("a server key is 32 bytes")
    return hashlib.sha256(server_public).digest()[:FINGERPRINT_BYTES].hex()


def attach(auth_key: str, server_public: bytes) -> str:
    """``auth_key`` as handed to users: with the fingerprint of ``server_public``."""
    key, _ = split_auth_key(auth_key)
    return f"{key}-{fingerprint(server_public)}"


def split_auth_key(text: str) -> tuple[str, str | None]:
    """(the key as the server knows it, the server fingerprint it carries or None).

    A key made before fingerprints (three dash-separated parts) has none. The key part is
    not validated here: the server does that.
    """
    text = text.strip()
    head, sep, last = text.rpartition("-")
    if sep and head.count("-") >= 2 and _FINGERPRINT_RE.match(last):
        return head, last
    return text, None


def matches(fp: str, server_public: bytes) -> bool:
    return fp == fingerprint(server_public)
