"""weftd and Debian's wireguard-go as the two peers of a tunnel, in network namespaces."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from weftlab.netlab import Host, Lab, poll_until
from weftlab.wgpeers import (
    Peer,
    PeerProcess,
    generate_keypair,
    latest_handshakes,
    overlay_cidrs,
    overlay_ips,
    start_weftd,
    start_wireguard_go,
    write_wg_quick_config,
)
from weftnet.node.datapath import tso_max_size
from weftnet.node.localapi import request

pytestmark = pytest.mark.lab

PORT = 51820
WEFT_V4, WEFT_V6 = overlay_ips(1)
WG_V4, WG_V6 = overlay_ips(2)


@dataclass
class Tunnel:
    weft: Host
    wg: Host
    weftd: PeerProcess
    wggo: PeerProcess
    socket: str
    weft_public: str
    wg_public: str

    def status(self) -> dict:  # type: ignore[type-arg]
        answer = request(self.socket, "status")
        assert answer["ok"], answer
        return answer["result"]  # type: ignore[no-any-return]


def build(
    lab: Lab,
    tmp: Path,
    *,
    weft_behind: str | None = None,
    wg_behind: str | None = None,
    weft_knows_endpoint: bool = True,
    wg_knows_endpoint: bool = False,
    keepalive: int | None = None,
    weftd_args: tuple[str, ...] = (),
    launcher: str = "weftnet.node.main",
) -> Tunnel:
    inet = lab.segment("inet", "198.18.0.0/24")
    weft_seg = lab.nat_router("natw", upstream=inet, kind=weft_behind).lan if weft_behind else inet
    wg_seg = lab.nat_router("natg", upstream=inet, kind=wg_behind).lan if wg_behind else inet
    weft = lab.host("weft", weft_seg)
    wg = lab.host("wg", wg_seg)
    kw, kg = generate_keypair(), generate_keypair()
    sock = str(tmp / "weftd.sock")
    wg_peer = Peer(
        kw.public,
        allowed_ips=overlay_cidrs(1),
        endpoint=f"{weft.ip}:{PORT}" if wg_knows_endpoint else None,
        persistent_keepalive=keepalive if wg_behind else None,
    )
    wggo = start_wireguard_go(wg, "wg0", kg.private, PORT, overlay_cidrs(2), [wg_peer])
    cfg = write_wg_quick_config(
        tmp / "weft.conf",
        kw.private,
        overlay_cidrs(1),
        PORT,
        1420,
        [
            Peer(
                kg.public,
                allowed_ips=overlay_cidrs(2),
                endpoint=f"{wg.ip}:{PORT}" if weft_knows_endpoint else None,
                persistent_keepalive=keepalive if weft_behind else None,
            )
        ],
    )
    weftd = start_weftd(weft, "weft0", cfg, ["--socket", sock, *weftd_args], launcher=launcher)
    return Tunnel(weft, wg, weftd, wggo, sock, kw.public, kg.public)


def ping(host: Host, addr: str, count: int = 3) -> None:
    r = host.run(["ping", "-c", str(count), "-i", "0.2", "-W", "3", addr], check=False, timeout=20)
    assert r.returncode == 0, f"ping {addr} from {host.name} failed:\n{r.stdout}{r.stderr}"


def iperf(client: Host, server: Host, addr: str, seconds: int, reverse: bool = False) -> dict:  # type: ignore[type-arg]
    server.popen(["iperf3", "-s", "-1"])
    server.wait_listening(5201, proto="tcp")
    cmd = ["iperf3", "-c", addr, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    r = client.run(cmd, check=False, timeout=seconds + 30)
    result = json.loads(r.stdout)
    assert "error" not in result, result["error"]
    return result  # type: ignore[no-any-return]


def test_ping_both_ways_ipv4_and_ipv6(lab: Lab, tmp_path: Path) -> None:
    t = build(lab, tmp_path)
    ping(t.weft, WG_V4)
    ping(t.weft, WG_V6)
    ping(t.wg, WEFT_V4)
    ping(t.wg, WEFT_V6)
    peer = t.status()["peers"][0]
    assert peer["handshakes"] >= 1 and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0


@pytest.mark.parametrize("reverse", [False, True], ids=["weftd-sends", "wireguard-go-sends"])
def test_iperf3_tcp_stream(lab: Lab, tmp_path: Path, reverse: bool) -> None:
    t = build(lab, tmp_path)
    ping(t.weft, WG_V4, count=1)
    result = iperf(t.weft, t.wg, WG_V4, seconds=3, reverse=reverse)
    bps = result["end"]["sum_received"]["bits_per_second"]
    assert bps > 50e6, f"only {bps / 1e6:.0f} Mbit/s"
    # TCP super-packets the size of one UDP GSO send (docs/dataplane.md)
    link = t.weft.run(["ip", "-d", "link", "show", "weft0"]).stdout
    assert f"gso_max_size {tso_max_size(1420)} " in link, link
    assert all(i["sum"]["bytes"] > 0 for i in result["intervals"])


def test_weftd_behind_nat_is_reached_after_it_speaks_first(lab: Lab, tmp_path: Path) -> None:
    t = build(lab, tmp_path, weft_behind="easy", keepalive=1)
    # wireguard-go has no endpoint for weftd: it learns one from weftd's keepalive.
    poll_until(
        lambda: latest_handshakes(t.wg, "wg0").get(t.weft_public, 0) > 0,
        timeout_s=10,
        what="weftd's handshake through the NAT",
    )
    ping(t.wg, WEFT_V4)
    ping(t.wg, WEFT_V6)


def test_wireguard_go_behind_nat_is_reached_after_it_speaks_first(lab: Lab, tmp_path: Path) -> None:
    t = build(
        lab,
        tmp_path,
        wg_behind="easy",
        weft_knows_endpoint=False,
        wg_knows_endpoint=True,
        keepalive=1,
    )
    # weftd has no endpoint: it must learn the NAT's mapping from authenticated packets.
    poll_until(
        lambda: t.status()["peers"][0]["endpoint"] is not None,
        timeout_s=10,
        what="weftd to learn wireguard-go's endpoint",
    )
    endpoint = t.status()["peers"][0]["endpoint"]
    assert endpoint.startswith("198.18.0."), endpoint  # the NAT router's public side
    ping(t.weft, WG_V4)
    ping(t.weft, WG_V6)


SNIFF = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.settimeout(15)
while True:
    pkt = s.recv(65535)
    ihl = (pkt[0] & 15) * 4
    if pkt[9] != 17:
        continue
    dport = struct.unpack(">H", pkt[ihl + 2 : ihl + 4])[0]
    body = pkt[ihl + 8 :]
    if dport == int(sys.argv[1]) and body[:1] == b"\x04" and len(body) > 32:
        open(sys.argv[2], "wb").write(body)
        break
"""

