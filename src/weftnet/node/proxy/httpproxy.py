"""An HTTP proxy into the tailnet: CONNECT host:port (any TCP), and plain HTTP requests
with an absolute URI (``GET http://peer/ HTTP/1.1``), sent on as origin-form with
``Connection: close`` (one request per proxy connection). Optional Basic
Proxy-Authorization."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from urllib.parse import urlsplit

from weftnet.asyncwait import wait_within
from weftnet.node.proxy.auth import Credentials
from weftnet.node.proxy.resolve import Dialer, NotInTailnet, splice

log = logging.getLogger("weftd.httpproxy")

MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 30.0
HOP_BY_HOP = {
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"te",
    b"trailer",
    b"upgrade",
}


class HttpProxy:
    def __init__(self, dialer: Dialer, credentials: Credentials | None = None) -> None:
        self.dialer = dialer
        self.credentials = credentials
        self.connections = 0
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await wait_within(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                TimeoutError):  # fmt: skip
            writer.close()
            return
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ", 2)
        except ValueError:
            await _answer(writer, 400, "Bad Request", "malformed request line\n")
            return
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                await _answer(writer, 400, "Bad Request", "malformed header\n")
                return
            headers.append((name.strip(), value.strip()))
        if self.credentials is not None and not self._authorized(headers):
            self.refused += 1
            await _answer(
                writer, 407, "Proxy Authentication Required", "proxy authentication required\n",
                extra=b'Proxy-Authenticate: Basic realm="weft"\r\n',
            )  # fmt: skip
            return
        if method == b"CONNECT":
            host, _, port_text = target.decode("latin-1").rpartition(":")
            try:
                port = int(port_text)
            except ValueError:
                await _answer(writer, 400, "Bad Request", "CONNECT needs host:port\n")
                return
            up = await self._dial(writer, host, port)
            if up is None:
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await splice(reader, writer, *up)
            return
        url = urlsplit(target.decode("latin-1"))
        if url.scheme != "http" or not url.hostname:
            await _answer(writer, 400, "Bad Request",
                          "only CONNECT and absolute http:// URIs are proxied\n")  # fmt: skip
            return
        up = await self._dial(writer, url.hostname, url.port or 80)
        if up is None:
            return
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        out = [method + b" " + path.encode("latin-1") + b" " + version]
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                out.append(name + b": " + value)
        out.append(b"Connection: close")
        up_r, up_w = up
        up_w.write(b"\r\n".join(out) + b"\r\n\r\n")
        await splice(reader, writer, up_r, up_w)

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        assert self.credentials is not None
        for name, value in headers:
            if name.lower() != b"proxy-authorization":
                continue
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"basic":
                continue
            try:
                decoded = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            user, sep, password = decoded.partition(b":")
            return bool(sep) and self.credentials.check(user, password)
        return False

    async def _dial(
        self, writer: asyncio.StreamWriter, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await self.dialer.connect(host, port)
        except NotInTailnet as e:
            self.refused += 1
            await _answer(writer, 403, "Forbidden", f"{e}\n")
        except ConnectionRefusedError:
            await _answer(writer, 502, "Bad Gateway", f"{host}:{port} refused the connection\n")
        except (OSError, TimeoutError) as e:
            await _answer(writer, 504, "Gateway Timeout", f"{host}:{port} unreachable: {e}\n")
        return None


async def _answer(
    writer: asyncio.StreamWriter, code: int, reason: str, body: str, extra: bytes = b""
) -> None:
    data = body.encode()
    try:
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n".encode()
            + extra
            + b"\r\n"
            + data
        )
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()
