"""An on-path attacker between a node and its coordination server (security audit H1).

The node sits behind its ISP's router; the router is the attacker. It redirects
(nftables DNAT) every connection to the control server's address and port to its own
``weftlab.recorder``, which records every byte in plaintext (ending TLS itself, with a
certificate from a CA the node does not trust, when the node speaks https) and relays it
to an impostor: a real ``weft-control serve`` with a key of its own.

- With an auth key (it carries the real server's fingerprint) the node refuses the
  impostor's key before sending the key: the impostor gets no registration and the
  key's secret appears nowhere in what it received.
- With ``--server-key`` the same holds for an interactive login; with nothing to verify
  the key by, a login over plain http is refused outright.
- Over https the node refuses the untrusted certificate with a clear error, and not a
  byte of plaintext reaches the attacker.
- The control case: with ``--allow-insecure-http`` and an old-style key without a
  fingerprint, the impostor does receive a registration, and opening it with the
  impostor's own server key reveals the auth key. So the attacker is really on the path,
  and the refusals above are what protects the node.
- When the attacker leaves, the same node logs in with the same key over https.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab, NatRouter, poll_until
from weftlab.tailnet import Node, start_node
from weftlab.testca import TestCA
from weftnet import controlbox, keyfile, serverkey

pytestmark = pytest.mark.lab

CONTROL_PORT = 8080
IMPOSTOR = "127.0.0.1:18080"


def redirect_to_attacker(router: NatRouter, control_ip: str) -> None:
    rules = f"""
table ip attacker {{
    chain prerouting {{
        type nat hook prerouting priority dstnat - 10; policy accept;
        ip daddr {control_ip} tcp dport {CONTROL_PORT} dnat to {router.lan_ip}:{CONTROL_PORT}
    }}
}}
"""
    router.run(["nft", "-f", "-"], input=rules)


def start_recorder(
    router: NatRouter, record: Path, tls: tuple[Path, Path] | None = None
) -> subprocess.Popen[Any]:
    argv = [sys.executable, "-m", "weftlab.recorder", "--listen", f"0.0.0.0:{CONTROL_PORT}",
            "--to", IMPOSTOR, "--record", str(record), "--seconds", "120"]  # fmt: skip
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = router.popen(argv)
    poll_until(
        lambda: record.exists() or proc.poll() is not None, timeout_s=10, what="the recorder"
    )
    assert proc.poll() is None, "the recorder exited"
    router.wait_listening(CONTROL_PORT, proto="tcp")
    return proc


def stop(proc: subprocess.Popen[Any]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def up(node: Node, *args: str) -> tuple[int, str]:
    r = node.weft("up", "--timeout", "10", *args, check=False, timeout=60)
    return r.returncode, r.stderr + r.stdout


def registrations(record: Path) -> list[bytes]:
    """The sealed bodies of the register requests in a recording."""
    data = record.read_bytes()
    bodies = []
    for m in re.finditer(
        rb"POST /machine/[0-9a-f]{64}/register HTTP/1.1\r\n(.*?)\r\n\r\n", data, re.S
    ):
        length = re.search(rb"(?i)content-length: *(\d+)", m.group(1))
        assert length is not None
        start = m.end()
        bodies.append(data[start : start + int(length.group(1))])
    return bodies


def machine_key_of(node: Node) -> bytes:
    private = bytes.fromhex((node.state_dir / "machine.key").read_text().strip())
    return keyfile.public_of(private)


def test_an_on_path_attacker_gets_no_secret(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl = lab.host("ctl", inet)
    isp = lab.nat_router("isp", upstream=inet)
    control = start_control(ctl, tmp_path / "control")  # https, the run's test CA
    assert control.url == f"https://{ctl.ip}:{CONTROL_PORT}"
    control.admin("users", "create", "alice")
    key = control.admin("keys", "create", "--user", "alice", "--reusable").stdout.strip()
    legacy_key, fingerprint = serverkey.split_auth_key(key)
    assert fingerprint is not None
    secret = legacy_key.rsplit("-", 1)[1]
    real_server_key = control.admin("server-key").stdout.strip()
    impostor = start_control(
        isp,
        tmp_path / "impostor",
        listen=IMPOSTOR,
        tls=False,
        extra_args=["--no-relay", "--stun-port", "0", "--server-url", f"http://{IMPOSTOR}"],
        reach_url=f"http://{IMPOSTOR}",
    )
    redirect_to_attacker(isp, ctl.ip)
    plain_url = f"http://{ctl.ip}:{CONTROL_PORT}"

    # Plain http: the node would reach the impostor.
    record = tmp_path / "plain.rec"
    recorder = start_recorder(isp, record)
    n1 = start_node(tmp_path, lab.host("n1", isp.lan), "n1")
    code, out = up(n1, "--login-server", plain_url, "--auth-key", key)
    assert code != 0 and "fingerprint" in out and "auth key was made for" in out, out
    code, out = up(n1, "--login-server", plain_url, "--server-key", real_server_key)
    assert code != 0 and "--server-key" in out and "refusing" in out, out
    code, out = up(n1, "--login-server", plain_url)
    assert code != 0 and "over plain http" in out and "--allow-insecure-http" in out, out
    assert b"GET /key" in record.read_bytes(), "the node never met the attacker"
    assert registrations(record) == [] and secret.encode() not in record.read_bytes()
    assert "/register" not in impostor.log()

    # The control case: nothing verifies the key, and the user said to go on anyway.
    n2 = start_node(tmp_path, lab.host("n2", isp.lan), "n2")
    code, out = up(n2, "--login-server", plain_url, "--auth-key", legacy_key,
                   "--allow-insecure-http")  # fmt: skip
    assert code != 0, out  # the impostor does not know the key: but now it has it
    [stolen] = registrations(record)
    impostor_private, _ = keyfile.load_or_create(tmp_path / "impostor" / "server.key")
    opened = controlbox.open_sealed(impostor_private, machine_key_of(n2), stolen)
    assert secret.encode() in opened, "the control case should leak the key to the impostor"
    stop(recorder)

    # https: the attacker presents a certificate from its own CA.
    attacker_ca = TestCA(tmp_path / "attacker-ca", name="not your CA")
    tls_record = tmp_path / "tls.rec"
    recorder = start_recorder(isp, tls_record, attacker_ca.issue("mitm", [ctl.ip]))
    n3 = start_node(tmp_path, lab.host("n3", isp.lan), "n3")
    code, out = up(n3, "--login-server", control.url, "--auth-key", key)
    assert code != 0 and "TLS certificate is not trusted" in out and "--tls-ca" in out, out
    assert tls_record.read_bytes() == b"", "plaintext reached the attacker"
    assert_no_traceback(n1, n2, n3)

    # The attacker leaves: the same node, the same key, the real server.
    stop(recorder)
    isp.run(["nft", "delete", "table", "ip", "attacker"])
    code, out = up(n3, "--login-server", control.url, "--auth-key", key)
    assert code == 0, out
    poll_until(lambda: n3.status()["backend_state"] == "Running", timeout_s=10, what="n3 up")
    assert server_key_pinned(n3) == real_server_key
    print({"refusals": "ok", "stolen_register_bytes": len(stolen)})


def server_key_pinned(node: Node) -> str:
    return str(json.loads((node.state_dir / "server.json").read_text())["server_key"])


def assert_no_traceback(*nodes: Node) -> None:
    for n in nodes:
        assert "Traceback" not in n.log(), n.log()[-3000:]
