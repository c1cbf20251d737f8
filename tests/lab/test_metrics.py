"""Issue 18: a real Prometheus scrapes a lab tailnet's metrics, and they move with traffic.

Debian's /usr/bin/prometheus runs in a lab host of its own (scrape interval 1 s) and
scrapes ``weft-control serve --metrics-listen`` and two weftd ``--metrics-listen``. The
test asks Prometheus's HTTP API (/api/v1/query), never the targets, and polls with
deadlines: registrations and map pushes move when the nodes join; bytes, packets and
handshakes on the direct path when iperf3 runs between them; relay bytes (the nodes'
and the relay's own) and path changes once UDP between them is blocked. The server and
node ``a`` log JSON lines (--log-format json): every line of theirs must parse.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from weftlab.control import start_control
from weftlab.netlab import Lab, poll_until
from weftlab.prometheus import PROMETHEUS, Prometheus, running_prometheus
from weftlab.tailnet import Node, join, pings, start_node, wait_mesh

pytestmark = pytest.mark.lab

METRICS_PORT = 9100
IPERF_SECONDS = 2
MOVE_TIMEOUT_S = 15.0  # scrapes every 1 s: a counter's move shows within a few


def moved(prom: Prometheus, targets: dict[str, float], what: str) -> dict[str, float | None]:
    """Poll Prometheus until every expression is at least its target; their values."""
    last: dict[str, float | None] = {}

    def reached() -> bool:
        last.update(prom.values(*targets))
        return all((last[e] or 0.0) >= floor for e, floor in targets.items())

    try:
        poll_until(reached, timeout_s=MOVE_TIMEOUT_S, what=what, interval_s=0.5)
    except TimeoutError:
        raise AssertionError(f"{what}: {last} did not reach {targets}") from None
    return last


def json_lines(text: str, where: str) -> int:
    """Every non-empty line of ``text`` is one JSON log record; how many there are."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(record), f"{where}: {line}"
    return len(lines)


def weftd_metric(name: str, instance: str, **labels: str) -> str:
    matchers = ",".join([f'instance="{instance}"', *(f'{k}="{v}"' for k, v in labels.items())])
    return f"{name}{{{matchers}}}"


