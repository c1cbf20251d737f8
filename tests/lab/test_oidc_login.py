"""`weft up` without a key against a control server configured for OIDC, in the lab: the
test follows the printed URL, logs in at a real OpenID provider (weftlab.oidcop), confirms,
and the node is Running as that user and pings its peer (docs/identity.md).

The OP listens on the loopback of the control server's namespace, so the server and the
"browser" (an httpx client run in that namespace too) reach it and nothing else does."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from weftlab.control import start_control
from weftlab.netlab import Host, Lab, poll_until
from weftlab.oidcop import start_op
from weftlab.tailnet import join, pings, start_node

pytestmark = pytest.mark.lab

ALICE = {"email": "alice@example.com", "email_verified": True, "name": "Alice"}
CLIENT_ID = "weft-control"
SECRET = "lab-oidc-secret"
AUTH_URL = re.compile(r"https://\S+/register/\S+")

# The browser, run inside the control server's namespace: signs `sub` in at the OP from the
# node's login URL, follows the callback to the confirmation page and posts its form.
BROWSER = """
import json, re, sys
import httpx
from weftlab.oidcop import sign_in
from weftnet import tls

url, sub, server, ca = sys.argv[1:5]
with httpx.Client(timeout=10, verify=tls.client_context(ca)) as b:
    r = sign_in(b, url, sub, stop_at=server + "/oidc/callback")
    assert r.is_redirect, (r.status_code, r.text[:500])
    r = b.get(r.headers["location"])  # the callback: 303 to the confirmation page
    assert r.is_redirect, (r.status_code, r.text[:500])
    page = b.get(str(r.url.join(r.headers["location"])))
    m = re.search(r"name='csrf' value='([^']+)'", page.text)
    assert page.status_code == 200 and m, (page.status_code, page.text[:500])
    done = b.post(str(page.url), data={"csrf": m.group(1), "action": "confirm"})
    print(json.dumps({"page": page.text, "status": done.status_code, "done": done.text}))
"""


def browse(host: Host, url: str, sub: str, server: str, ca: Path) -> dict[str, Any]:
    r = host.run([sys.executable, "-c", BROWSER, url, sub, server, str(ca)], check=False)
    assert r.returncode == 0, f"browser: {r.stderr[-3000:]}{r.stdout[-1000:]}"
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_weft_up_without_a_key_logs_in_through_the_provider(lab: Lab, tmp_path: Path) -> None:
    t0 = time.monotonic()
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    a, b = (start_node(tmp_path, lab.host(name, inet), name) for name in ("a", "b"))
    server_url = f"https://{ctl.ip}:8080"
    client = {
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "redirect_uris": [f"{server_url}/oidc/callback"],
    }
    secret_file = tmp_path / "oidc-secret"
    secret_file.write_text(SECRET + "\n")
    with start_op(clients=[client], accounts={"alice": ALICE}, netns=ctl.netns) as op:
        assert op.issuer.startswith("http://127.0.0.1:")
        oidc = ["--oidc-issuer", op.issuer, "--oidc-client-id", CLIENT_ID]
        oidc += ["--oidc-client-secret-file", str(secret_file)]
        control = start_control(ctl, tmp_path / "control", extra_args=oidc)
        assert control.url == server_url and control.ca_file is not None
        join(control, [a], user="ops")  # the peer, with an auth key

        # `weft up` without a key waits for the login and prints where to do it.
        up_cmd = [sys.executable, "-m", "weftnet.cli.main", "--socket", b.socket, "up"]
        up_cmd += ["--login-server", control.url, "--hostname", "b", "--timeout", "60"]
        up = b.host.popen(up_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert up.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(up.stdout, lines), daemon=True)
        reader.start()
        out: list[str] = []

        def auth_url() -> str | None:
            while not lines.empty():
                out.append(lines.get())
            m = AUTH_URL.search("".join(out))
            if m is None and up.poll() is not None:
                raise AssertionError(f"weft up exited ({up.returncode}): {''.join(out)}")
            return m.group(0) if m else None

        url = poll_until(auth_url, timeout_s=15, what="weft up to print the login URL")
        assert url is not None and url.startswith(f"{server_url}/register/")
        assert b.status()["backend_state"] == "NeedsLogin"

        result = browse(ctl, url, "alice", control.url, control.ca_file)
        assert "alice@example.com" in result["page"], result["page"]
        assert result["status"] == 200 and "Device connected" in result["done"], result

        try:
            up.wait(timeout=15)  # returns at once after the confirmation
        except subprocess.TimeoutExpired:
            raise AssertionError(f"weft up still waiting: {''.join(out)}") from None
        reader.join(5)  # to the end of its output
        while not lines.empty():
            out.append(lines.get())
        assert up.returncode == 0, "".join(out)
        assert "Success." in "".join(out)

        st = b.status()
        assert st["backend_state"] == "Running", st
        assert st["self"]["user"] == "alice@example.com", st["self"]
        b_ip = b.ip4()
        assert b_ip.startswith("100.")
        whois = json.loads(a.weft("whois", "--json", b_ip).stdout)  # as the peer sees it
        assert whois["user"]["name"] == "alice@example.com", whois
        assert json.loads(b.weft("whois", "--json", b_ip).stdout)["user"] == whois["user"]
        a_ip = a.ip4()
        poll_until(lambda: pings(b, a_ip), timeout_s=10, what="b to ping a")
        poll_until(lambda: pings(a, b_ip), timeout_s=10, what="a to ping b")

        # The server's view: b belongs to alice@example.com, registered by an OIDC login.
        rows = {n["given_name"]: n for n in control.admin_json("nodes", "list")}
        assert rows["b"]["user"] == "alice@example.com" and rows["b"]["ipv4"] == b_ip
        assert rows["a"]["user"] == "ops"
        assert rows["b"]["auth_method"] == "oidc" and rows["a"]["auth_method"] == "authkey"
    took = time.monotonic() - t0
    print(f"OIDC login to ping in {took:.1f} s")
    assert took < 90
