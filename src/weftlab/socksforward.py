"""A TCP port forwarder through a SOCKS5 proxy, for tools without SOCKS support
(iperf3): every connection to ``127.0.0.1:LISTEN`` becomes a SOCKS5 CONNECT to
``TARGET`` through ``PROXY`` (socksio's client state machine), then bytes both ways.

    python -m weftlab.socksforward LISTEN_PORT PROXY_HOST:PORT TARGET_HOST:PORT
"""

from __future__ import annotations

import asyncio
import sys

from socksio.socks5 import (
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Connection,
    SOCKS5Reply,
    SOCKS5ReplyCode,
)

from weftnet.node.proxy.listen import parse_hostport
from weftnet.node.proxy.resolve import splice


async def socks5_connect(
    proxy: tuple[str, int], target: tuple[str, int]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to ``target`` through the SOCKS5 proxy at ``proxy`` (no auth)."""
    r, w = await asyncio.open_connection(*proxy)
    conn = SOCKS5Connection()
    conn.send(SOCKS5AuthMethodsRequest([SOCKS5AuthMethod.NO_AUTH_REQUIRED]))
    w.write(conn.data_to_send())
    conn.receive_data(await r.readexactly(2))
    conn.send(SOCKS5CommandRequest.from_address(SOCKS5Command.CONNECT, target))
    w.write(conn.data_to_send())
    head = await r.readexactly(4)
    rest = await r.readexactly({1: 4, 4: 16}.get(head[3], 0) + 2)
    reply = conn.receive_data(head + rest)
    assert isinstance(reply, SOCKS5Reply)
    if reply.reply_code != SOCKS5ReplyCode.SUCCEEDED:
        w.close()
        raise ConnectionError(f"SOCKS5 CONNECT {target}: {reply.reply_code.name}")
    return r, w


async def main(listen_port: int, proxy: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await socks5_connect(proxy, target)
        except (OSError, ConnectionError) as e:
            print(f"socksforward: {e}", file=sys.stderr, flush=True)
            w.close()
            return
        await splice(r, w, up_r, up_w)

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print(f"forwarding 127.0.0.1:{listen_port} -> {target} via {proxy}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), parse_hostport(sys.argv[2]), parse_hostport(sys.argv[3])))
