"""A real OpenID Provider for tests, and a browserless login through it.

`start_op` runs tests/oidc/op/test-op.mjs (npm `oidc-provider` with its devInteractions
login form) on an ephemeral loopback port; `sign_in` walks a relying party's login redirects
with an httpx client, posting the OP's login form (or aborting it) on the way.

    with start_op(clients=[{"client_id": "weft-control", "client_secret": "s",
                            "redirect_uris": [f"{rp}/oidc/callback"]}],
                  accounts={"alice": {"email": "alice@example.com"}}) as op:
        r = sign_in(httpx.Client(), f"{rp}/login", "alice", stop_at=rp)
        # r.headers["location"] is the RP callback with ?code=...&state=...

Needs node and tests/oidc/op/node_modules: `make install`. A missing one is an error, not a
skip, so that CI can't pass without running these tests.
"""

from __future__ import annotations

import html
import json
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

OP_DIR = Path(__file__).resolve().parents[2] / "tests" / "oidc" / "op"
OP_SCRIPT = OP_DIR / "test-op.mjs"
START_TIMEOUT = 20.0

_INTERACTION = re.compile(r"^/interaction/[^/]+$")
_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"')
_PROMPT = re.compile(r'name="prompt"\s+value="([^"]+)"')


class OpError(RuntimeError):
    """The test OP could not be started, or a login through it went wrong."""


class OpenIdProvider:
    """A running test OP; `issuer` is its base URL (http://127.0.0.1:PORT)."""

    def __init__(self, proc: subprocess.Popen[str], issuer: str) -> None:
        self.proc = proc
        self.issuer = issuer

    def url(self, path: str) -> str:
        return self.issuer + path

    def metadata(self) -> dict[str, Any]:
        r = httpx.get(self.url("/.well-known/openid-configuration"), timeout=5)
        r.raise_for_status()
        meta: dict[str, Any] = r.json()
        return meta

    def set_claims(self, sub: str, claims: Mapping[str, Any]) -> None:
        """Replace a user's claims; the next login (or token) carries them."""
        r = httpx.put(self.url(f"/_test/accounts/{quote(sub, safe='')}"), json=dict(claims))
        r.raise_for_status()

    def clear_claims(self, sub: str) -> None:
        """Leave the user only a `sub` (and preferred_username = sub)."""
        httpx.delete(self.url(f"/_test/accounts/{quote(sub, safe='')}")).raise_for_status()

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def _check_installed() -> str:
    node = shutil.which("node")
    if node is None:
        raise OpError("node is not installed: run `make install`")
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise OpError(f"{OP_DIR}/node_modules is missing: run `make install`")
    return node


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:  # keeps draining after the issuer line so the OP never blocks
        lines.put(line)
    lines.put(None)


def _await_issuer(proc: subprocess.Popen[str], lines: queue.Queue[str | None], log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            proc.wait(5)
            raise OpError(f"test OP exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        if line.startswith("{"):
            issuer: str = json.loads(line)["issuer"]
            return issuer
    raise OpError(f"test OP printed no issuer in {START_TIMEOUT}s:\n{log.read_text()[-2000:]}")


@contextmanager
def start_op(
    clients: Sequence[Mapping[str, Any]],
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
    id_token_ttl: int = 3600,
    netns: str | None = None,
) -> Iterator[OpenIdProvider]:
    """Run a test OP with these clients (oidc-provider client metadata) and accounts
    (sub -> claims); stopped when the block exits. With ``netns`` it runs in that network
    namespace (`ip netns exec`; a lab host's ``.netns``), on that namespace's loopback:
    only processes there reach ``issuer``, so the ``OpenIdProvider`` helpers that call the
    OP from this process (metadata, set_claims, clear_claims) don't work then."""
    node = _check_installed()
    with tempfile.TemporaryDirectory(prefix="weft-op-") as tmp:
        cfg = Path(tmp) / "op.json"
        log = Path(tmp) / "op.log"
        config = {
            "port": 0,
            "clients": [dict(c) for c in clients],
            "accounts": {sub: dict(c) for sub, c in (accounts or {}).items()},
            "id_token_ttl": id_token_ttl,
        }
        cfg.write_text(json.dumps(config))
        in_netns = ["ip", "netns", "exec", netns] if netns else []
        with log.open("w") as err:
            proc = subprocess.Popen(
                [*in_netns, node, str(OP_SCRIPT), str(cfg)],
                cwd=OP_DIR,
                stdin=subprocess.PIPE,  # the OP exits when this closes, even if we are killed
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        try:
            assert proc.stdout is not None
            lines: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
            yield OpenIdProvider(proc, _await_issuer(proc, lines, log))
        finally:
            _stop(proc)


def sign_in(
    client: httpx.Client,
    url: str,
    sub: str,
    *,
    stop_at: str,
    abort: bool = False,
    max_hops: int = 20,
) -> httpx.Response:
    """Log `sub` in from `url` (an RP login URL or an authorization URL), following
    redirects by hand with `client`'s cookies. On the OP's login form, post it (or abort the
    interaction if `abort`: the RP then gets error=access_denied). Returns the first response
    that redirects to a URL starting with `stop_at` (the RP callback), or the first one that
    is neither a redirect nor an OP form. A second login in the same client goes straight
    back with a code (silent SSO)."""
    r = client.get(url, follow_redirects=False)
    for _ in range(max_hops):
        if r.is_redirect:
            loc = str(r.url.join(r.headers["location"]))
            if loc.startswith(stop_at):
                return r
            r = client.get(loc, follow_redirects=False)
        elif r.status_code == 200 and _INTERACTION.match(r.url.path):
            if abort:
                r = client.get(r.url.join(r.url.path + "/abort"), follow_redirects=False)
            else:
                r = _submit_interaction(client, r, sub)
        else:
            return r
    raise OpError(f"sign_in: more than {max_hops} hops, last {r.request.method} {r.url}")


def _submit_interaction(client: httpx.Client, page: httpx.Response, sub: str) -> httpx.Response:
    action, prompt = _FORM_ACTION.search(page.text), _PROMPT.search(page.text)
    if action is None or prompt is None:
        raise OpError(f"no devInteractions form at {page.url}:\n{page.text[:500]}")
    form = {"prompt": prompt.group(1)}
    if form["prompt"] == "login":
        form |= {"login": sub, "password": "x"}
    target = page.url.join(html.unescape(action.group(1)))
    return client.post(target, data=form, follow_redirects=False)
