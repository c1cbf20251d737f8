"""Random loss on a lab host's underlay: nftables ``numgen random`` drops of UDP (the
tunnel's WireGuard and disco packets), both ways, counted.

    drop_udp_randomly(host, one_in=50)   # 2%
    ...
    dropped_udp(host)                    # (UDP packets seen, dropped) so far
    stop_dropping_udp(host)
"""

from __future__ import annotations

import json

from weftlab.netlab import Host

TABLE = "weftlabloss"


def drop_udp_randomly(host: Host, one_in: int = 50) -> None:
    """Drop one UDP packet in ``one_in`` (at random) that ``host`` receives or sends on
    its underlay (loopback is left alone: the proxies' clients talk TCP over it)."""
    udp = 'iifname != "lo" meta l4proto udp'
    rules = f"{udp} counter; {udp} numgen random mod {one_in} == 0 counter drop"
    out_rules = rules.replace("iifname", "oifname")
    host.run(["nft", "-f", "-"], input=f"""
        table inet {TABLE} {{
            chain input {{ type filter hook input priority -10; {rules}; }}
            chain output {{ type filter hook output priority -10; {out_rules}; }}
        }}
    """)  # fmt: skip


def dropped_udp(host: Host) -> tuple[int, int]:
    """(UDP packets seen, dropped) so far by ``drop_udp_randomly``'s rules, both ways."""
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
