"""The local API: a unix socket for root (and weftd's own user) speaking one JSON
object per line.

Request ``{"cmd": "status"}``, answer ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "..."}``. ``COMMANDS`` is the one table of requests, for both
modes (tailnet and ``--wg-config``): a daemon answers a command with its method
``api_<cmd>``, and one without that method says the command is not available in its
mode. docs/node.md lists every request and answer. Connections from a uid other than 0
and weftd's own are refused (SO_PEERCRED), and the socket file is mode 0600: a weftd run
by a user in userspace mode answers that user. Secrets never appear in answers: peers
are named by their public keys only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from weftnet.endpoint import format_endpoint
from weftnet.node.config import SYSTEM_SOCKET
from weftnet.node.config import client_socket as client_socket
from weftnet.node.config import default_socket as default_socket

log = logging.getLogger("weftd.localapi")

MAX_REQUEST_BYTES = 64 * 1024  # a request line longer than this is refused
DEFAULT_SOCKET = SYSTEM_SOCKET  # where root's weftd listens and root's weft looks


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

COMMANDS = {
    "status": "this node, its peers and its health (both modes)",
    "up": "log in if needed and follow the map (tailnet mode)",
    "set": "change route flags or accept_dns without logging in again (tailnet mode)",
    "exit_node_list": "the peers that offer an exit route (tailnet mode)",
    "down": "stop following the map, keep the login (tailnet mode)",
    "logout": "forget the login and rotate the node key (tailnet mode)",
    "ip": "this node's overlay addresses (tailnet mode)",
    "ping": "a disco ping to a peer (tailnet mode)",
    "netcheck": "UDP, public address, NAT kind, relay latencies (tailnet mode)",
    "whois": "the node and user behind an overlay address (tailnet mode)",
    "dns_status": "OS DNS mode and settings, the server's DNS config, the resolver (tailnet mode)",
    "metrics": "every metric in the Prometheus text format (both modes; docs/metrics.md)",
}


def make_handler(daemon: object) -> Handler:
    """Dispatch requests by COMMANDS to ``daemon.api_<cmd>(request)``."""
    mode = "tailnet mode" if hasattr(daemon, "api_up") else "--wg-config"

    async def handle(req: dict[str, Any]) -> dict[str, Any]:
        cmd = req["cmd"]
        method = getattr(daemon, f"api_{cmd}", None) if cmd in COMMANDS else None
        if method is not None:
            answer: dict[str, Any] = await method(req)
            return answer
        if cmd in COMMANDS:
            return {"ok": False, "error": f"{cmd!r} is not available with {mode}"}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    return handle


def wg_status(engine: Any) -> dict[str, Any]:
    """Status of a plain WireGuard interface (``weftd --wg-config``)."""
    dev = engine.device
    now = time.monotonic()
    wall = time.time()
    peers = []
    for peer in dev.peers.values():
        last = peer.last_handshake_at
        peers.append(
            {
                "public_key": base64.b64encode(peer.public_key).decode(),
                "endpoint": format_endpoint(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in dev.allowed_ips.entries(peer)],
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "last_handshake": None if last is None else wall - (now - last),
                "handshakes": peer.handshakes_completed,
                "persistent_keepalive": peer.persistent_keepalive_s,
            }
        )
    return {
        "interface": engine.ifname,
        "public_key": base64.b64encode(dev.identity.public_key).decode(),
        "listen_port": engine.listen_port,
        "peers": peers,
        "counters": counters(engine),
    }


def counters(engine: Any) -> dict[str, Any]:
    c = engine.dp.counters
    flt = engine.dp.filter
    return {
        "rx_packets": c.rx_packets,
        "tx_packets": c.tx_packets,
        "drop_replay_or_auth": c.drop_replay_or_auth,
        "drop_unknown_index": c.drop_unknown_index,
        "drop_bad_source": c.drop_bad_source,
        "drop_no_peer": c.drop_no_peer,
        "drop_malformed": c.drop_malformed,
        "drop_filtered": c.drop_filtered,  # the packet filter's, below (tailnet mode only)
        "drop_service_ip": c.drop_service_ip,
        "drop_not_local": c.drop_not_local,  # to none of our addresses or served routes  # from a peer to the resolver (docs/dns.md)
        "drop_handshake": dict(c.drop_handshake),
        "cookie_replies_sent": engine.dp.device.cookie_replies_sent,  # answers under load
        "filter": None
        if flt is None
        else {
            "denied": flt.drop_denied,
            "malformed": flt.drop_malformed,
            "tracked_flows": flt.tracked_flows,
        },
    }


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    if not hasattr(socket, "SO_PEERCRED"):  # not Linux: the socket's mode 0600 guards it
        return _my_uid()
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _my_uid() -> int:
    geteuid = getattr(os, "geteuid", None)
    return geteuid() if geteuid is not None else 0


async def serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    # A user's own directory (userspace mode) is theirs alone; /run/weft stays 0755.
    os.makedirs(os.path.dirname(path) or ".", mode=0o755 if _my_uid() == 0 else 0o700,
                exist_ok=True)  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _peer_uid(writer) not in (0, _my_uid()):
                answer: dict[str, Any] = {
                    "ok": False,
                    "error": "the local API is for root and the user running weftd only",
                }
            else:
                line = await reader.readline()
                answer = await _dispatch(line, handler)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(handle, path, limit=MAX_REQUEST_BYTES)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _dispatch(line: bytes, handler: Handler) -> dict[str, Any]:
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            raise ValueError
    except ValueError:
        return {"ok": False, "error": 'bad request: send {"cmd": "status"}'}
    try:
        return await handler(req)
    except Exception as e:  # a bad request must never take the daemon down
        log.exception("local API request %r failed", req.get("cmd"))
        return {"ok": False, "error": f"internal error: {e}"}


async def cleanup(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def request(path: str, cmd: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
    """Client side: one request, one answer (used by the CLI and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer
