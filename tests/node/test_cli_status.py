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


def test_names_from_the_map_cannot_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    peer = {"ips": ["100.64.0.2"], "hostname": "\x1b]0;owned\x07\x1b[2Jevil", "online": True,
            "path": "relay", "endpoint": None, "rx_bytes": 0, "tx_bytes": 0}  # fmt: skip
    print_node_status(status("Running", ["peer \x1b[31mx skipped"], peers=[peer]))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "?]0;owned??[2Jevil" in out and "peer ?[31mx skipped" in out


def test_an_auth_key_can_come_from_a_file(tmp_path: Any) -> None:
    from weftnet.cli.main import CliError, auth_key_argument

    (tmp_path / "key").write_text("weftkey-0123456789ab-" + "cd" * 24 + "\n")
    assert auth_key_argument(f"file:{tmp_path / 'key'}") == "weftkey-0123456789ab-" + "cd" * 24
    assert auth_key_argument("weftkey-x") == "weftkey-x" and auth_key_argument(None) is None
    with pytest.raises(CliError, match="No such file"):
        auth_key_argument(f"file:{tmp_path / 'missing'}")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CliError, match="empty"):
        auth_key_argument(f"file:{tmp_path / 'empty'}")


def test_routes_and_exit_nodes_show_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    peer = {"ips": ["100.64.0.2"], "hostname": "gw", "online": True, "path": "direct",
            "endpoint": "198.18.0.9:41641", "rx_bytes": 0, "tx_bytes": 0,
            "primary_routes": ["198.18.20.0/24"], "exit_node_option": True}  # fmt: skip
    print_node_status(status("Running", [], peers=[peer], routes={"serving": ["198.18.30.0/24"]}))
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[2:] == ["self", "-", "serving", "198.18.30.0/24"], out
    assert out[1].endswith("routes 198.18.20.0/24; exit node"), out
