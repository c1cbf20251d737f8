"""A client of the admin API (/api/v1), used by the ``weft-control`` admin commands.

It finds the server either through the data directory's ``admin.json`` (on the control
host) or through a URL and an API key (``--server``/``--api-key`` or the environment
variables WEFT_CONTROL_URL / WEFT_CONTROL_API_KEY). Every failure is an ``AdminError``
whose message is one line that says what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

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


def resolve_target(
    data_dir: str | None,
    server: str | None,
    api_key: str | None,
    env: Mapping[str, str] = os.environ,
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
            raise AdminError(f"invalid --server {server!r}: expected http://HOST:PORT")
        return AdminTarget(server.rstrip("/"), key)
    directory = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    path = directory / "admin.json"
    try:
        info = json.loads(path.read_text())
        url, key = info["url"], info["api_key"]
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
    return AdminTarget(str(url).rstrip("/"), api_key or str(key))


class AdminClient:
    def __init__(self, target: AdminTarget, timeout_s: float = TIMEOUT_S) -> None:
        self.target = target
        self._http = httpx.Client(
            base_url=target.url + "/api/v1",
            headers={"Authorization": f"Bearer {target.api_key}"},
            timeout=timeout_s,
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
            raise AdminError(
                f"cannot reach the control server at {url}: {_reason(e)}; is weft-control serve running?"
            ) from None
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


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0]
