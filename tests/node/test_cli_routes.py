"""`weft set` and `weft exit-node list` on the command line: what they send, print and
refuse (the daemon is stood in for by ``call``)."""

from __future__ import annotations

from typing import Any

import pytest

from weftnet.cli import main as cli


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    answers = {
        "set": {"prefs": {}, "warning": "IP forwarding is off"},
        "exit_node_list": [
            {"id": 3, "hostname": "ex", "ips": ["100.64.0.3"], "online": True, "selected": True}
        ],
    }

    def call(sock: str, cmd: str, **args: Any) -> Any:
        seen.append((cmd, args))
        return answers[cmd]

    monkeypatch.setattr(cli, "call", call)
    return seen


def test_set_sends_only_the_flags_given(
    calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["set", "--advertise-routes", "10.7.0.0/16", "--exit-node=", "--accept-routes"])
    assert calls == [("set", {"advertise_routes": "10.7.0.0/16", "exit_node": "",
                              "accept_routes": True})]  # fmt: skip
    assert "warning: IP forwarding is off" in capsys.readouterr().err
    cli.main(["set", "--snat-subnet-routes=false"])
    assert calls[-1] == ("set", {"snat_subnet_routes": False})


def test_set_without_flags_says_what_to_do(
    calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["set"])
    assert "nothing to change" in capsys.readouterr().err and calls == []


def test_exit_node_list(calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["exit-node", "list"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["IP", "HOSTNAME", "STATUS"]
    assert out[1].split() == ["100.64.0.3", "ex", "online", "selected"]
