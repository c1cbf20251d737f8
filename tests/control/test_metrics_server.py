"""The coordination server's metrics endpoint (``--metrics-listen``), over 127.0.0.1.

Fake nodes register (one with a bad key), hold map streams and send packets through the
embedded relay with the real RelayClient; every scrape is parsed with
prometheus_client's own parser, so the text format itself is checked too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from weftlab.control import FakeNode, serve_in_thread
from weftnet import tailcfg
from weftnet.control.server.app import ControlServer, ServeError
from weftnet.control.server.metrics import registration_outcome

from .conftest import Control, options_for_test
from .test_relay_embedded import client, first_map, joined, until
from .test_relay_standalone import relay_argv, wait_region

pytestmark = pytest.mark.anyio


@dataclass
class MetricsControl(Control):
    metrics_url: str = ""


@pytest.fixture
def metrics_control(tmp_path: Path) -> Iterator[MetricsControl]:
    data_dir = tmp_path / "data"
    options = options_for_test(data_dir, metrics_listen=("127.0.0.1", 0))
    with serve_in_thread(options) as server:
        yield MetricsControl(
            server.url, server.api_key, data_dir, "", f"http://127.0.0.1:{server.metrics_port}"
        )


Samples = dict[tuple[str, tuple], float]


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    r = await http.get(url + "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape_until(
    http: httpx.AsyncClient, url: str, condition: Callable[[Samples], bool], what: str
) -> Samples:
    """Scrape every 50 ms until ``condition(samples)`` holds (at most 5 s)."""
    for _ in range(100):
        samples = await scrape(http, url)
        if condition(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within 5 s")


async def test_metrics_follow_registrations_streams_pushes_and_relay_traffic(
    http: httpx.AsyncClient, metrics_control: MetricsControl
) -> None:
    url = metrics_control.metrics_url
    before = await scrape(http, url)
    assert value(before, "weft_control_nodes_online") == 0
    assert value(before, "weft_control_registrations_total", outcome="authorized") == 0
    assert value(before, "weft_relay_clients") == 0

    a, b = await joined(http, metrics_control, "a"), await joined(http, metrics_control, "b")
    refused = await FakeNode(metrics_control.url, http, "c").register("weftkey-nonsense")
    assert refused.error_kind == tailcfg.ERROR_BAD_REQUEST
    [region] = (await first_map(a)).relay_map or []
    async with contextlib.AsyncExitStack() as streams:
        sa = await streams.enter_async_context(a.map_stream())
        await sa.next()  # a's full map, before b is online
        sb = await streams.enter_async_context(b.map_stream())
        await sb.next()
        # b's stream coming online is a change: a gets a delta holding it (the frame
        # counts once written: poll).
        await scrape_until(
            http, url, lambda s: value(s, "weft_control_map_pushes_total", kind="delta") >= 1,
            "a delta pushed",
        )  # fmt: skip
        a_in: list[tuple[bytes, bytes]] = []
        async with client(a, region) as ca, client(b, region, a_in) as cb:
            assert await ca.wait_connected(5) and await cb.wait_connected(5), ca.last_error
            for i in range(10):
                ca.send(bytes(b.node.public_key), b"x" * 100 + bytes([i]))
            ca.send(bytes(FakeNode(metrics_control.url, http).node.public_key), b"nobody")
            await until(lambda: len(a_in) == 10, 5, "10 packets through the relay")
            during = await scrape(http, url)
        gone = await scrape_until(
            http, url, lambda s: value(s, "weft_relay_clients") == 0, "relay clients gone"
        )

    assert value(during, "weft_control_nodes") == 2
    assert value(during, "weft_control_nodes_online") == 2
    assert value(during, "weft_control_map_streams") == 2
    assert value(during, "weft_control_registrations_total", outcome="authorized") == 2
    assert value(during, "weft_control_registrations_total", outcome="bad_request") == 1
    assert value(during, "weft_control_map_pushes_total", kind="full") >= 2
    assert value(during, "weft_control_map_pushes_total", kind="delta") >= 1
    pushes = value(during, "weft_control_map_pushes_total", kind="full") + value(
        during, "weft_control_map_pushes_total", kind="delta"
    )
    assert value(during, "weft_control_map_push_latency_seconds_count") == pushes
    assert 0 < value(during, "weft_control_map_push_latency_seconds_sum") < pushes * 5
    assert value(during, "weft_control_db_transaction_seconds_count", mode="write") >= 2
    assert value(during, "weft_control_db_transaction_seconds_count", mode="read") >= 1
    assert value(during, "weft_relay_clients") == 2
    assert value(during, "weft_relay_forwarded_packets_total") == 10
    assert value(during, "weft_relay_forwarded_bytes_total") == 10 * 101
    assert value(during, "weft_relay_received_packets_total") == 11
    assert value(during, "weft_relay_drops_total", reason="no_peer") == 1
    assert value(during, "weft_relay_drops_total", reason="queue_full") == 0
    assert value(during, "weft_relay_queue_bytes") >= 0
    # Clients gone: the counters keep what they counted (counters never go down).
    assert value(gone, "weft_relay_clients") == 0
    assert value(gone, "weft_relay_forwarded_packets_total") == 10
    assert value(gone, "weft_relay_drops_total", reason="no_peer") == 1


async def test_the_listener_answers_only_get_metrics(
    http: httpx.AsyncClient, metrics_control: MetricsControl
) -> None:
    url = metrics_control.metrics_url
    assert (await http.get(url + "/nope")).status_code == 404
    assert (await http.post(url + "/metrics")).status_code == 405
    head = await http.head(url + "/metrics")
    assert head.status_code == 200 and head.content == b""
    # Metrics are not on the API's port.
    assert (await http.get(metrics_control.url + "/metrics")).status_code == 404


def test_a_taken_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    first = ControlServer(options_for_test(tmp_path / "one", metrics_listen=("127.0.0.1", 0)))
    first.open()
    try:
        taken = ("127.0.0.1", first.metrics_port or 0)
        second = ControlServer(options_for_test(tmp_path / "two", metrics_listen=taken))
        with pytest.raises(ServeError, match=r"cannot listen on --metrics-listen 127\.0\.0\.1:"):
            second.open()
        second.close()
    finally:
        first.close()


@pytest.mark.parametrize(
    ("answer", "followup", "outcome"),
    [
        (tailcfg.RegisterResponse(), False, "authorized"),
        (tailcfg.RegisterResponse(machine_authorized=False, auth_url="http://x/register/c"),
         False, "login_url"),
        (tailcfg.RegisterResponse(machine_authorized=False, auth_url="http://x/register/c"),
         True, "waiting"),
        (tailcfg.RegisterResponse(machine_authorized=False, node_key_expired=True), False,
         "logged_out"),
        (tailcfg.RegisterResponse(machine_authorized=False, error="no", error_kind="expired"),
         False, "expired"),
    ],
)  # fmt: skip
def test_registration_outcomes(
    answer: tailcfg.RegisterResponse, followup: bool, outcome: str
) -> None:
    assert registration_outcome(answer, followup) == outcome


async def test_a_standalone_relay_serves_its_metrics(
    http: httpx.AsyncClient, metrics_control: MetricsControl, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    argv = relay_argv(metrics_control, tmp_path, "eu", "--stun-port", "0",
                      "--metrics-listen", f"127.0.0.1:{port}", "--log-format", "json")  # fmt: skip
    log = tmp_path / "relay.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        await wait_region(metrics_control, "eu", proc)
        a = await joined(http, metrics_control, "a")
        eu = next(r for r in (await first_map(a)).relay_map or [] if r.name == "eu")
        async with client(a, eu) as ca:
            assert await ca.wait_connected(5), ca.last_error
            ca.send(bytes(FakeNode(metrics_control.url, http).node.public_key), b"nobody")
            samples = await scrape_until(
                http, url, lambda s: value(s, "weft_relay_drops_total", reason="no_peer") == 1,
                "the drop in the standalone relay's metrics",
            )  # fmt: skip
        assert value(samples, "weft_relay_clients") == 1
        assert value(samples, "weft_relay_received_packets_total") == 1
        assert "weft_control_nodes" not in {name for name, _ in samples}  # a relay only
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["message"] for line in lines), lines