SEND_AND_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(open(sys.argv[3], "rb").read(), (sys.argv[1], int(sys.argv[2])))
try:
    print("REPLY", s.recvfrom(2048))
except TimeoutError:
    print("NO REPLY")
"""


def test_replayed_data_and_bad_mac1_initiation_are_dropped_without_reply(
    lab: Lab, tmp_path: Path
) -> None:
    t = build(lab, tmp_path, wg_knows_endpoint=True)
    captured = tmp_path / "data.bin"
    sniffer = t.weft.popen([sys.executable, "-c", SNIFF, str(PORT), str(captured)])
    ping(t.wg, WEFT_V4, count=2)
    sniffer.wait(timeout=15)
    assert captured.exists() and captured.stat().st_size > 32
    before = t.status()
    # The captured packet was accepted once; sent again (from a new port) it is a replay.
    out = t.wg.run([sys.executable, "-c", SEND_AND_LISTEN, t.weft.ip, str(PORT), str(captured)])
    assert out.stdout.strip() == "NO REPLY"
    after = t.status()
    assert after["counters"]["drop_replay_or_auth"] == before["counters"]["drop_replay_or_auth"] + 1
    assert after["counters"]["rx_packets"] == before["counters"]["rx_packets"]
    assert after["peers"][0]["endpoint"] == before["peers"][0]["endpoint"]  # no roaming

    bogus = tmp_path / "init.bin"
    bogus.write_bytes(b"\x01\x00\x00\x00" + os.urandom(144))
    out = t.wg.run([sys.executable, "-c", SEND_AND_LISTEN, t.weft.ip, str(PORT), str(bogus)])
    assert out.stdout.strip() == "NO REPLY"
    assert t.status()["counters"]["drop_handshake"].get("bad mac1") == 1
    ping(t.weft, WG_V4, count=1)  # the tunnel is unharmed


def test_rekey_does_not_stop_the_stream(lab: Lab, tmp_path: Path) -> None:
    # weftd initiates and rekeys every REKEY_TIMEOUT (5 s) instead of every 120 s.
    t = build(
        lab,
        tmp_path,
        weftd_args=("--rekey-after-seconds", "1"),
        launcher="weftlab.weftd_config",  # shortened timers from outside the product
    )
    ping(t.weft, WG_V4, count=1)
    first = t.status()["peers"][0]["handshakes"]
    result = iperf(t.weft, t.wg, WG_V4, seconds=12)
    handshakes = t.status()["peers"][0]["handshakes"]
    # Initiations are at least REKEY_TIMEOUT (5 s) apart: one or two rekeys fit in 12 s.
    assert handshakes >= first + 1, "no rekey in 12 s"
    intervals = [i["sum"]["bytes"] for i in result["intervals"]]
    assert len(intervals) >= 11 and min(intervals) > 0, intervals
