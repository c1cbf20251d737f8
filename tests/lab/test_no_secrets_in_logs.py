"""No secret reaches a log, on the paths that handle secrets on purpose (security audit
L5 and its kin): the admin CLI creating, listing and revoking auth keys and API keys
(through admin.json and through --server/--api-key), nodes logging in with an auth key
and interactively, a standalone relay registering with a relay-scope API key. Every
test of the lab suite is also scanned afterwards (conftest.no_secrets_in_logs);
tests/unit/test_secret_scan.py shows the scan finds what it looks for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from weftlab import secrets
from weftlab.control import admin, start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import join, start_node, wait_mesh
from weftlab.testca import lab_ca

pytestmark = pytest.mark.lab


def test_secret_bearing_paths_leave_no_secret_in_any_log(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, relay_host = lab.host("ctl", inet), lab.host("relay2", inet)
    control = start_control(ctl, tmp_path / "control")  # with its access log

    # Keys made, listed and revoked, locally (admin.json) and remotely (--api-key).
    control.admin("users", "create", "alice")
    single = control.admin("keys", "create", "--user", "alice").stdout.strip()
    control.admin("keys", "list", "--json")
    control.admin("keys", "revoke", single.split("-")[1])
    remote_key = control.admin("apikeys", "create").stdout.strip()

    def remote(*args: str) -> str:
        ca = ("--tls-ca", str(control.ca_file)) if control.ca_file else ()
        return admin(*args, *ca, server=control.url, api_key=remote_key, host=ctl).stdout

    remote("users", "list")
    spare = remote("apikeys", "create").strip()
    remote("apikeys", "list", "--json")
    remote("apikeys", "revoke", spare.split("-")[1])
    assert remote("keys", "create", "--user", "alice", "--reusable").startswith("weftkey-")

    # A standalone relay registers with a relay-scope key.
    relay_key = control.admin("apikeys", "create", "--scope", "relay").stdout.strip()
    cert, key = lab_ca().issue("relay2", [relay_host.ip], tmp_path / "relay2-tls")
    with open(tmp_path / "relay2.log", "ab") as log:
        relay_host.popen(
            [sys.executable, "-m", "weftnet.control.cli.main", "relay", "--region", "second",
             "--listen", "0.0.0.0:8081", "--stun-port", "3478", "--control-url", control.url,
             "--api-key", relay_key, "--data-dir", str(tmp_path / "relay2"),
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(control.ca_file)],
            stdout=log, stderr=log,
        )  # fmt: skip
    poll_until(lambda: len(control.admin_json("relays", "list")) == 2, timeout_s=15, what="relay")

    # Nodes log in with an auth key, and one interactively.
    a, b = (start_node(tmp_path, lab.host(name, inet), name) for name in ("a", "b"))
    join(control, [a, b], user="bob")
    c = start_node(tmp_path, lab.host("c", inet), "c")
    waiting = c.weft("up", "--login-server", control.url, "--timeout", "1", check=False)
    code = re.search(r"/register/([0-9a-f]+)", waiting.stdout)
    assert code is not None, waiting.stdout + waiting.stderr
    control.admin("nodes", "register", "--user", "alice", "--code", code.group(1))
    poll_until(lambda: c.status()["backend_state"] == "Running", timeout_s=15, what="c to log in")
    wait_mesh([a, b, c], timeout_s=30)
    assert control.stop() == 0  # its last log lines written

    remembered = secrets.remembered()
    key_files = secrets.key_files_in(tmp_path)
    # auth keys (3), API keys (local, remote, spare, relay), the key files: server,
    # embedded relay, standalone relay, and each node's machine and node key
    assert len(remembered) >= 7, [s.label for s in remembered]
    labels = sorted(s.label for s in key_files)
    assert sum("private key in" in label for label in labels) >= 3 + 3 * 2, labels
    assert sum("TLS private key" in label for label in labels) >= 1, labels
    logs = secrets.log_files(tmp_path)
    assert {p.name for p in logs} >= {"control.log", "relay2.log", "node-a.log", "node-c.log"}
    access = (tmp_path / "control.log").read_text()
    assert "/api/v1/apikeys" in access and "/api/v1/keys" in access  # the access log ran
    findings = secrets.scan_tree([tmp_path])
    assert findings == [], "\n".join(str(f) for f in findings)
    print(f"{len(remembered) + len(key_files)} secrets, {len(logs)} logs: none found")
