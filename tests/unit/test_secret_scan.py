"""The lab's scan of log files for secrets (weftlab.secrets) finds them, and names
file, line and kind of secret without printing it: the lab suite's check can fail."""

from __future__ import annotations

from pathlib import Path

from weftlab import secrets


def test_the_scan_finds_a_planted_secret_and_never_prints_it(tmp_path: Path) -> None:
    auth_key = "weftkey-0123456789ab-" + "c" * 48 + "-" + "f" * 32  # with a fingerprint
    unseen = "weftapi-ba9876543210-" + "d" * 48  # never remembered: found by its shape
    node_key = "e" * 64
    (tmp_path / "node-a").mkdir()
    (tmp_path / "node-a" / "node.key").write_text(node_key + "\n")
    (tmp_path / "control.log").write_text(
        "starting\n"
        f'INFO: 127.0.0.1:1 - "DELETE /api/v1/keys/{auth_key} HTTP/1.1" 200 OK\n'
        f"the secret alone: {'c' * 48}\n"
        f"Authorization: Bearer {unseen}\n"
    )
    (tmp_path / "node-a.log").write_text(f"fine\nprivate {node_key}\n")
    secrets.remember(auth_key)
    try:
        findings = secrets.scan_tree([tmp_path])
    finally:
        secrets.forget()
    found = {(f.path.name, f.line, f.form) for f in findings}
    assert found == {
        ("control.log", 2, "full text"),
        ("control.log", 3, "secret part"),
        ("control.log", 4, "full text"),
        ("node-a.log", 2, "full text"),
    }
    shown = "\n".join(str(f) for f in findings)
    assert "weftkey-0123456789ab-<secret>" in shown and "node-a/node.key" in shown
    for secret in ("c" * 48, "d" * 48, node_key):
        assert secret not in shown
