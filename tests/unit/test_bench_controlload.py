"""bench.controlload, the control-plane load generator: a whole run at 20 nodes on
SQLite (a real server, real worker processes, the real node protocol) in a few
seconds, and its table and growth lines. Not a benchmark: it asserts only that every
figure was measured, so the generator cannot rot."""

from __future__ import annotations

import pytest
from bench import controlload
from bench.controlload import Result, growth, markdown_table, parse_args, percentiles
from bench.controlnodes import Mark

from weftnet import tailcfg

SIZE = 20


def test_a_small_run_measures_every_figure() -> None:
    args = parse_args(["--sizes", str(SIZE), "--db", "sqlite", "--workers", "2",
                       "--devices", "5", "--phase-timeout", "30"])  # fmt: skip
    r = controlload.run_size(SIZE, "sqlite", args)
    assert r.errors == []
    assert (r.registered, r.streams) == (SIZE, SIZE)
    assert r.policy_missing == r.new_node_missing == r.endpoint_missing == 0
    assert r.register_rate is not None and r.register_rate > 0
    for figures in (r.policy_ms, r.new_node_ms, r.endpoint_ms):
        assert figures is not None
        p50, p99, most = figures
        assert 0 < p50 <= p99 <= most
    # A full map holds the node's 4 other devices; a policy delta only the new filter.
    assert r.full_map_bytes is not None and r.delta_bytes is not None
    assert r.full_map_bytes > r.delta_bytes > 0
    assert r.rss_mb is not None and r.rss_mb > 10
    assert r.cpu_s is not None and r.cpu_s > 0
    assert f"| {SIZE} | sqlite |" in markdown_table([r])


def test_percentiles_and_growth() -> None:
    assert percentiles([]) is None
    assert percentiles([0.001 * i for i in range(1, 101)]) == pytest.approx((50.5, 100, 100))
    small = Result(1000, "sqlite", policy_ms=(1, 100, 200), rss_mb=100, cpu_s=10)
    large = Result(5000, "sqlite", policy_ms=(5, 300, 400), rss_mb=250, cpu_s=60)
    (line,) = growth([small, large])
    assert line.startswith("sqlite, 1000 -> 5000 nodes (x5): policy p99 x3.0")
    assert "RSS x2.5" in line and "CPU x6.0" in line


def test_marks_see_ports_peers_and_endpoints() -> None:
    peer = tailcfg.Node(
        id=7, name="p", given_name="p", node_key="nodekey:" + "11" * 32, addresses=[],
        allowed_ips=[], endpoints=["198.19.0.1:2"],
    )  # fmt: skip
    rule = tailcfg.FilterRule(
        src_ips=["100.64.0.1/32"],
        dst_ports=[tailcfg.NetPortRange(ip="100.64.0.2/32", ports=tailcfg.PortRange(first=40001, last=40001))], ip_proto=[6],
    )  # fmt: skip
    frame = tailcfg.MapResponse(peers_changed=[peer], packet_filter=[rule])
    assert Mark(port=40001).seen_in(frame)
    assert not Mark(port=40002).seen_in(frame)
    assert Mark(node_key=peer.node_key).seen_in(frame)
    assert Mark(node_key=peer.node_key, endpoint="198.19.0.1:2").seen_in(frame)
    assert not Mark(node_key=peer.node_key, endpoint="198.19.0.1:3").seen_in(frame)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--db", "mysql"])
    with pytest.raises(SystemExit):
        parse_args(["--sizes", "0"])
