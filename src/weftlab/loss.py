"""Random loss on the lab's underlay: nftables ``numgen random`` drops of UDP (the
tunnel's WireGuard and disco packets) arriving at hosts, counted.

    drop_udp_randomly([a, b], one_in=50)   # 2% of what a and b receive: both ways
    ...
    dropped_udp(a)                         # (UDP packets seen, dropped) so far
    stop_dropping_udp(a)

weftd sends with UDP GSO: one skb carries up to 64 datagrams through the sender's
netfilter hooks and across the veth pair, so a rule would drop them in bursts.
``gso_max_segs 1`` on each host's underlay interface makes the kernel split them before
the wire, and the rule sits on the receiving side, where each datagram is one packet.
"""

from __future__ import annotations

import json

from weftlab.netlab import HOST_IF, Host

TABLE = "weftlabloss"


def drop_udp_randomly(hosts: list[Host], one_in: int = 50) -> None:
    """Drop one UDP datagram in ``one_in`` (at random) that each of ``hosts`` receives on
    its underlay; each sends datagram by datagram from now on (no GSO on the wire)."""
    udp = f'iifname "{HOST_IF}" meta l4proto udp'
    rules = f"{udp} counter; {udp} numgen random mod {one_in} == 0 counter drop"
    for host in hosts:
        host.run(["ip", "link", "set", "dev", HOST_IF, "gso_max_segs", "1"])
        host.run(["nft", "-f", "-"], input=f"""
            table inet {TABLE} {{
                chain input {{ type filter hook input priority -10; {rules}; }}
            }}
        """)  # fmt: skip


def dropped_udp(host: Host) -> tuple[int, int]:
    """(UDP datagrams that reached ``host``, dropped of them) so far."""
    out = host.run(["nft", "-j", "list", "table", "inet", TABLE]).stdout
    seen = dropped = 0
    for item in json.loads(out)["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        packets = sum(int(e["counter"]["packets"]) for e in exprs if "counter" in e)
        if any("drop" in e for e in exprs):
            dropped += packets
        else:
            seen += packets
    return seen, dropped


def stop_dropping_udp(host: Host) -> None:
    host.run(["nft", "delete", "table", "inet", TABLE])
