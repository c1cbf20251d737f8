"""A client of the admin API (/api/v1), used by the ``weft-control`` admin commands.

It finds the server either through the data directory's ``admin.json`` (on the control
host) or through a URL and an API key (``--server``/``--api-key`` or the environment
variables WEFT_CONTROL_URL / WEFT_CONTROL_API_KEY). Every failure is an ``AdminError``
whose message is one line that says what to do.

The API key is a secret: it goes to an https:// server whose certificate verified
(against the system's CAs, SSL_CERT_FILE, or ``--tls-ca``), to the local server named by
admin.json (its certificate pinned, when it serves https), or over plain http only to
this host, unless ``--allow-insecure-http`` says otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from weftnet import tls

DEFAULT_DATA_DIR = Path("/var/lib/weft-control")
URL_ENV = "WEFT_CONTROL_URL"
API_KEY_ENV = "WEFT_CONTROL_API_KEY"
TIMEOUT_S = 30.0


class AdminError(Exception):
    pass


@dataclass(frozen=True)
class AdminTarget:
    url: str
    api_key: str
    tls_ca: str | None = None  # --tls-ca: the CAs an https server must chain to
    pinned_cert: str | None = None  # admin.json's tls_cert: the local server's own


def check_channel(url: str, allow_insecure_http: bool) -> None:
    """AdminError if an API key would cross a network in the clear to ``url``."""
    if tls.is_https(url) or tls.is_loopback_url(url) or allow_insecure_http:
        return
    raise AdminError(
        f"refusing to send the API key to {url} over plain http, where anyone on the path"
        " can read it: use an https:// URL (weft-control serve --tls-cert/--tls-key), or"
        " --allow-insecure-http to accept the risk"
    )


def resolve_target(
    data_dir: str | None,
    server: str | None,
    api_key: str | None,
    env: Mapping[str, str] = os.environ,
    tls_ca: str | None = None,
    allow_insecure_http: bool = False,
) -> AdminTarget:
    """Where the server is: --server beats --data-dir beats WEFT_CONTROL_URL beats the
    default data directory."""
    if server is None and data_dir is None:
        server = env.get(URL_ENV) or None
    if server is not None:
        key = api_key or env.get(API_KEY_ENV)
        if not key:
            raise AdminError(f"--server needs --api-key KEY (or {API_KEY_ENV} in the environment)")
        if not server.startswith(("http://", "https://")):
            raise AdminError(f"invalid --server {server!r}: expected https://HOST:PORT")
        check_channel(server, allow_insecure_http)
        return AdminTarget(server.rstrip("/"), key, tls_ca=tls_ca)
    directory = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    path = directory / "admin.json"
    try:
        info = json.loads(path.read_text())
        url, key = info["url"], info["api_key"]
        pinned = info.get("tls_cert")
    except FileNotFoundError:
        raise AdminError(
            f"no {path}: is `weft-control serve --data-dir {directory}` running?"
            " (or use --server URL --api-key KEY)"
        ) from None
    except PermissionError:
        raise AdminError(
            f"cannot read {path}: permission denied (run as the server's user)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdminError(f"cannot use {path}: {e}") from None
    # admin.json names a URL of this host (the server's --listen address).
    return AdminTarget(
        str(url).rstrip("/"),
        api_key or str(key),
        tls_ca=tls_ca,
        pinned_cert=str(pinned) if pinned else None,
    )


class AdminClient:
    def __init__(self, target: AdminTarget, timeout_s: float = TIMEOUT_S) -> None:
        self.target = target
        try:
            verify = (
                tls.pinned_context(target.pinned_cert)
                if target.pinned_cert
                else tls.client_context(target.tls_ca)
            )
        except tls.TlsError as e:
            raise AdminError(str(e)) from None
        self._http = httpx.Client(
            base_url=target.url + "/api/v1",
            headers={"Authorization": f"Bearer {target.api_key}"},
            timeout=timeout_s,
            verify=verify,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        url = self.target.url
        try:
            r = self._http.request(
                method,
                path,
                json=body,
                params={k: v for k, v in (params or {}).items() if v is not None},
            )
        except httpx.ConnectError as e:
            reason = _reason(e)
            hint = "" if "certificate" in reason else "; is weft-control serve running?"
            raise AdminError(f"cannot reach the control server at {url}: {reason}{hint}") from None
        except httpx.TimeoutException:
            raise AdminError(f"the control server at {url} did not answer in time") from None
        except httpx.HTTPError as e:
            raise AdminError(
                f"talking to the control server at {url} failed: {_reason(e)}"
            ) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            if not message:
                message = f"HTTP {r.status_code} from {url} (is this a weft-control server?)"
            if r.status_code == 401:
                message = f"the server refused the API key: {message}"
            raise AdminError(str(message).splitlines()[0])
        return data

    def server_key(self) -> str:
        """The server's key (``mkey:<hex>``), as ``GET /key`` answers over this verified
        channel: what ``weft up --server-key`` takes."""
        try:
            r = self._http.get(self.target.url + "/key")
            r.raise_for_status()
            return str(r.json()["public_key"])
        except httpx.HTTPError as e:
            raise AdminError(
                f"cannot get the server key from {self.target.url}: {_reason(e)}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise AdminError(f"{self.target.url}/key: not a weft-control server") from None


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "Connection refused" in text:
        return "connection refused"
    return tls.describe(e)
