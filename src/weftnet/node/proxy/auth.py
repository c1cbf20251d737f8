"""Proxy credentials: ``user:password`` lines, compared in constant time."""

from __future__ import annotations

import hmac


class AuthError(ValueError):
    pass


def load_auth_file(path: str) -> dict[str, str]:
    """user -> password from ``path`` (one ``user:password`` a line; # comments)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise AuthError(f"cannot read --proxy-auth-file {path}: {e.strerror}") from e
    creds: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise AuthError(f"{path} line {n}: expected user:password")
        creds[user] = password
    if not creds:
        raise AuthError(f"{path}: no user:password line")
    return creds


class Credentials:
    """Checks a user and password; every stored pair is compared (constant time)."""

    def __init__(self, creds: dict[str, str]) -> None:
        self._pairs = [(u.encode(), p.encode()) for u, p in creds.items()]

    def check(self, user: bytes, password: bytes) -> bool:
        ok = False
        for u, p in self._pairs:
            # Both compared always, each with compare_digest: no early exit on a match.
            same = hmac.compare_digest(u, user) & hmac.compare_digest(p, password)
            ok |= same
        return ok
