"""weft: the command-line client of the local weftd.

It finds the daemon through ``--socket`` or the WEFT_SOCKET environment variable
(default /run/weft/weftd.sock) and does nothing but ask it and print the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from weftnet.node.localapi import request

DEFAULT_SOCKET = "/run/weft/weftd.sock"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def print_status(st: dict[str, Any]) -> None:
    print(f"interface {st['interface']}  public key {st['public_key']}  port {st['listen_port']}")
    rows = [("PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX")]
    for p in st["peers"]:
        rows.append(
            (
                p["public_key"][:12] + "...",
                p["endpoint"] or "-",
                ",".join(p["allowed_ips"]),
                _ago(p["last_handshake"]),
                _bytes(p["rx_bytes"]),
                _bytes(p["tx_bytes"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="weft", description="weftnet client")
    p.add_argument("--socket", default=os.environ.get("WEFT_SOCKET", DEFAULT_SOCKET))
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="show the peers of the local weftd")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        answer = request(args.socket, "status")
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"weft: weftd is not running (no socket at {args.socket})", file=sys.stderr)
        sys.exit(1)
    except PermissionError:
        print(f"weft: permission denied on {args.socket}: run as root", file=sys.stderr)
        sys.exit(1)
    if not answer.get("ok"):
        print(f"weft: {answer.get('error', 'error')}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(answer["result"], indent=2))
    else:
        print_status(answer["result"])


if __name__ == "__main__":
    main()
