"""The server as an OpenID Connect relying party: configuration, discovery, tokens.

Theory of operation (docs/identity.md): ``OidcConfig`` is checked when the server
starts (a clear ``ValueError``). ``OidcClient.discover`` reads the provider's metadata
with a bounded timeout; if the provider is down at start-up the server serves anyway
(``ready`` is False: login pages answer 503) and ``keep_discovering`` retries in the
background, logging one line per failure. A login sends the browser to
``authorize_url`` (code flow, PKCE S256 always, state and nonce); ``finish`` exchanges
the code (client auth basic or post, authlib), verifies the ID token with joserfc
(signature against the JWKS, fetched again once for an unknown ``kid``; the algorithms
the provider advertises, never ``none`` or HMAC; iss, aud, azp, exp, iat with a small
leeway, nonce) and merges userinfo only when its ``sub`` is the token's. The client
secret is never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet

from weftnet.control.domain import identity
from weftnet.control.service import SignInRules

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 10.0
RETRY_S = (2.0, 5.0, 15.0, 30.0, 60.0)  # discovery retries back off to the last
LEEWAY_S = 60
ASYMMETRIC = ("RS", "PS", "ES", "Ed")
CLIENT_AUTH = {"basic": "client_secret_basic", "post": "client_secret_post"}
CALLBACK_PATH = "/oidc/callback"
TOKEN_ONLY = frozenset({"iss", "sub", "aud", "azp", "exp", "iat", "nonce", "auth_time"})


class OidcError(Exception):
    """A login failed at or after the provider; the message is shown to the user."""


class Unavailable(OidcError):
    """The provider's metadata is not known yet (it was down): login is unavailable."""


@dataclass(frozen=True)
class OidcOptions:
    """``weft-control serve --oidc-...`` as given (checked by ``OidcConfig.load``)."""

    issuer: str
    client_id: str | None = None
    client_secret_file: str | None = None
    scope: str = "openid email profile"
    extra_params: tuple[str, ...] = ()
    client_auth: str = "basic"
    allowed_domains: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    email_verified_required: bool = True
    expiry_from_token: bool = False
    admin_group: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    server_url: str  # the redirect URI is <server_url>/oidc/callback
    scope: str = "openid email profile"
    extra_params: tuple[tuple[str, str], ...] = ()
    client_auth: str = "basic"
    rules: SignInRules = field(default_factory=SignInRules)

    @property
    def redirect_uri(self) -> str:
        return self.server_url.rstrip("/") + CALLBACK_PATH

    @property
    def secure_cookies(self) -> bool:
        return self.server_url.startswith("https://")

    @classmethod
    def load(cls, opts: OidcOptions, server_url: str | None) -> OidcConfig:
        """Checked configuration; ValueError with what to fix."""
        identity.check_issuer_url(opts.issuer)
        if not opts.client_id:
            raise ValueError("--oidc-issuer needs --oidc-client-id")
        if not opts.client_secret_file:
            raise ValueError("--oidc-issuer needs --oidc-client-secret-file")
        if not server_url:
            raise ValueError("--oidc-issuer needs --server-url (for the redirect URI)")
        if not server_url.startswith(("http://", "https://")):
            raise ValueError(f"--server-url {server_url!r} must be an http(s) URL")
        try:
            secret = Path(opts.client_secret_file).read_text().strip()
        except OSError as e:
            raise ValueError(f"cannot read --oidc-client-secret-file: {e.strerror}") from None
        if not secret:
            raise ValueError("--oidc-client-secret-file is empty")
        if "openid" not in opts.scope.split():
            raise ValueError("--oidc-scope must include openid")
        if opts.client_auth not in CLIENT_AUTH:
            raise ValueError("--oidc-client-auth must be basic or post")
        params = []
        for item in opts.extra_params:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--oidc-extra-param {item!r}: expected KEY=VALUE")
            params.append((key.strip(), value))
        if opts.owner is not None and "@" not in opts.owner:
            raise ValueError(f"--owner {opts.owner!r}: expected an email address")
        rules = SignInRules(
            filters=identity.Filters.of(
                opts.allowed_domains,
                opts.allowed_groups,
                opts.allowed_users,
                opts.email_verified_required,
            ),
            owner_email=opts.owner.strip().lower() if opts.owner else None,
            admin_group=opts.admin_group or None,
            expiry_from_token=opts.expiry_from_token,
        )
        return cls(
            issuer=opts.issuer,
            client_id=opts.client_id,
            client_secret=secret,
            server_url=server_url.rstrip("/"),
            scope=opts.scope,
            extra_params=tuple(params),
            client_auth=opts.client_auth,
            rules=rules,
        )


