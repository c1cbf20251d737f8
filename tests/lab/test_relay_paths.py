"""Issue 4 end to end: nodes that cannot reach each other directly talk through the relay."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from weftlab.control import Control, start_control
from weftlab.netlab import Lab, poll_until
from weftlab.tailnet import CONTROL_PORT, Node, join, start_node

pytestmark = pytest.mark.lab

MARKER = "5eedf00d5eedf00d5eedf00d5eedf00d"  # ping payload pattern, 16 bytes


def blocked_pair(lab: Lab, tmp: Path) -> tuple[Control, Node, Node]:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, a_host, b_host = lab.host("ctl", inet), lab.host("a", inet), lab.host("b", inet)
    lab.block_udp(a_host, b_host)  # no direct path, in either direction
    control = start_control(ctl, tmp / "control")
    a, b = start_node(tmp, a_host, "a"), start_node(tmp, b_host, "b")
    join(control, [a, b])
    return control, a, b


def peer_status(n: Node) -> dict:  # type: ignore[type-arg]
    return n.status()["peers"][0]  # type: ignore[no-any-return]


def wait_ping(a: Node, ip: str, timeout_s: float) -> None:
    poll_until(
        lambda: a.host.run(["ping", "-c", "1", "-W", "1", ip], check=False).returncode == 0,
        timeout_s=timeout_s,
        what=f"a ping from {a.host.name} to {ip}",
    )


SNIFF_TCP = r"""
import socket, sys, time
port, out, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.settimeout(0.2)
data = bytearray()
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        pkt = s.recv(65535)
    except TimeoutError:
        continue
    ihl = (pkt[0] & 15) * 4
    if pkt[9] != 6:
        continue
    sport, dport = int.from_bytes(pkt[ihl:ihl+2], "big"), int.from_bytes(pkt[ihl+2:ihl+4], "big")
    if port in (sport, dport):
        doff = (pkt[ihl + 12] >> 4) * 4
        data += pkt[ihl + doff:]
