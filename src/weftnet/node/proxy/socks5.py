"""A SOCKS5 server (RFC 1928, RFC 1929 username/password) into the tailnet: CONNECT,
and UDP ASSOCIATE (RFC 1928 section 7: a loopback UDP relay whose datagrams leave from
this node's tailnet address and a port of their own, replies relayed back while the TCP
control connection lives). The wire constants and address codecs are socksio's
(sans-I/O; its state machine is the client's, so the server side reads the few
fixed-layout messages itself)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Callable
from typing import Any

from socksio.socks5 import SOCKS5AType, SOCKS5AuthMethod, SOCKS5Command, SOCKS5ReplyCode
from socksio.utils import AddressType, decode_address

from weftnet.asyncwait import wait_within
from weftnet.node.proxy.auth import Credentials
from weftnet.node.proxy.resolve import Dialer, NotInTailnet, splice

log = logging.getLogger("weftd.socks5")

HANDSHAKE_TIMEOUT_S = 30.0
VERSION = b"\x05"
AUTH_VERSION = b"\x01"  # RFC 1929's subnegotiation


Addr = tuple[str, int]


class UdpAssociations:
    """Tailnet source ports of UDP ASSOCIATE relays: datagrams from the stack to one of
    them go to its relay (the rest to incoming forwarding)."""

    def __init__(self, net: Any, my_addresses: Callable[[], list[str]]) -> None:
        self.net = net
        self.my_addresses = my_addresses
        self.by_port: dict[int, _UdpRelay] = {}

    def claim(self, relay: _UdpRelay) -> int:
        while True:
            port = 49152 + secrets.randbelow(16384)
            if port not in self.by_port:
                self.by_port[port] = relay
                return port

    def release(self, port: int) -> None:
        self.by_port.pop(port, None)

    def datagram(self, payload: bytes, src: Addr, dst: Addr) -> bool:
        """A datagram from the tailnet; False: not for an association."""
        relay = self.by_port.get(dst[1])
        if relay is None:
            return False
        relay.reply(payload, src)
        return True


class _UdpRelay(asyncio.DatagramProtocol):
    def __init__(self, server: Socks5Server, client_ip: str) -> None:
        self.server = server
        self.client_ip = client_ip
        self.client: Any = None  # the client's UDP address, from its first datagram
        self.transport: Any = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr[0] != self.client_ip or len(data) < 10 or data[2] != 0:
            return  # another sender, or a fragment: dropped (RFC 1928 lets us)
        atype = data[3:4]
        if atype == SOCKS5AType.IPV4_ADDRESS.value:
            host, off = decode_address(AddressType.IPV4, data[4:8]), 8
        elif atype == SOCKS5AType.IPV6_ADDRESS.value:
            host, off = decode_address(AddressType.IPV6, data[4:20]), 20
        elif atype == SOCKS5AType.DOMAIN_NAME.value:
            n = data[4]
            host, off = decode_address(AddressType.DN, data[5 : 5 + n]), 5 + n
        else:
            return
        if len(data) < off + 2:
            return
        port = int.from_bytes(data[off : off + 2], "big")
        self.client = addr
        assoc = self.server.udp
        assert assoc is not None
        try:
            ip = self.server.dialer.addresses(host)[0]
        except (NotInTailnet, IndexError):
            self.server.refused += 1
            return
        version = ipaddress.ip_address(ip).version
        mine = [a for a in assoc.my_addresses() if ipaddress.ip_address(a).version == version]
        if not mine:
            return
        assoc.net.send_udp(data[off + 2 :], (mine[0], self.port), (ip, port))

    def reply(self, payload: bytes, src: Addr) -> None:
        if self.client is None or self.transport is None:
            return
        ip = ipaddress.ip_address(src[0])
        atype = SOCKS5AType.IPV4_ADDRESS if ip.version == 4 else SOCKS5AType.IPV6_ADDRESS
        head = b"\x00\x00\x00" + atype.value + ip.packed + src[1].to_bytes(2, "big")
        self.transport.sendto(head + payload, self.client)


class Socks5Server:
    def __init__(
        self,
        dialer: Dialer,
        credentials: Credentials | None = None,
        udp: UdpAssociations | None = None,
    ) -> None:
        self.dialer = dialer
        self.credentials = credentials
        self.udp = udp  # None: UDP ASSOCIATE is not offered
        self.connections = 0  # handled, for status
        self.refused = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target = await wait_within(self._negotiate(reader, writer), HANDSHAKE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError) as e:
            log.debug("SOCKS5 handshake failed: %s", e)
            writer.close()
            return
        if target is None:
            writer.close()
            return
        if target == "udp":
            await self._associate(reader, writer)
            return
        assert isinstance(target, tuple)
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

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A UDP relay on the address the client reached us at, for as long as the TCP
        connection stays open."""
        assert self.udp is not None
        local_ip = writer.get_extra_info("sockname")[0]
        client_ip = writer.get_extra_info("peername")[0]
        relay = _UdpRelay(self, client_ip)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(local_ip, 0))
        relay.port = self.udp.claim(relay)
        try:
            bound = transport.get_extra_info("sockname")
            writer.write(_reply(SOCKS5ReplyCode.SUCCEEDED, bound[0], bound[1]))
            await writer.drain()
            while await reader.read(4096):
                pass  # the association lives as long as this connection
        except (ConnectionError, OSError):
            pass
        finally:
            self.udp.release(relay.port)
            transport.close()
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, code: SOCKS5ReplyCode) -> None:
        try:
            writer.write(_reply(code))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    async def _negotiate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int] | str | None:
        """The greeting, authentication and request; (host, port) to CONNECT to, "udp"
        for UDP ASSOCIATE, or None after an error reply."""
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
        if bytes([cmd]) == SOCKS5Command.UDP_ASSOCIATE.value and self.udp is not None:
            return "udp"
        if bytes([cmd]) != SOCKS5Command.CONNECT.value:
            writer.write(_reply(SOCKS5ReplyCode.COMMAND_NOT_SUPPORTED))
            await writer.drain()
            return None
        return host, port


def _reply(code: SOCKS5ReplyCode, bound: str = "0.0.0.0", port: int = 0) -> bytes:
    ip = ipaddress.ip_address(bound)
    atype = SOCKS5AType.IPV4_ADDRESS if ip.version == 4 else SOCKS5AType.IPV6_ADDRESS
    return VERSION + code.value + b"\x00" + atype.value + ip.packed + port.to_bytes(2, "big")
