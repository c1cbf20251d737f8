"""A SOCKS5 server (RFC 1928, RFC 1929 username/password) into the tailnet: CONNECT
only. The wire constants and address codecs are socksio's (sans-I/O; its state machine
is the client's, so the server side reads the few fixed-layout messages itself)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from socksio.socks5 import SOCKS5AType, SOCKS5AuthMethod, SOCKS5Command, SOCKS5ReplyCode
from socksio.utils import AddressType, decode_address

from weftnet.node.proxy.auth import Credentials
from weftnet.node.proxy.resolve import Dialer, NotInTailnet, splice

log = logging.getLogger("weftd.socks5")

HANDSHAKE_TIMEOUT_S = 30.0
VERSION = b"\x05"
AUTH_VERSION = b"\x01"  # RFC 1929's subnegotiation


class Socks5Server:
    def __init__(self, dialer: Dialer, credentials: Credentials | None = None) -> None:
        self.dialer = dialer
        self.credentials = credentials
        self.connections = 0  # handled, for status
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target = await asyncio.wait_for(self._negotiate(reader, writer), HANDSHAKE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError) as e:
            log.debug("SOCKS5 handshake failed: %s", e)
            writer.close()
            return
        if target is None:
            writer.close()
            return
        host, port = target
        try:
            up_r, up_w = await self.dialer.connect(host, port)
        except NotInTailnet as e:
            self.refused += 1
            log.info("SOCKS5: refused %s:%d: %s", host, port, e)
            await self._reply(writer, SOCKS5ReplyCode.CONNECTION_NOT_ALLOWED_BY_RULESET)
            return
        except ConnectionRefusedError:
            await self._reply(writer, SOCKS5ReplyCode.CONNECTION_REFUSED)
            return
        except (OSError, TimeoutError) as e:
            log.debug("SOCKS5: %s:%d unreachable: %s", host, port, e)
            await self._reply(writer, SOCKS5ReplyCode.HOST_UNREACHABLE)
            return
        writer.write(_reply(SOCKS5ReplyCode.SUCCEEDED))
        await splice(reader, writer, up_r, up_w)

    async def _reply(self, writer: asyncio.StreamWriter, code: SOCKS5ReplyCode) -> None:
        try:
            writer.write(_reply(code))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    async def _negotiate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int] | None:
        """The greeting, authentication and request; (host, port) to CONNECT to, or None
        after an error reply."""
        ver, n = await reader.readexactly(2)
        if bytes([ver]) != VERSION:
            raise ValueError("not SOCKS5")
        methods = await reader.readexactly(n)
        want = (
            SOCKS5AuthMethod.USERNAME_PASSWORD
            if self.credentials is not None
            else SOCKS5AuthMethod.NO_AUTH_REQUIRED
        )
        if want.value[0] not in methods:
            writer.write(VERSION + SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS.value)
            await writer.drain()
            return None
        writer.write(VERSION + want.value)
        if self.credentials is not None:
            sub, ulen = await reader.readexactly(2)
            user = await reader.readexactly(ulen)
            (plen,) = await reader.readexactly(1)
            password = await reader.readexactly(plen)
            if bytes([sub]) != AUTH_VERSION or not self.credentials.check(user, password):
                writer.write(AUTH_VERSION + b"\x01")
                await writer.drain()
                self.refused += 1
                return None
            writer.write(AUTH_VERSION + b"\x00")
        ver, cmd, _rsv, atype = await reader.readexactly(4)
        if bytes([ver]) != VERSION:
            raise ValueError("not SOCKS5")
        a = bytes([atype])
        if a == SOCKS5AType.IPV4_ADDRESS.value:
            host = decode_address(AddressType.IPV4, await reader.readexactly(4))
        elif a == SOCKS5AType.IPV6_ADDRESS.value:
            host = decode_address(AddressType.IPV6, await reader.readexactly(16))
        elif a == SOCKS5AType.DOMAIN_NAME.value:
            (dlen,) = await reader.readexactly(1)
            host = decode_address(AddressType.DN, await reader.readexactly(dlen))
        else:
            writer.write(_reply(SOCKS5ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED))
            await writer.drain()
            return None
        port = int.from_bytes(await reader.readexactly(2), "big")
        if bytes([cmd]) != SOCKS5Command.CONNECT.value:
            writer.write(_reply(SOCKS5ReplyCode.COMMAND_NOT_SUPPORTED))
            await writer.drain()
            return None
        return host, port


def _reply(code: SOCKS5ReplyCode, bound: str = "0.0.0.0", port: int = 0) -> bytes:
    ip = ipaddress.ip_address(bound)
    atype = SOCKS5AType.IPV4_ADDRESS if ip.version == 4 else SOCKS5AType.IPV6_ADDRESS
    return VERSION + code.value + b"\x00" + atype.value + ip.packed + port.to_bytes(2, "big")
