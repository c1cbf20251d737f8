"""bench.run's hard-NAT rows (issue 19): in the default set, named in the table, and
the test of "direct through what the technique opened" they wait for. No network, no
root; tests/lab/test_bench.py runs the rows themselves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from bench.run import (
    CONFIGS,
    HARDNAT,
    Row,
    hardnat_direct,
    markdown_table,
    parse_args,
    path_summary,
)

from weftlab.tailnet import Node

ROWS = ("tailnet-hardnat-birthday", "tailnet-hardnat-portmap")
MAPPED = "198.18.0.7:41641"


def test_hard_nat_rows_are_in_the_default_set() -> None:
    keys = parse_args([]).keys
    assert set(ROWS) <= set(keys)
    assert keys.index("tailnet-relay") < keys.index(ROWS[0])  # next to the other tailnet rows
    assert parse_args(["--only", ",".join(ROWS)]).keys == list(ROWS)


@pytest.mark.parametrize("key", ROWS)
def test_hard_nat_rows_are_tailnet_rows_of_a_technique(key: str) -> None:
    name, client_kind, server_kind = CONFIGS[key]
    assert client_kind == "tailnet" and server_kind in HARDNAT
    assert "hard NAT" in name
    table = markdown_table([Row(key, name, gbit_s=1.5, ping_avg_ms=0.9, cpu_s_per_gbit=0.5)])
    assert f"| {name} | 1.50 | 0.50 | 0.900 | - |" in table


class StatusOnly:
    """What hardnat_direct and path_summary read of a Node: `weft status --json` (and
    the host's name)."""

    def __init__(self, path: str, endpoint: str, mapped: str | None = None) -> None:
        self.host = SimpleNamespace(name="n")
        self.answer = {
            "peers": [{"path": path, "endpoint": endpoint}],
            "port_mapping": {"mapped_address": mapped} if mapped else None,
        }

    def status(self) -> dict[str, Any]:
        return self.answer


EASY_WAN = "198.18.0.6"  # the easy NAT's public address


def direct(easy: StatusOnly, hard: StatusOnly, birthday: bool) -> bool:
    return hardnat_direct(cast(Node, easy), cast(Node, hard), birthday, EASY_WAN)


def test_birthday_counts_a_path_to_the_easy_nat_from_either_socket() -> None:
    easy = StatusOnly("direct", "198.18.0.9:41641")
    assert direct(easy, StatusOnly("direct", "via:40012/198.18.0.6:41641"), birthday=True)
    # an easy side's guess was the main socket's mapping (CI, stop 25): direct all the same
    assert direct(easy, StatusOnly("direct", "198.18.0.6:41641"), birthday=True)
    assert not direct(easy, StatusOnly("direct", "198.18.0.60:41641"), birthday=True)
    assert not direct(easy, StatusOnly("direct", "via:40012/198.18.0.7:41641"), birthday=True)
    assert not direct(easy, StatusOnly("relay", "relay:default"), birthday=True)
    assert not direct(StatusOnly("relay", "relay:default"),
                      StatusOnly("direct", "via:40012/198.18.0.6:41641"), birthday=True)  # fmt: skip


def test_port_mapping_counts_only_the_mapped_address() -> None:
    hard = StatusOnly("direct", "198.18.0.6:41641", mapped=MAPPED)
    assert direct(StatusOnly("direct", MAPPED), hard, birthday=False)
    assert not direct(StatusOnly("direct", "198.18.0.7:50123"), hard, birthday=False)
    unmapped = StatusOnly("direct", "198.18.0.6:41641")
    assert not direct(StatusOnly("direct", MAPPED), unmapped, birthday=False)


def test_no_peer_yet_is_not_direct() -> None:
    nobody = StatusOnly("direct", MAPPED)
    nobody.answer["peers"] = []
    assert not direct(nobody, StatusOnly("direct", MAPPED, mapped=MAPPED), birthday=False)


def test_the_error_says_where_the_pair_is() -> None:
    easy, hard = StatusOnly("relay", "relay:default"), StatusOnly("relay", "relay:second")
    text = path_summary(cast(Node, easy), cast(Node, hard))
    assert "path relay endpoint relay:default" in text and "port mapping None" in text
    assert "\n" not in text  # an error row shows its first line