class OidcClient:
    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self.metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None

    @property
    def ready(self) -> bool:
        return self.metadata is not None

    def discover_at_start(self) -> None:
        """One bounded discovery from synchronous code (start-up); logs a failure."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(asyncio.run, self.discover()).result(DISCOVERY_TIMEOUT_S * 3)
            except (OidcError, concurrent.futures.TimeoutError) as e:
                log.warning(
                    "OIDC login is unavailable for now (retrying in the background): %s",
                    e or "timed out",
                )

    async def discover(self) -> None:
        """Read the provider's metadata (and keys); OidcError on failure."""
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=DISCOVERY_TIMEOUT_S) as http:
                r = await http.get(url)
                r.raise_for_status()
                meta = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise OidcError(f"discovery at {url} failed: {e or type(e).__name__}") from None
        if not isinstance(meta, dict) or meta.get("issuer") != self.config.issuer:
            raise OidcError(
                f"discovery at {url}: the provider names another issuer"
                f" ({meta.get('issuer') if isinstance(meta, dict) else None!r})"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(key), str):
                raise OidcError(f"discovery at {url}: no {key}")
        self.metadata = meta
        await self._fetch_keys()

    async def keep_discovering(self) -> None:
        """Retry discovery until it works (a supervised background task)."""
        attempt = 0
        while not self.ready:
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
            try:
                await self.discover()
            except OidcError as e:
                log.warning("OIDC login unavailable (attempt %d): %s", attempt, e)
            except Exception:  # a bug: log it with its traceback, and keep retrying
                log.exception("OIDC discovery failed unexpectedly (attempt %d)", attempt)
            else:
                log.info("OIDC provider %s discovered: login is available", self.config.issuer)

    def _meta(self) -> dict[str, Any]:
        if self.metadata is None:
            raise Unavailable("login is unavailable: the identity provider cannot be reached")
        return self.metadata

    async def _fetch_keys(self) -> None:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                r = await http.get(self._meta()["jwks_uri"])
                r.raise_for_status()
                self._keys = KeySet.import_key_set(r.json())
        except (httpx.HTTPError, ValueError, jose_errors.JoseError) as e:
            raise OidcError(f"cannot read the provider's keys: {e or type(e).__name__}") from None

    def algorithms(self) -> list[str]:
        offered = self._meta().get("id_token_signing_alg_values_supported") or ["RS256"]
        return [a for a in offered if isinstance(a, str) and a.startswith(ASYMMETRIC)]

    def authorize_url(self, state: str, nonce: str, verifier: str) -> str:
        query = {
            **dict(self.config.extra_params),
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": self.config.scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        endpoint: str = self._meta()["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    async def finish(self, code: str, verifier: str, nonce: str) -> identity.Claims:
        """Exchange the code and verify what comes back: the signed-in person's claims."""
        meta = self._meta()
        oauth_client = _oauth_client_class()
        try:
            async with oauth_client(
                self.config.client_id,
                self.config.client_secret,
                token_endpoint_auth_method=CLIENT_AUTH[self.config.client_auth],
                timeout=HTTP_TIMEOUT_S,
            ) as oauth:
                token = await oauth.fetch_token(
                    meta["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=self.config.redirect_uri,
                    code_verifier=verifier,
                )
                id_token = token.get("id_token")
                if not isinstance(id_token, str):
                    raise OidcError("the provider sent no ID token")
                claims = await self.verify(id_token, nonce)
                userinfo = await self._userinfo(oauth, meta, claims["sub"])
        except OidcError:
            raise
        except Exception as e:  # authlib's OAuthError, httpx errors
            log.warning("OIDC code exchange failed: %s", _brief(e))
            raise OidcError(f"the identity provider refused the login: {_brief(e)}") from None
        merged = claims | {k: v for k, v in userinfo.items() if k not in TOKEN_ONLY}
        return identity.Claims.from_token(merged)

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims, if it is valid for this client and ``nonce``."""
        if self._keys is None:
            await self._fetch_keys()
        try:
            decoded = self._decode(id_token)
        except (jose_errors.InvalidKeyIdError, jose_errors.MissingKeyError, ValueError):
            await self._fetch_keys()  # the provider may have rotated its keys
            try:
                decoded = self._decode(id_token)
            except (jose_errors.JoseError, ValueError) as e:
                raise OidcError(f"the ID token is not valid: {_brief(e)}") from None
        except jose_errors.JoseError as e:
            raise OidcError(f"the ID token is not valid: {_brief(e)}") from None
        claims: dict[str, Any] = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY_S,
            iss={"essential": True, "value": self.config.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": self.config.client_id},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except jose_errors.JoseError as e:
            raise OidcError(f"the ID token is not valid: {_brief(e)}") from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError("the ID token is not valid: it was issued to another client (azp)")
        if "azp" in claims and claims["azp"] != self.config.client_id:
            raise OidcError("the ID token is not valid: it was issued to another client (azp)")
        return claims

    def _decode(self, id_token: str) -> jwt.Token:
        assert self._keys is not None
        return jwt.decode(id_token, self._keys, algorithms=self.algorithms())

    async def _userinfo(
        self, oauth: AsyncOAuth2Client, meta: Mapping[str, Any], subject: str
    ) -> dict[str, Any]:
        endpoint = meta.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return {}
        try:
            r = await oauth.get(endpoint)
            r.raise_for_status()
            info = r.json()
        except Exception as e:
            log.warning("OIDC userinfo failed (claims from the ID token only): %s", _brief(e))
            return {}
        if not isinstance(info, dict) or info.get("sub") != subject:
            log.warning("OIDC userinfo is for another subject: ignored")
            return {}
        return info


def _oauth_client_class() -> type[AsyncOAuth2Client]:
    """authlib's httpx client, imported when first needed and without its warning that
    its httpx integration is deprecated (printed on every start otherwise)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The httpx module is deprecated")
        from authlib.integrations.httpx_client import AsyncOAuth2Client

    return AsyncOAuth2Client


def _brief(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
