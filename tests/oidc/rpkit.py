"""What the OIDC tests share: the control server's registration at the real OpenID
provider, a ``weft-control serve`` on a thread with OIDC configured, a FakeNode for
``weft up`` and an httpx client with a cookie jar as the browser."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from weftlab.control import FakeNode, serve_in_thread
from weftlab.oidcop import OpenIdProvider, sign_in
from weftnet import tailcfg
from weftnet.control.server.app import ServeOptions
from weftnet.control.server.oidc import OidcOptions

ALICE = {"email": "alice@example.com", "email_verified": True, "groups": ["eng"], "name": "Alice"}
SECRET = "test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    api_key: str
    data_dir: Path
    app: Any = None

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.api_key}"},
            **kw,
        )
        assert r.status_code < 300, r.text
        return r.json()

    def sql(self, statement: str) -> None:
        with sqlite3.connect(self.data_dir / "control.db") as db:
            db.execute(statement)


@dataclass
class Rp:
    """The control server's client registration at the OP."""

    port: int
    client_id: str = "weft-control"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": SECRET,
            "redirect_uris": [f"{self.url}/oidc/callback"],
        }


@contextmanager
def serve(
    rp: Rp, op: OpenIdProvider, tmp_path: Path, client_id: str | None = None, **oidc: Any
) -> Iterator[Server]:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    options = ServeOptions(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=rp.port,
        server_url=rp.url,
        followup_wait_s=5.0,
        access_log=False,
        stun_port=0,
        relay=False,
        oidc=OidcOptions(
            issuer=op.issuer,
            client_id=client_id or rp.client_id,
            client_secret_file=str(secret),
            scope="openid email profile groups",
            **oidc,
        ),
    )
    with serve_in_thread(options) as server:
        yield Server(rp.url, server.api_key, tmp_path / "data", server._server.config.app)


def register(node: FakeNode, **fields: Any) -> tailcfg.RegisterResponse:
    """``node.register(**fields)`` on a loop (and an HTTP client) of its own."""

    async def go() -> tailcfg.RegisterResponse:
        async with httpx.AsyncClient(timeout=10) as http:
            node.http = http
            return await node.register(**fields)

    return asyncio.run(go())


def start_node(server: Server, hostname: str = "desk") -> tuple[FakeNode, str, None]:
    node = FakeNode(server.url, httpx.AsyncClient(), hostname)
    answer = register(node)
    assert answer.auth_url is not None and not answer.machine_authorized
    return node, answer.auth_url, None


def browser() -> httpx.Client:
    return httpx.Client(timeout=10)


def sign_in_at(b: httpx.Client, server: Server, url: str, sub: str, **kw: Any) -> httpx.Response:
    """Through the OP and the callback; the callback's answer (followed to the confirm
    page if it redirects there)."""
    r = sign_in(b, url, sub, stop_at=server.url + "/oidc/callback", **kw)
    assert r.is_redirect, r.text
    r = b.get(r.headers["location"])
    if r.is_redirect:
        r = b.get(str(r.url.join(r.headers["location"])))
    return r


CSRF = re.compile(r"name='csrf' value='([^']+)'")


def confirm(b: httpx.Client, page: httpx.Response, action: str = "confirm") -> httpx.Response:
    assert page.status_code == 200, page.text
    m = CSRF.search(page.text)
    assert m is not None, page.text
    return b.post(str(page.url), data={"csrf": m.group(1), "action": action})
