"""Who may log in through the OpenID provider, and under which name: pure rules, no I/O.

Theory of operation (docs/identity.md): the callback verifies the ID token and builds
``Claims`` from it (userinfo merged when its ``sub`` matches). ``check_allowed`` applies
the allow filters: groups are checked always; domains and users only on a *verified*
email (an unverified one is refused when ``email_verified_required`` and a domain or
user filter is set); every filter that is set must pass. ``user_name`` picks the name a
new user gets (the verified email lowercased, else a valid ``preferred_username``);
``role_for`` the console role of a new user; ``key_expiry`` the node key expiry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from weftnet.control.domain import names, roles


class LoginRefused(Exception):
    """This identity may not log in; the message says why (shown to the user)."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What the provider says about the person signing in (verified ID token claims)."""

    issuer: str
    subject: str
    email: str | None = None
    email_verified: bool = False
    preferred_username: str | None = None
    name: str = ""
    groups: tuple[str, ...] = ()
    expires_at: float | None = None  # the ID token's exp

    @classmethod
    def from_token(cls, claims: Mapping[str, Any]) -> Claims:
        """From verified ID token claims (userinfo already merged)."""
        groups = claims.get("groups")
        if isinstance(groups, str):
            groups = [groups]
        email = claims.get("email")
        username = claims.get("preferred_username")
        exp = claims.get("exp")
        return cls(
            issuer=str(claims["iss"]),
            subject=str(claims["sub"]),
            email=email.strip() if isinstance(email, str) and email.strip() else None,
            email_verified=claims.get("email_verified") is True,
            preferred_username=username if isinstance(username, str) else None,
            name=str(claims.get("name") or "")[:200],
            groups=tuple(str(g) for g in groups or () if isinstance(g, (str, int))),
            expires_at=float(exp) if isinstance(exp, (int, float)) else None,
        )

    def trusted_email(self, email_verified_required: bool) -> str | None:
        """The email to believe (lowercased): verified, or any when not required."""
        if self.email is None or not (self.email_verified or not email_verified_required):
            return None
        return self.email.lower()


@dataclass(frozen=True, slots=True)
class Filters:
    """Who may log in. Empty tuples: no such filter."""

    allowed_domains: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    email_verified_required: bool = True

    @classmethod
    def of(
        cls,
        domains: Iterable[str] = (),
        groups: Iterable[str] = (),
        users: Iterable[str] = (),
        email_verified_required: bool = True,
    ) -> Filters:
        return cls(
            tuple(d.strip().lower().lstrip("@") for d in domains if d.strip()),
            tuple(g.strip() for g in groups if g.strip()),
            tuple(u.strip().lower() for u in users if u.strip()),
            email_verified_required,
        )


def check_allowed(claims: Claims, filters: Filters) -> None:
    """Raise LoginRefused unless every filter that is set lets ``claims`` in."""
    if filters.allowed_groups and not set(claims.groups) & set(filters.allowed_groups):
        raise LoginRefused("you are not in a group that may log in to this tailnet")
    if not (filters.allowed_domains or filters.allowed_users):
        return
    email = claims.trusted_email(filters.email_verified_required)
    if email is None:
        raise LoginRefused(
            "your identity provider did not send a verified email address,"
            " which this tailnet needs to check who may log in"
        )
    if filters.allowed_domains and email.rpartition("@")[2] not in filters.allowed_domains:
        raise LoginRefused(f"{email} is not in a domain that may log in to this tailnet")
    if filters.allowed_users and email not in filters.allowed_users:
        raise LoginRefused(f"{email} may not log in to this tailnet")


def user_name(claims: Claims, email_verified_required: bool = True) -> str:
    """The name a new user gets: the trusted email, else a valid preferred_username."""
    email = claims.trusted_email(email_verified_required)
    for candidate in (email, claims.preferred_username):
        if candidate:
            try:
                return names.check_user_name(candidate)
            except ValueError:
                continue
    raise LoginRefused(
        "your identity provider sent no verified email address and no usable user name:"
        " an administrator can create a user for you and link this login to it with"
        f" `weft-control users link NAME --issuer {claims.issuer} --subject {claims.subject}`"
    )


def role_for(
    claims: Claims,
    *,
    owner_email: str | None,
    admin_group: str | None,
) -> str:
    """The console role of a new user: owner for the configured owner's verified email,
    admin for members of the admin group, else member."""
    email = claims.email.lower() if claims.email and claims.email_verified else None
    if owner_email and email == owner_email.strip().lower():
        return roles.OWNER
    if admin_group and admin_group in claims.groups:
        return roles.ADMIN
    return roles.MEMBER


def key_expiry(claims: Claims, now: float, default_s: float, from_token: bool) -> float | None:
    """The node key expiry a login asks for: the ID token's exp when configured (and in
    the future), else None (the server's node key expiry)."""
    if from_token and claims.expires_at is not None and claims.expires_at > now:
        return claims.expires_at
    return None


def check_issuer_url(url: str) -> str:
    """The issuer URL, if https (or http on a loopback address); ValueError otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host or parts.query or parts.fragment:
        raise ValueError(f"invalid issuer URL {url!r}: e.g. https://login.example.com")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError(f"the issuer {url} must use https (http only on a loopback address)")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_next(path: str | None, default: str = "/admin") -> str:
    """Where the console goes after login: a local path under /admin, else ``default``."""
    if not path or not path.startswith("/admin") or path.startswith("//") or "\\" in path:
        return default
    parts = urlsplit(path)
    if (
        parts.scheme
        or parts.netloc
        or not (parts.path == "/admin" or parts.path.startswith("/admin/"))
    ):
        return default
    return path
