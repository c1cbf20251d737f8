"""The network-namespace lab: reachability, NAT behaviour and cleanup."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from weftlab.netlab import Host, Lab, list_netns, poll_until

pytestmark = pytest.mark.lab

ECHO_PORT = 7000
CLIENT_PORT = 40000

# Answers every datagram with "ip:port" of the sender it saw.
UDP_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
"""

# From one socket bound to argv[1], asks each "ip:port" in argv[2:] what it saw;
# prints a JSON list of the answers (null for no answer within 2 s).
UDP_ASK = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(2.0)
seen = []
for target in sys.argv[2:]:
    ip, port = target.split(":")
    s.sendto(b"who am i", (ip, int(port)))
    try:
        seen.append(s.recvfrom(2048)[0].decode())
    except TimeoutError:
        seen.append(None)
print(json.dumps(seen))
"""

# Prints every datagram it receives on argv[1], one per line.
UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(2048)
    print(data.decode(), peer, flush=True)
"""


def start_echo_server(host: Host) -> None:
    host.popen([sys.executable, "-c", UDP_ECHO_SERVER, str(ECHO_PORT)])
    host.wait_listening(ECHO_PORT)


def ask_mapped_addresses(host: Host, servers: list[Host], *, port: int = CLIENT_PORT) -> list:
    targets = [f"{server.ip}:{ECHO_PORT}" for server in servers]
    proc = host.run([sys.executable, "-c", UDP_ASK, str(port), *targets])
    return json.loads(proc.stdout)


def send_udp(host: Host, ip: str, port: int, payload: str) -> None:
    code = "import socket, sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[1].encode(), (sys.argv[2], int(sys.argv[3])))"
    host.run([sys.executable, "-c", code, payload, ip, str(port)])


def pings(host: Host, ip: str) -> bool:
    return host.run(["ping", "-c", "1", "-W", "1", ip], check=False).returncode == 0


