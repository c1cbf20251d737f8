"""The benchmark harness runs end to end and reports a failing configuration as a row."""

from __future__ import annotations

import json
from pathlib import Path

import bench.run
import pytest

from weftlab.wgpeers import PeerStartError

pytestmark = [pytest.mark.lab, pytest.mark.exclusive]  # measures: runs alone


def test_bench_reports_numbers_and_a_failing_row(
    lab_environment: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def weftd_fails(*args: object, **kwargs: object) -> None:
        raise PeerStartError("weftd exited with code 1 before wg0 came up: boom\nlog tail")

    monkeypatch.setattr(bench.run, "start_weftd", weftd_fails)
    out = tmp_path / "bench.json"

    only = ["--only", "raw,wggo-wggo", "--only", "weftd-wggo"]
    debian = ["--wireguard-go", "/usr/bin/wireguard-go=debian"]  # one build: one row each
    code = bench.run.main(["--seconds", "1", "--pings", "3", *only, *debian, "--json", str(out)])

    assert code == 1
    rows = {row["key"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["raw", "wggo-wggo", "weftd-wggo"]
    for key in ("raw", "wggo-wggo"):
        assert rows[key]["error"] is None
        assert rows[key]["gbit_s"] > 0
        assert rows[key]["ping_avg_ms"] > 0
    assert rows["wggo-wggo"]["ratio"] == 1.0
    assert rows["wggo-wggo"]["wireguard_go"] == "debian"
    assert rows["wggo-wggo"]["dataplane_processes"] == 2
    assert rows["wggo-wggo"]["cpu_s_per_gbit"] > 0
    assert rows["raw"]["cpu_s_per_gbit"] is None
    assert rows["weftd-wggo"]["error"] == "weftd exited with code 1 before wg0 came up: boom"
    table = capsys.readouterr().out
    assert "| weftd <-> wireguard-go (debian) | error: weftd exited with code 1" in table
    assert "CPU s/Gbit" in table.splitlines()[0]
    assert "| raw underlay | " in table


def test_bench_hard_nat_rows_go_direct(
    lab_environment: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hard-NAT rows (issue 19) build their NATs, reach the direct path (by birthday
    probing; through the port mapping) and measure it."""
    out = tmp_path / "bench.json"
    keys = "tailnet-hardnat-birthday,tailnet-hardnat-portmap"
    code = bench.run.main(["--seconds", "1", "--pings", "3", "--only", keys, "--json", str(out)])

    rows = {row["key"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == keys.split(",")
    for row in rows.values():
        assert row["error"] is None, f"{row['key']}: {row['error']}"
        assert row["gbit_s"] > 0 and row["ping_avg_ms"] > 0
        assert row["dataplane_processes"] == 2 and row["cpu_s_per_gbit"] > 0
    assert code == 0
    assert "| tailnet weftd easy NAT <-> hard NAT, direct by birthday probing | " in (
        capsys.readouterr().out
    )
