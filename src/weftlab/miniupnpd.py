"""miniupnpd (Debian's miniupnpd-nftables) on a lab NAT router: port mapping for weftd.

``start_miniupnpd(router, stun)`` makes a NAT router of ``weftlab.netlab`` offer UPnP
IGD, NAT-PMP and PCP on its LAN, as many home routers do:

- miniupnpd refuses to map ports when its WAN address is private or reserved, which
  every lab address is (198.18.0.0/15 is RFC 2544 space); it then learns its public
  address by STUN instead, and maps ports if STUN shows no NAT and no filtering
  upstream. ``stun`` is a lab host running ``weftlab.stunecho`` for that.
- The router's own packets are left out of its masquerade (a ``return`` rule in
  ``weftlab_nat``), so miniupnpd's STUN test sees its ports kept.
- miniupnpd's nftables table (``inet miniupnpd``: a forward chain jumping to
  ``miniupnpd``, and the dnat/snat chains ``prerouting_miniupnpd`` and
  ``postrouting_miniupnpd``) is made first, as Debian's nft_init.sh does; and the
  router's forward filter lets in what a mapping DNATs (``ct status dnat accept``),
  which the lab's NAT otherwise drops as unsolicited.

``mapped_ports()`` reads the live mappings from the nftables DNAT chain, the one place
that says what the router really forwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weftlab.netlab import LAN_IF, WAN_IF, Host, LabError, NatRouter, poll_until

MINIUPNPD = "/usr/sbin/miniupnpd"
STUN_PORT = 3478
HTTP_PORT = 5000  # the IGD's description and SOAP control URLs
START_TIMEOUT_S = 20.0  # miniupnpd's STUN test takes up to 3 rounds of 3 s

_TABLE = """
table inet miniupnpd {
    chain forward {
        type filter hook forward priority filter - 1; policy accept;
        jump miniupnpd;
    }
    chain miniupnpd { }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd;
    }
    chain postrouting {
        type nat hook postrouting priority srcnat - 1; policy accept;
        jump postrouting_miniupnpd;
    }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
"""


def start_stun(host: Host, port: int = STUN_PORT) -> None:
    """The STUN answerer miniupnpd asks (weftlab.stunecho), on ``host``."""
    host.popen([sys.executable, "-m", "weftlab.stunecho", str(port)])
    host.wait_listening(port, proto="udp")


@dataclass
class MiniUpnpd:
    router: NatRouter
    proc: subprocess.Popen[Any]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mapped_ports(self) -> list[tuple[int, str]]:
        """(external UDP port, internal ip:port) of every live mapping."""
        proc = self.router.run(
            ["nft", "-j", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"]
        )
        out = []
        for item in json.loads(proc.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            port, target = None, None
            for expr in rule["expr"]:
                match = expr.get("match")
                if match and match.get("left", {}).get("payload", {}).get("field") == "dport":
                    port = int(match["right"])
                if "dnat" in expr:
                    target = f"{expr['dnat']['addr']}:{expr['dnat']['port']}"
            if port is not None and target is not None:
                out.append((port, target))
        return out


def start_miniupnpd(
    router: NatRouter,
    stun: Host,
    *,
    natpmp: bool = True,
    upnp: bool = True,
    min_lifetime_s: int = 2,
    stun_port: int = STUN_PORT,
) -> MiniUpnpd:
    """miniupnpd on ``router`` offering UPnP IGD and/or NAT-PMP+PCP (miniupnpd serves
    both on port 5351 or neither); LabError when the binary is missing."""
    if shutil.which(MINIUPNPD) is None:
        raise LabError(f"{MINIUPNPD} is missing: install Debian's miniupnpd-nftables")
    router.run(["nft", "-f", "-"], input=_TABLE)
    router.run(["nft", "insert", "rule", "inet", "weftlab_filter", "forward",
                "ct", "status", "dnat", "accept"])  # fmt: skip
    router.run(["nft", "insert", "rule", "ip", "weftlab_nat", "postrouting",
                "ip", "saddr", router.wan_ip, "return"])  # fmt: skip
    workdir = router.lab.workdir / router.name
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "miniupnpd.conf"
    yes_no = {True: "yes", False: "no"}
    conf.write_text(
        f"ext_ifname={WAN_IF}\n"
        f"listening_ip={LAN_IF}\n"
        f"http_port={HTTP_PORT}\n"
        f"enable_upnp={yes_no[upnp]}\n"
        f"enable_natpmp={yes_no[natpmp]}\n"  # NAT-PMP and PCP
        "secure_mode=yes\n"  # a client maps ports to itself only
        f"min_lifetime={min_lifetime_s}\n"  # PCP's shortest lease (tests renew quickly)
        "max_lifetime=86400\n"
        "ext_perform_stun=yes\n"
        f"ext_stun_host={stun.ip}\n"
        f"ext_stun_port={stun_port}\n"
        "upnp_table_name=miniupnpd\n"
        "upnp_nat_table_name=miniupnpd\n"
        "upnp_forward_chain=miniupnpd\n"
        "upnp_nat_chain=prerouting_miniupnpd\n"
        "upnp_nat_postrouting_chain=postrouting_miniupnpd\n"
        f"lease_file={workdir / 'leases'}\n"
        "uuid=5e1f0a52-7a3c-4c11-9f0e-1b9f3f5e0a01\n"
        "allow 1024-65535 198.18.0.0/15 1024-65535\n"
        "deny 0-65535 0.0.0.0/0 0-65535\n"
    )
    log_path = workdir / "miniupnpd.log"
    log = open(log_path, "w")  # noqa: SIM115 (the process holds it)
    proc = router.popen(
        [MINIUPNPD, "-f", str(conf), "-d", "-P", str(workdir / "miniupnpd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    mu = MiniUpnpd(router, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"miniupnpd on {router.name} exited: {mu.log()[-2000:]}")
        text = mu.log()
        return "Port forwarding is now enabled" in text and (
            "Listening for NAT-PMP/PCP" in text or not natpmp
        )

    poll_until(ready, timeout_s=START_TIMEOUT_S, what=f"miniupnpd on {router.name}")
    return mu
