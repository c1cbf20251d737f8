"""The node's state directory and its endpoint choice."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from weftnet.magicsock.conn import first_guess as choose_endpoint
from weftnet.node.state import NodeState, Pin


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keys_are_created_private_and_persist(tmp_path: Path) -> None:
    d = tmp_path / "state"
    st = NodeState.load(d)
    assert mode(d) == 0o700
    for name in ("machine.key", "node.key"):
        assert mode(d / name) == 0o600
    again = NodeState.load(d)
    assert again.machine_private == st.machine_private
    assert again.node_private == st.node_private
    st.prefs.login_server = "http://198.18.0.1:8080"
    st.prefs.registered = True
    st.save_prefs()
    st.save_pin(Pin("http://198.18.0.1:8080", "mkey:" + "ab" * 32))
    st.save_netmap({"node": None, "peers": []})
    for name in ("prefs.json", "server.json", "netmap.json"):
        assert mode(d / name) == 0o600
    loaded = NodeState.load(d)
    assert loaded.prefs.registered and loaded.pin() == st.pin()
    assert loaded.load_netmap() == {"node": None, "peers": []}


def test_rotating_the_node_key_forgets_the_registration(tmp_path: Path) -> None:
    st = NodeState.load(tmp_path)
    st.prefs.registered = True
    old = st.node_private
    st.rotate_node_key()
    assert st.node_private != old and not NodeState.load(tmp_path).prefs.registered
    assert st.machine_private == NodeState.load(tmp_path).machine_private


def test_corrupt_key_is_a_clear_error(tmp_path: Path) -> None:
    NodeState.load(tmp_path)
    (tmp_path / "node.key").write_text("zz")
    with pytest.raises(ValueError, match="corrupt"):
        NodeState.load(tmp_path)


def test_damaged_netmap_cache_is_ignored(tmp_path: Path) -> None:
    st = NodeState.load(tmp_path)
    (tmp_path / "netmap.json").write_text("{not json")
    assert st.load_netmap() is None


def test_endpoint_choice() -> None:
    public = ["198.18.0.5:41641", "198.18.0.5:41641"]
    behind_nat = ["198.18.0.9:41641", "198.18.1.2:41641"]
    same_nat = ["198.18.0.9:41641", "198.18.1.3:41641"]
    assert choose_endpoint(public, behind_nat) == ("198.18.0.9", 41641)
    assert choose_endpoint(behind_nat, public) == ("198.18.0.5", 41641)
    assert choose_endpoint(behind_nat, same_nat) == ("198.18.1.3", 41641)
    assert choose_endpoint([], behind_nat) == ("198.18.0.9", 41641)
    assert choose_endpoint(public, []) is None
    assert choose_endpoint(public, ["[fd00::1]:41641"]) == ("fd00::1", 41641)
    assert choose_endpoint(public, ["nonsense"]) is None
