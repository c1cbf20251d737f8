"""bench.run's wireguard-go builds (arguments, SHA256SUMS, baseline) and its CPU cost
per gigabit (weftlab.proccpu): no network, no root."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from bench import wgbuilds
from bench.run import PER_BUILD, Row, add_cpu, add_ratios, markdown_table, parse_args, plan
from bench.wgbuilds import Build, BuildError, Spec

from weftlab import proccpu


def fake_binary(directory: Path, name: str = "wireguard-go", body: bytes = b"#!/bin/sh\n") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(body)
    path.chmod(0o755)
    return path


def build(label: str, version: str) -> Build:
    return Build(Path("/x") / label, label, version, "0" * 64)


# -- arguments -------------------------------------------------------------------------


def test_repeatable_option_with_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wgbuilds.ENV_VAR, "/ignored")
    args = parse_args(["--wireguard-go", "/a/wg", "--wireguard-go", "rel/wg=new one"])
    assert args.wireguard_go_specs == [
        Spec(Path("/a/wg")),
        Spec(wgbuilds.REPO_ROOT / "rel/wg", "new one"),  # relative to the repo, not the cwd
    ]


def test_environment_variable_is_colon_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(wgbuilds.ENV_VAR, "/a/wg=old::/b/wg")
    assert parse_args([]).wireguard_go_specs == [Spec(Path("/a/wg"), "old"), Spec(Path("/b/wg"))]


def test_default_is_debian_plus_upstream_when_present(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    assert wgbuilds.select_specs([], {}, repo) == [Spec(wgbuilds.DEBIAN_WIREGUARD_GO)]
    upstream = fake_binary(tmp_path / "shared/tools/wireguard-go-20250522")
    specs = wgbuilds.select_specs([], {}, repo)
    assert [s.path.resolve() for s in specs] == [wgbuilds.DEBIAN_WIREGUARD_GO.resolve(), upstream]


@pytest.mark.parametrize("bad", ["", "=label", "/a/wg="])
def test_bad_specs_are_rejected(bad: str) -> None:
    with pytest.raises(BuildError):
        wgbuilds.parse_spec(bad)


def test_bad_spec_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--wireguard-go", "=x"])
    assert exc.value.code == 2


# -- SHA256SUMS --------------------------------------------------------------------------


def test_hash_matches(tmp_path: Path) -> None:
    path = fake_binary(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  wireguard-go\n")
    assert wgbuilds.verify_sha256sums(path) == digest


def test_hash_mismatch_is_an_error(tmp_path: Path) -> None:
    path = fake_binary(tmp_path)
    (tmp_path / "SHA256SUMS").write_text(f"{'ab' * 32}  wireguard-go\n")
    with pytest.raises(BuildError, match="does not match"):
        wgbuilds.verify_sha256sums(path)
    with pytest.raises(BuildError, match="does not match"):
        wgbuilds.resolve([Spec(path)], version_of=lambda p: "wireguard-go v1")


def test_sums_file_without_the_binary_is_an_error(tmp_path: Path) -> None:
    path = fake_binary(tmp_path)
    (tmp_path / "SHA256SUMS").write_text(f"{'ab' * 32}  other\n")
    with pytest.raises(BuildError, match="does not list"):
        wgbuilds.verify_sha256sums(path)


def test_no_sums_file_is_fine(tmp_path: Path) -> None:
    path = fake_binary(tmp_path)
    assert wgbuilds.verify_sha256sums(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_upstream_build_matches_its_sums() -> None:
    upstream = wgbuilds.REPO_ROOT / wgbuilds.UPSTREAM_RELATIVE
    if not upstream.exists():
        pytest.skip("no ../shared/tools/wireguard-go-20250522 beside this checkout")
    wgbuilds.verify_sha256sums(upstream)


# -- labels and the baseline ---------------------------------------------------------------


def test_labels_come_from_the_version_and_stay_unique(tmp_path: Path) -> None:
    a = fake_binary(tmp_path / "a")
    b = fake_binary(tmp_path / "b")
    versions = {a: "wireguard-go v0.0.20220316", b: "wireguard-go v0.0.20220316"}
    builds = wgbuilds.resolve(
        [Spec(a), Spec(b), Spec(b, "mine")],
        version_of=versions.__getitem__,
        package_of=lambda p: "wireguard-go" if p == a else None,
    )
    assert [x.label for x in builds] == ["v0.0.20220316, Debian", "v0.0.20220316", "mine"]


def test_missing_binary_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not an executable"):
        wgbuilds.resolve([Spec(tmp_path / "nope")], version_of=str)


def test_baseline_is_the_newest_version() -> None:
    debian = build("debian", "wireguard-go v0.0.20220316")
    upstream = build("upstream", "wireguard-go v0.0.20250522")
    assert wgbuilds.baseline([debian, upstream]) is upstream
    assert wgbuilds.baseline([upstream, debian]) is upstream
    assert wgbuilds.baseline([debian]) is debian
    assert wgbuilds.baseline([]) is None


def test_plan_runs_the_wireguard_go_rows_once_per_build() -> None:
    debian, upstream = build("d", "v1"), build("u", "v2")
    assert set(PER_BUILD) == {"wggo-wggo", "weftd-wggo"}
    assert plan(["raw", "wggo-wggo", "weftd-weftd"], [debian, upstream]) == [
        ("raw", None),
        ("wggo-wggo", debian),
        ("wggo-wggo", upstream),
        ("weftd-weftd", None),
    ]


def test_ratio_is_relative_to_the_baseline_build() -> None:
    debian, upstream = build("d", "v1"), build("u", "v2")
    rows = [
        Row("wggo-wggo", "w d", gbit_s=0.25, wireguard_go="d"),
        Row("wggo-wggo", "w u", gbit_s=1.5, wireguard_go="u"),
        Row("weftd-weftd", "weftd", gbit_s=0.75),
    ]
    add_ratios(rows, upstream)
    assert [r.ratio for r in rows] == pytest.approx([1 / 6, 1.0, 0.5])
    table = markdown_table(rows, upstream)
    assert "ratio vs wireguard-go <-> wireguard-go (u)" in table.splitlines()[0]
    del debian


# -- CPU per gigabit ---------------------------------------------------------------------


def test_cpu_per_gbit_arithmetic() -> None:
    # 1.25e9 bytes = 10 Gbit; 5 CPU seconds -> 0.5 s/Gbit
    assert proccpu.cpu_per_gbit(5.0, 1_250_000_000) == pytest.approx(0.5)
    assert proccpu.cpu_per_gbit(1.0, 0) is None
    row = Row("weftd-weftd", "weftd <-> weftd", gbit_s=1.0)
    add_cpu(row, 3.0, 1_250_000_000, 2)
    assert (row.gbit_moved, row.cpu_s_per_gbit, row.dataplane_processes) == (10.0, 0.3, 2)
    assert "| weftd <-> weftd | 1.00 | 0.30 | - | - |" in markdown_table([row])


def _stat(pid: int, name: str, sid: int, utime: int, stime: int, cut: int = 0, cst: int = 0) -> str:
    # fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime ...
    return f"{pid} ({name}) S 1 {sid} {sid} 0 -1 0 0 0 0 0 {utime} {stime} {cut} {cst} 20 0 1 0\n"


def test_session_cpu_seconds_adds_up_a_session(tmp_path: Path) -> None:
    hz = proccpu.CLOCK_TICKS_PER_S
    stats = {
        100: _stat(100, "wireguard-go", 100, 2 * hz, hz, cut=hz, cst=0),  # leader + reaped
        101: _stat(101, "py (x) y", 100, hz, 0),  # a helper; odd name
        200: _stat(200, "other", 200, 50 * hz, 0),  # another session
    }
    for pid, text in stats.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(text)
    (tmp_path / "self").mkdir()
    (tmp_path / "999").mkdir()  # exited: no stat file
    assert proccpu.session_cpu_seconds(100, str(tmp_path)) == pytest.approx(5.0)
    assert proccpu.sessions_cpu_seconds([100, 200], str(tmp_path)) == pytest.approx(55.0)
    assert proccpu.session_cpu_seconds(300, str(tmp_path)) == 0.0


def test_session_cpu_seconds_of_this_process() -> None:
    sid = os.getsid(0)
    assert proccpu.session_cpu_seconds(sid) >= proccpu.cpu_seconds(os.getpid()) - 0.05
