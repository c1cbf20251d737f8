"""WireGuard peer tooling: keys agree with wg(8), and two wireguard-go peers talk."""

from __future__ import annotations

import base64
import stat
import subprocess
from pathlib import Path

import pytest

from weftlab.netlab import Host, Lab, poll_until
from weftlab.wgpeers import (
    Peer,
    PeerStartError,
    generate_keypair,
    generate_preshared_key,
    latest_handshakes,
    link_exists,
    overlay_cidrs,
    overlay_ips,
    public_key,
    start_weftd,
    start_wireguard_go,
    write_wg_quick_config,
)
from weftnet.node.wgconfig import parse_wg_config

pytestmark = pytest.mark.lab

PORT = 51820


def wg(*args: str, stdin: str) -> str:
    return subprocess.run(
        ["wg", *args], input=stdin, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_keys_agree_with_wg() -> None:
    keys = generate_keypair()
    assert wg("pubkey", stdin=keys.private) == keys.public

    from_wg = wg("genkey", stdin="")
    assert public_key(from_wg) == wg("pubkey", stdin=from_wg)


def test_wg_quick_config_is_private_and_parses(tmp_path: Path) -> None:
    keys, other = generate_keypair(), generate_keypair()
    psk = generate_preshared_key()
    peer = Peer(
        other.public,
        allowed_ips=overlay_cidrs(2),
        endpoint="198.18.0.2:51820",
        preshared_key=psk,
        persistent_keepalive=25,
    )

    path = write_wg_quick_config(
        tmp_path / "wg0.conf", keys.private, overlay_cidrs(1), PORT, 1420, [peer]
    )

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = parse_wg_config(path.read_text())
    assert config.interface.listen_port == PORT
    assert config.interface.mtu == 1420
    assert [str(a) for a in config.interface.addresses] == overlay_cidrs(1)
    [parsed] = config.peers
    assert parsed.endpoint == ("198.18.0.2", 51820)
    assert parsed.persistent_keepalive_s == 25
    assert base64.b64encode(parsed.public_key).decode() == other.public
    assert [str(n) for n in parsed.allowed_ips] == overlay_cidrs(2)


def pings(host: Host, ip: str) -> bool:
    return host.run(["ping", "-c", "1", "-W", "1", ip], check=False).returncode == 0


def wait_pings(host: Host, ip: str) -> None:
    # The first ping may be spent on the handshake; keep trying for a few seconds.
    poll_until(lambda: pings(host, ip), timeout_s=10, what=f"{host.name} to ping {ip}")


def test_two_wireguard_go_peers_ping_over_ipv4_and_ipv6(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a, b = lab.host("a", inet), lab.host("b", inet)
    keys_a, keys_b = generate_keypair(), generate_keypair()
    psk = generate_preshared_key()
    wg_a = start_wireguard_go(
        a, "wg0", keys_a.private, PORT, overlay_cidrs(1),
        [Peer(keys_b.public, overlay_cidrs(2), f"{b.ip}:{PORT}", psk)],
    )  # fmt: skip
    start_wireguard_go(
        b, "wg0", keys_b.private, PORT, overlay_cidrs(2),
        [Peer(keys_a.public, overlay_cidrs(1), f"{a.ip}:{PORT}", psk)],
    )  # fmt: skip
    a4, a6 = overlay_ips(1)
    b4, b6 = overlay_ips(2)

    wait_pings(a, b4)
    assert pings(a, b6)
    assert pings(b, a4)
    assert pings(b, a6)
    assert latest_handshakes(a, "wg0")[keys_b.public] > 0

    assert wg_a.stop() == 0
    assert not link_exists(a, "wg0")
    assert not pings(b, a4)


def test_wireguard_go_peer_behind_nat_is_learned_from_its_handshake(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    public = lab.host("public", inet)
    nat = lab.nat_router("nat", upstream=inet, kind="hard")
    inside = lab.host("inside", nat.lan)
    keys_pub, keys_in = generate_keypair(), generate_keypair()
    # The public peer knows no endpoint for the inside one: it learns it from packets.
    start_wireguard_go(
        public, "wg0", keys_pub.private, PORT, overlay_cidrs(1),
        [Peer(keys_in.public, overlay_cidrs(2))],
    )  # fmt: skip
    start_wireguard_go(
        inside, "wg0", keys_in.private, PORT, overlay_cidrs(2),
        [Peer(keys_pub.public, overlay_cidrs(1), f"{public.ip}:{PORT}", persistent_keepalive=1)],
    )  # fmt: skip

    wait_pings(public, overlay_ips(2)[0])
    endpoints = public.run(["wg", "show", "wg0", "endpoints"]).stdout.split()
    assert endpoints[0] == keys_in.public
    assert endpoints[1].split(":")[0] == nat.wan_ip


def test_start_weftd_reports_an_early_exit(lab: Lab) -> None:
    inet = lab.segment("inet", "198.18.0.0/24")
    a = lab.host("a", inet)
    config = write_wg_quick_config(
        a.workdir / "wg0.conf", generate_keypair().private, overlay_cidrs(1), PORT, 1420, []
    )

    # An option no weftd knows makes it exit at once, whatever else it can do.
    with pytest.raises(PeerStartError, match="weftd exited with code"):
        start_weftd(a, "wg0", config, ["--no-such-option-exists"])