open(out, "wb").write(bytes(data))
"""


def test_blocked_udp_goes_through_the_relay_which_sees_only_ciphertext(
    lab: Lab, tmp_path: Path
) -> None:
    control, a, b = blocked_pair(lab, tmp_path)
    b_ip = b.ip4()
    wait_ping(a, b_ip, timeout_s=10)
    st = peer_status(a)
    assert st["path"] == "relay" and st["relay"] == "default", st
    assert a.status()["home_relay"] == "default"
    assert st["home_relay"] == "default"  # b reported its home; the map told a
    r = a.weft("ping", "-c", "2", b_ip, check=False)
    assert r.returncode == 1 and "direct connection not established" in r.stderr
    assert r.stdout.count(f"pong from b ({b_ip}) via relay default in") == 2, r.stdout

    capture = tmp_path / "relay.bin"
    sniffer = control.host.popen(
        [sys.executable, "-c", SNIFF_TCP, str(CONTROL_PORT), str(capture), "4"]
    )
    r = a.host.run(
        ["ping", "-c", "10", "-i", "0.2", "-s", "200", "-p", MARKER, b_ip], check=False, timeout=30
    )
    assert r.returncode == 0, r.stdout
    sniffer.wait(timeout=30)
    relayed = capture.read_bytes()
    assert len(relayed) > 10 * 200, "the pings did not cross the relay"
    assert bytes.fromhex(MARKER) not in relayed  # the relay carries WireGuard ciphertext only

    b.host.popen(["iperf3", "-s", "-1"])
    b.host.wait_listening(5201, proto="tcp")
    out = a.host.run(["iperf3", "-c", b_ip, "-t", "4", "-J"], check=False, timeout=60)
    result = json.loads(out.stdout)
    assert "error" not in result, result.get("error")
    assert all(i["sum"]["bytes"] > 0 for i in result["intervals"])
    print(
        f"iperf3 through the relay: {result['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s"
    )
    assert peer_status(a)["path"] == "relay"


def test_traffic_resumes_within_5_s_of_a_relay_restart(lab: Lab, tmp_path: Path) -> None:
    control, a, b = blocked_pair(lab, tmp_path)
    b_ip = b.ip4()
    wait_ping(a, b_ip, timeout_s=10)
    lines: list[str] = []

    def pinger() -> None:
        r = a.host.run(["ping", "-D", "-c", "200", "-i", "0.1", "-W", "1", b_ip], check=False,
                       timeout=60)  # fmt: skip
        lines.extend(r.stdout.splitlines())

    t = threading.Thread(target=pinger)
    t.start()
    time.sleep(2)
    control.kill()
    time.sleep(1)
    control.start()
    back = time.time()
    t.join()
    replies = [
        float(m.group(1)) for ln in lines if (m := re.match(r"\[(\d+\.\d+)\] \d+ bytes", ln))
    ]
    after = [ts for ts in replies if ts >= back]
    assert after, "no reply after the relay came back"
    print(f"first reply {after[0] - back:.2f} s after the relay was back")
    assert after[0] - back <= 5.0


def test_blocking_udp_mid_stream_moves_to_the_relay_and_back(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, a_host, b_host = lab.host("ctl", inet), lab.host("a", inet), lab.host("b", inet)
    control = start_control(ctl, tmp_path / "control")
    a, b = start_node(tmp_path, a_host, "a"), start_node(tmp_path, b_host, "b")
    join(control, [a, b])
    b_ip = b.ip4()
    wait_ping(a, b_ip, timeout_s=10)
    poll_until(lambda: peer_status(a)["path"] == "direct", timeout_s=5, what="direct")
    b.host.popen(["iperf3", "-s", "-1"])
    b.host.wait_listening(5201, proto="tcp")
    out: dict[str, str] = {}

    def stream() -> None:
        r = a.host.run(["iperf3", "-c", b_ip, "-t", "20", "-J", "-b", "50M"], check=False,
                       timeout=60)  # fmt: skip
        out["json"] = r.stdout

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(2)
    blocked_at = time.monotonic()
    lab.block_udp(a_host, b_host)
    poll_until(lambda: peer_status(a)["path"] == "relay", timeout_s=5, what="the relay path")
    to_relay = time.monotonic() - blocked_at
    time.sleep(3)
    unblocked_at = time.monotonic()
    lab.unblock_udp(a_host, b_host)
    poll_until(lambda: peer_status(a)["path"] == "direct", timeout_s=15, what="direct again")
    back = time.monotonic() - unblocked_at
    t.join()
    result = json.loads(out["json"])
    assert "error" not in result, result.get("error")  # the TCP stream never broke
    print(f"to the relay {to_relay:.2f} s after blocking; direct {back:.2f} s after unblocking")
    assert to_relay <= 5.0


def test_roaming_keeps_the_tcp_stream_and_goes_direct_again(lab: Lab, tmp_path: Path) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    ctl, a_host = lab.host("ctl", inet), lab.host("a", inet)
    home = lab.nat_router("home", upstream=inet, kind="easy")
    cafe = lab.nat_router("cafe", upstream=inet, kind="easy")
    m_host = lab.host("m", home.lan)
    control = start_control(ctl, tmp_path / "control")
    a, m = start_node(tmp_path, a_host, "a"), start_node(tmp_path, m_host, "m")
    join(control, [a, m])
    a_ip = a.ip4()
    wait_ping(m, a_ip, timeout_s=10)
    poll_until(lambda: peer_status(m)["path"] == "direct", timeout_s=5, what="direct")
    a_host.popen(["iperf3", "-s", "-1"])
    a_host.wait_listening(5201, proto="tcp")
    out: dict[str, str] = {}
    lines: list[str] = []

    def stream() -> None:
        r = m_host.run(["iperf3", "-c", a_ip, "-t", "12", "-J", "-b", "20M"], check=False,
                       timeout=60)  # fmt: skip
        out["json"] = r.stdout

    def pinger() -> None:
        r = m_host.run(["ping", "-D", "-c", "100", "-i", "0.1", "-W", "1", a_ip], check=False,
                       timeout=60)  # fmt: skip
        lines.extend(r.stdout.splitlines())

    threads = [threading.Thread(target=stream), threading.Thread(target=pinger)]
    for t in threads:
        t.start()
    time.sleep(3)
    old_endpoint = peer_status(a)["endpoint"]
    m_host.move_to(cafe.lan)  # new address, new NAT, new public address
    moved = time.time()
    poll_until(
        lambda: peer_status(a)["path"] == "direct" and peer_status(a)["endpoint"] != old_endpoint,
        timeout_s=10,
        what="a direct path to m's new address",
    )
    for t in threads:
        t.join()
    result = json.loads(out["json"])
    assert "error" not in result, result.get("error")  # the TCP stream survived the move
    replies = [
        float(mt.group(1)) for ln in lines if (mt := re.match(r"\[(\d+\.\d+)\] \d+ bytes", ln))
    ]
    after = [ts for ts in replies if ts >= moved]
    assert after, "no reply after the move"
    print(f"first reply {after[0] - moved:.2f} s after the move; a now sees m at "
          f"{peer_status(a)['endpoint']} (was {old_endpoint})")  # fmt: skip
    assert after[0] - moved <= 3.0
    assert peer_status(m)["path"] == "direct"