def test_prometheus_scrapes_the_tailnet_and_the_metrics_move_with_traffic(
    lab: Lab, tmp_path: Path
) -> None:
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: `make install` installs Debian's prometheus")
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, a_host, b_host, mon = (lab.host(name, inet) for name in ("ctl", "a", "b", "mon"))
    json_logs = ["--log-format", "json"]
    control = start_control(
        ctl, tmp_path / "control",
        extra_args=["--metrics-listen", f"{ctl.ip}:{METRICS_PORT}", *json_logs],
    )  # fmt: skip
    a = start_node(tmp_path, a_host, "a",
                   ["--metrics-listen", f"{a_host.ip}:{METRICS_PORT}", *json_logs])  # fmt: skip
    b = start_node(tmp_path, b_host, "b", ["--metrics-listen", f"{b_host.ip}:{METRICS_PORT}"])
    ia, ib = f"{a_host.ip}:{METRICS_PORT}", f"{b_host.ip}:{METRICS_PORT}"
    jobs = {"control": [f"{ctl.ip}:{METRICS_PORT}"], "weftd": [ia, ib]}

    with running_prometheus(mon, tmp_path / "prometheus", jobs, scrape_interval_s=1.0) as prom:
        moved(prom, {"sum(up)": 3}, "all three targets scraped")
        assert prom.values("weft_control_nodes_online")["weft_control_nodes_online"] == 0

        # Joining: registrations, streams, map pushes (each node learns the other).
        join(control, [a, b])
        print(f"mesh after {wait_mesh([a, b], timeout_s=10):.2f} s")
        joined = moved(
            prom,
            {
                'weft_control_registrations_total{outcome="authorized"}': 2,
                "weft_control_nodes_online": 2,
                "weft_control_map_streams": 2,
                "sum(weft_control_map_pushes_total)": 3,
                "weft_control_map_push_latency_seconds_count": 3,
                "sum(weft_control_db_transaction_seconds_count)": 1,
                'sum(weftd_handshakes_total{event="completed"})': 2,
                'sum(weftd_handshakes_total{event="initiated"})': 1,
            },
            "the join in the server's and the nodes' metrics",
        )
        print("after the join:", joined)

        # Direct traffic: iperf3 from a to b over the tailnet.
        b_ip = b.ip4()
        tx_direct = weftd_metric("weftd_bytes_total", ia, direction="tx", path="direct")
        rx_direct = weftd_metric("weftd_bytes_total", ib, direction="rx", path="direct")
        tx_packets = weftd_metric("weftd_packets_total", ia, direction="tx", path="direct")
        rx_packets = weftd_metric("weftd_packets_total", ib, direction="rx", path="direct")
        before = prom.values(tx_direct, rx_direct, tx_packets, rx_packets)
        b.host.popen(["iperf3", "-s", "-1", "-B", b_ip],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        b.host.wait_listening(5201, proto="tcp")
        out = a.host.run(["iperf3", "-c", b_ip, "-t", str(IPERF_SECONDS), "-J"], timeout=60)
        sent = json.loads(out.stdout)["end"]["sum_sent"]["bytes"]
        assert sent > 1_000_000, sent
        direct = moved(
            prom,
            {
                tx_direct: (before[tx_direct] or 0) + sent,
                rx_direct: (before[rx_direct] or 0) + sent,
                tx_packets: (before[tx_packets] or 0) + sent / 65536,
                rx_packets: (before[rx_packets] or 0) + sent / 65536,
            },
            "iperf3's bytes in weftd_bytes_total on the direct path",
        )
        print(f"iperf3 sent {sent} bytes; direct path:", direct)
        relay_tx = weftd_metric("weftd_bytes_total", ia, direction="tx", path="relay")
        assert prom.values(relay_tx)[relay_tx] == 0  # nothing went through the relay

        # No direct path any more: the same traffic goes through the relay.
        lab.block_udp(a_host, b_host)
        poll_until(lambda: a.status()["peers"][0]["path"] == "relay", timeout_s=10,
                   what="a's path to b through the relay")  # fmt: skip
        poll_until(lambda: pings(a, b_ip, count=5), timeout_s=10, what="pings through the relay")
        relayed = moved(
            prom,
            {
                relay_tx: 5 * 84,  # five pings at least, sealed
                weftd_metric("weftd_bytes_total", ib, direction="rx", path="relay"): 5 * 84,
                weftd_metric("weftd_packets_total", ia, direction="tx", path="relay"): 5,
                weftd_metric("weftd_path_changes_total", ia, to="relay"): 1,
                weftd_metric("weftd_relay_connected", ia, region="default"): 1,
                weftd_metric("weftd_relay_client_packets_total", ia, direction="tx"): 5,
                "weft_relay_clients": 2,
                "weft_relay_forwarded_packets_total": 5,
                "weft_relay_forwarded_bytes_total": 5 * 84,
            },
            "pings through the relay in the nodes' and the relay's metrics",
        )
        print("through the relay:", relayed)
        drops = prom.query(f'weftd_drops_total{{instance="{ia}"}}')[
            f'weftd_drops_total{{instance="{ia}"}}'
        ]
        assert {s["metric"]["reason"] for s in drops} >= {"filtered", "replay_or_auth", "no_peer"}

    # The same metrics through the local API, without any listener.
    text = a.weft("metrics").stdout
    assert 'weftd_bytes_total{direction="tx",path="relay"}' in text
    assert "# TYPE weftd_handshakes_total counter" in text
    # JSON lines from the server and from a; b kept the text format.
    assert json_lines(control.log(), "weft-control") > 3
    assert json_lines(a.log(), "weftd a") > 3
    assert not b.log().lstrip().startswith("{")


def test_weft_metrics_needs_no_listener(lab: Lab, tmp_path: Path) -> None:
    """`weft metrics` works with metrics off, and weftd with --metrics-listen on a taken
    port stops with a one-line error."""
    inet = lab.segment("inet", "198.18.0.0/24")
    host = lab.host("a", inet)
    node: Node = start_node(tmp_path, host, "a")
    assert "weftd_peers 0.0" in node.weft("metrics").stdout
    host.popen(["python3", "-c", "import socket,time; s=socket.socket(); "
                f"s.bind(('{host.ip}', {METRICS_PORT})); s.listen(); time.sleep(60)"])  # fmt: skip
    host.wait_listening(METRICS_PORT, proto="tcp")
    argv = [*node.argv(), "--metrics-listen", f"{host.ip}:{METRICS_PORT}"]
    argv[argv.index("--socket") + 1] = str(tmp_path / "second.sock")
    argv[argv.index("--tun") + 1] = "weft1"
    argv[argv.index("--state-dir") + 1] = str(tmp_path / "second")
    r = host.run([*argv, "--port", "41642"], check=False, timeout=30)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"weftd: cannot listen on --metrics-listen {host.ip}:{METRICS_PORT}: Address already in use"
    ), r.stderr
