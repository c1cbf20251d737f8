"""Auth keys, admin API keys and login codes: their text forms and how they are checked.

A key reads ``<kind>-<12 hex prefix>-<48 hex secret>``, e.g. ``weftkey-3f2a...-9c1b...``.
The prefix is an identifier (stored, shown in listings, used for lookup and revocation);
the database keeps only a SHA-256 of the whole key, so a leaked database gives no usable
key. Hashes are compared in constant time. Nothing here reads a clock or os.urandom:
random bytes come in through ``random_bytes`` so tests are reproducible.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

AUTH_KEY_KIND = "weftkey"
API_KEY_KIND = "weftapi"
PREFIX_BYTES = 6  # 12 hex digits: an identifier, not a secret
SECRET_BYTES = 24  # 48 hex digits: 192 bits of secret
CODE_BYTES = 10  # 20 hex digits: an interactive-login code, read out to an admin
MIN_SECRET_HEX = 40  # keys with shorter secrets are refused outright

# What an admin API key may do: "admin" everything; "relay" only what a standalone relay
# needs (register its region, fetch the node keys it may admit).
API_KEY_SCOPE_ADMIN = "admin"
API_KEY_SCOPE_RELAY = "relay"
API_KEY_SCOPES = (API_KEY_SCOPE_ADMIN, API_KEY_SCOPE_RELAY)

RandomBytes = Callable[[int], bytes]

_KEY_RE = re.compile(r"^(?P<kind>[a-z]+)-(?P<prefix>[0-9a-f]{12})-(?P<secret>[0-9a-f]+)$")
_CODE_RE = re.compile(r"^[0-9a-f]{20}$")


def new_key(kind: str, random_bytes: RandomBytes) -> tuple[str, str]:
    """A fresh key of ``kind``: (full text, prefix)."""
    prefix = random_bytes(PREFIX_BYTES).hex()
    return f"{kind}-{prefix}-{random_bytes(SECRET_BYTES).hex()}", prefix


def key_prefix(kind: str, text: str) -> str:
    """The prefix of a well-formed key of ``kind``; ValueError otherwise."""
    m = _KEY_RE.match(text.strip())
    if m is None or m["kind"] != kind or len(m["secret"]) < MIN_SECRET_HEX:
        raise ValueError(f"malformed key: expected {kind}-<12 hex>-<48 hex>")
    return m["prefix"]


def has_secret(text: str) -> bool:
    """Whether ``text`` looks like a whole key (kind-prefix-secret), not just a prefix or id:
    such text must not go into a URL (access logs)."""
    return text.strip().count("-") >= 2


def key_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def key_matches(text: str, stored_hash: str) -> bool:
    return hmac.compare_digest(key_hash(text), stored_hash)


def new_code(random_bytes: RandomBytes) -> str:
    return random_bytes(CODE_BYTES).hex()


def code_from_url(url: str) -> str:
    """The login code at the end of an auth URL (``.../register/<code>``)."""
    code = url.rstrip("/").rsplit("/", 1)[-1]
    if not _CODE_RE.match(code):
        raise ValueError("malformed login URL: expected .../register/<code>")
    return code


def is_code(text: str) -> bool:
    return bool(_CODE_RE.match(text))
