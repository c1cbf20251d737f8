"""`weft status` prints the Health list in words, and nothing when all is well."""

from __future__ import annotations

from typing import Any

import pytest

from weftnet.cli.main import print_node_status


def status(state: str, health: list[str], **more: Any) -> dict[str, Any]:
    return {
        "backend_state": state, "error": None, "auth_url": None, "health": health,
        "self": {"ips": ["100.64.0.1"], "hostname": "me", "online": True},
        "peers": [], **more,
    }  # fmt: skip


def test_health_is_listed_when_there_are_problems(capsys: pytest.CaptureFixture[str]) -> None:
    print_node_status(status("Running", ["peer evil skipped: low-order node key",
                                         "relay default unreachable"]))  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [
        "Health:",
        "  - peer evil skipped: low-order node key",
        "  - relay default unreachable",
    ]


def test_no_health_section_when_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    print_node_status(status("Running", []))
    assert "Health" not in capsys.readouterr().out


def test_health_shows_in_stopped_and_needs_login_too(capsys: pytest.CaptureFixture[str]) -> None:
    print_node_status(status("NeedsLogin", ["task login restarting after error X: y"]))
    out = capsys.readouterr().out.splitlines()
    assert out == ["NeedsLogin", "Health:", "  - task login restarting after error X: y"]