def test_public_hosts_ping_each_other(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a = lab.host("a", inet)
    b = lab.host("b", inet)

    assert a.ip != b.ip
    for host in (a, b):
        assert ipaddress.ip_address(host.ip) in ipaddress.ip_network("198.18.0.0/24")
    assert pings(a, b.ip)
    assert pings(b, a.ip)
    assert "default" not in a.run(["ip", "route"]).stdout


def test_underlay_links_have_mtu_1500_and_no_ipv6(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a = lab.host("a", inet)

    link = json.loads(a.run(["ip", "-j", "addr", "show", "dev", a.ifname]).stdout)[0]
    assert link["mtu"] == 1500
    assert {info["family"] for info in link["addr_info"]} == {"inet"}


def test_easy_nat_lets_host_out_but_drops_unsolicited_inbound(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    public = lab.host("public", inet)
    nat = lab.nat_router("nat", upstream=inet, kind="easy")
    inside = lab.host("inside", nat.lan)
    assert ipaddress.ip_address(inside.ip) in nat.lan.network
    assert inside.public_ip == nat.wan_ip

    assert pings(inside, public.ip)

    # Even knowing the LAN's prefix, the outside cannot reach in.
    public.run(["ip", "route", "add", str(nat.lan.network), "via", nat.wan_ip])
    assert not pings(public, inside.ip)

    # A datagram to the router's WAN address, where no mapping exists, is dropped
    # there: the router counts it, and the listener inside never sees it.
    sink = inside.popen(
        [sys.executable, "-c", UDP_SINK, str(CLIENT_PORT)], stdout=subprocess.PIPE, text=True
    )
    inside.wait_listening(CLIENT_PORT)
    dropped_before = nat.dropped_inbound()
    send_udp(public, nat.wan_ip, CLIENT_PORT, "unsolicited")
    poll_until(
        lambda: nat.dropped_inbound() > dropped_before,
        timeout_s=5,
        what="the router to drop the unsolicited datagram",
    )
    sink.terminate()
    assert sink.communicate(timeout=5)[0] == ""

    # Traffic the inside started gets its answers.
    start_echo_server(public)
    assert ask_mapped_addresses(inside, [public]) == [f"{nat.wan_ip}:{CLIENT_PORT}"]


@pytest.mark.parametrize("kind", ["easy", "hard"])
def test_nat_mapping_per_destination(lab: Lab, kind: str) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    server1 = lab.host("server1", inet)
    server2 = lab.host("server2", inet)
    nat = lab.nat_router("nat", upstream=inet, kind=kind)  # type: ignore[arg-type]
    inside = lab.host("inside", nat.lan)
    start_echo_server(server1)
    start_echo_server(server2)

    seen = ask_mapped_addresses(inside, [server1, server2])

    assert None not in seen
    ips = {answer.split(":")[0] for answer in seen}
    ports = [int(answer.split(":")[1]) for answer in seen]
    assert ips == {nat.wan_ip}
    if kind == "easy":
        # Endpoint-independent and port-preserving: one mapping for every destination.
        assert ports == [CLIENT_PORT, CLIENT_PORT]
    else:
        # Endpoint-dependent: each destination gets its own mapping.
        assert ports[0] != ports[1]


def test_double_nat_reaches_the_internet(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    server = lab.host("server", inet)
    outer = lab.nat_router("outer", upstream=inet, kind="easy")
    inner = lab.nat_router("inner", upstream=outer.lan, kind="hard")
    deep = lab.host("deep", inner.lan)
    start_echo_server(server)

    [seen] = ask_mapped_addresses(deep, [server])

    assert deep.public_ip == outer.wan_ip
    assert seen.split(":")[0] == outer.wan_ip


def test_block_udp_drops_only_udp_until_unblocked(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a = lab.host("a", inet)
    b = lab.host("b", inet)
    start_echo_server(b)
    assert ask_mapped_addresses(a, [b]) == [f"{a.ip}:{CLIENT_PORT}"]

    lab.block_udp(a, b)
    assert ask_mapped_addresses(a, [b]) == [None]
    assert pings(a, b.ip)

    lab.unblock_udp(a, b)
    assert ask_mapped_addresses(a, [b]) == [f"{a.ip}:{CLIENT_PORT}"]


def test_move_to_gives_a_new_address_and_route(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    server = lab.host("server", inet)
    nat = lab.nat_router("nat", upstream=inet)
    roamer = lab.host("roamer", nat.lan)
    start_echo_server(server)
    assert ask_mapped_addresses(roamer, [server]) == [f"{nat.wan_ip}:{CLIENT_PORT}"]
    old_ip = roamer.ip

    roamer.move_to(inet)

    assert roamer.ip != old_ip
    assert roamer.public_ip == roamer.ip
    assert ask_mapped_addresses(roamer, [server]) == [f"{roamer.ip}:{CLIENT_PORT}"]


def test_close_after_exception_kills_processes_and_deletes_namespaces(
    lab_environment: None,
) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        inet = lab.segment("inet", "198.18.0.0/24")
        a = lab.host("a", inet)
        lab.nat_router("nat", upstream=inet, kind="hard")
        tracked = a.popen(["sleep", "600"])
        # A daemon that left the lab's process group: only found through its namespace.
        escaped_pid = int(a.run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"]).stdout)
        names = lab.netns_names
        assert set(names) <= set(list_netns())
        raise RuntimeError("boom")

    assert len(names) == 4
    assert not set(names) & set(list_netns())
    assert tracked.poll() is not None
    poll_until(lambda: not _alive(escaped_pid), timeout_s=5, what="the escaped daemon to die")


def test_cleanup_stale_removes_only_dead_runs(lab_environment: None) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    stale = f"wl{exited.pid}x0-stale"
    live = f"wl{os.getpid()}x99999-live"
    try:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "add", name], check=True)

        removed = Lab.cleanup_stale()

        assert stale in removed
        assert live not in removed
        assert stale not in list_netns()
        assert live in list_netns()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that its parent has not reaped yet counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_each_host_has_its_own_run_wireguard_and_run_weft(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a, b = lab.host("a", inet), lab.host("b", inet)

    a.run(["touch", "/var/run/wireguard/wg0.sock", "/run/weft/weftd.sock"])

    assert a.run(["ls", "/run/wireguard", "/run/weft"]).stdout.split() == [
        "/run/weft:", "weftd.sock", "/run/wireguard:", "wg0.sock",
    ]  # fmt: skip
    assert b.run(["ls", "-A", "/run/wireguard", "/run/weft"]).stdout.split() == [
        "/run/weft:", "/run/wireguard:",
    ]  # fmt: skip
    assert not os.path.exists("/run/wireguard/wg0.sock")
