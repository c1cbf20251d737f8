"""The port-mapping client's I/O: the default gateway, probes and mappings.

Every exchange goes only to the default gateway (PCP and NAT-PMP on UDP 5351, the IGD's
HTTP URLs, which must name the gateway) and to the SSDP group on the LAN (multicast TTL
2, answers from anyone but the gateway ignored), each with a bounded timeout. The wire
formats are the pure modules ``pcp``, ``natpmp`` and ``upnp``; this module sends them.
Errors are ``OSError`` (the network) and ``ProtocolError`` (what came back), plus
``TimeoutError`` when the gateway did not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from weftnet.endpoint import Endpoint
from weftnet.portmap import natpmp, pcp, upnp
from weftnet.portmap.errors import Refused
from weftnet.wireguard.errors import ProtocolError

PROBE_TIMEOUT_S = 1.0  # how long a probe waits for the gateway's PCP/NAT-PMP/SSDP answers
REQUEST_TIMEOUT_S = 2.0  # one mapping request (retried inside) or one HTTP call
FIRST_RETRY_S = 0.25  # RFC 6886 section 3.1: resend after 250 ms, doubling
MAX_HTTP_BYTES = upnp.MAX_XML_BYTES
DESCRIPTION = "weftnet"  # the UPnP mapping's description, shown by the router

T = TypeVar("T")


@dataclass
class Offers:
    """What the gateway answered to a probe."""

    gateway: str
    local_ip: str
    port: int = pcp.PORT  # PCP and NAT-PMP (another only in tests)
    pcp: bool = False
    nat_pmp: bool = False
    upnp: upnp.Service | None = None
    external_ip: str | None = None  # NAT-PMP's or UPnP's answer

    def protocols(self) -> list[str]:
        out = ["pcp"] if self.pcp else []
        out += ["nat-pmp"] if self.nat_pmp else []
        return out + (["upnp"] if self.upnp is not None else [])


@dataclass
class Mapping:
    protocol: str  # "pcp" | "nat-pmp" | "upnp"
    external: Endpoint
    internal_port: int
    lifetime_s: int
    granted_at: float  # monotonic
    nonce: bytes = b""  # PCP's mapping nonce (renewals and deletion repeat it)
    service: upnp.Service | None = field(default=None, repr=False)

    @property
    def renew_at(self) -> float:
        """Half-life, as Tailscale and RFC 6886 section 3.3 suggest."""
        return self.granted_at + self.lifetime_s / 2

    @property
    def expires_at(self) -> float:
        return self.granted_at + self.lifetime_s


def default_gateway() -> tuple[str, str] | None:
    """(the IPv4 default gateway, our address towards it), or None without one."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            gw = route.get_attr("RTA_GATEWAY")
            if gw:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.connect((gw, pcp.PORT))  # no packet: just the kernel's source choice
                    return gw, s.getsockname()[0]
    return None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue(64)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((data, addr[:2]))


async def udp_exchange(
    gateway: tuple[str, int], request: bytes, parse: Callable[[bytes], T], timeout_s: float
) -> T:
    """Send ``request`` to the gateway (port 5351), resending with backoff, until an
    answer from there parses; the parser's ProtocolError for a definite refusal (a
    result code) ends it at once, garbage is skipped. TimeoutError without an answer."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Datagrams, remote_addr=gateway, family=socket.AF_INET
    )
    try:
        async with asyncio.timeout(timeout_s):
            wait = FIRST_RETRY_S
            while True:
                transport.sendto(request)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        while True:
                            data, src = await proto.queue.get()
                            if src != gateway:
                                continue
                            try:
                                return parse(data)
                            except (Refused, pcp.UnsupportedVersion):
                                raise
                            except ProtocolError:
                                continue  # not an answer to this request
                wait *= 2
    finally:
        transport.close()


async def probe(
    gateway: str,
    local_ip: str,
    timeout_s: float = PROBE_TIMEOUT_S,
    port: int = pcp.PORT,
    ssdp: bool = True,
) -> Offers:
    """Ask the gateway, all at once, whether it speaks PCP, NAT-PMP and UPnP IGD (the
    last by SSDP on the LAN; ``ssdp=False`` skips it)."""
    offers = Offers(gateway, local_ip, port)
    where = (gateway, port)

    # A refusal (a result code) still says the protocol is spoken; "unsupported
    # version" says it is not.
    async def try_pcp() -> None:
        with contextlib.suppress(TimeoutError, ProtocolError, OSError):
            with contextlib.suppress(pcp.PcpError):
                await udp_exchange(where, pcp.announce_request(local_ip), pcp.parse_response,
                                   timeout_s)  # fmt: skip
            offers.pcp = True

    async def try_natpmp() -> None:
        with contextlib.suppress(TimeoutError, ProtocolError, OSError):
            try:
                answer = await udp_exchange(
                    where, natpmp.external_address_request(), natpmp.parse_address_response,
                    timeout_s,
                )  # fmt: skip
                offers.external_ip = offers.external_ip or answer.external_ip
            except natpmp.NatPmpError as e:
                if e.code == natpmp.RESULT_UNSUPPORTED_VERSION:
                    return
            offers.nat_pmp = True

    async def try_upnp() -> None:
        with contextlib.suppress(TimeoutError, ProtocolError, OSError, httpx.HTTPError):
            offers.upnp = await discover_igd(gateway, local_ip, timeout_s)

    await asyncio.gather(try_pcp(), try_natpmp(), *([try_upnp()] if ssdp else []))
    return offers


async def discover_igd(gateway: str, local_ip: str, timeout_s: float) -> upnp.Service:
    """SSDP on the LAN, then the gateway's device description: its WAN service."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)  # the LAN only
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
    sock.bind((local_ip, 0))
    transport, proto = await loop.create_datagram_endpoint(_Datagrams, sock=sock)
    try:
        async with asyncio.timeout(timeout_s):
            transport.sendto(upnp.m_search(), (upnp.SSDP_GROUP, upnp.SSDP_PORT))
            while True:
                data, src = await proto.queue.get()
                if src[0] != gateway:
                    continue
                with contextlib.suppress(ProtocolError):
                    location = upnp.parse_ssdp_response(data, gateway)
                    break
    finally:
        transport.close()
    status, body = await _http("GET", location, {}, b"")
    if status != 200:
        raise ProtocolError(f"UPnP: HTTP {status} for the device description")
    return upnp.parse_description(body, location, gateway)


async def _http(method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """One HTTP exchange with the gateway, the answer capped at MAX_HTTP_BYTES."""
    async with (
        httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False) as http,
        http.stream(method, url, headers=headers, content=body) as resp,
    ):
        chunks, size = [], 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > MAX_HTTP_BYTES:
                raise ProtocolError(f"UPnP: answer from {url} is over {MAX_HTTP_BYTES} bytes")
            chunks.append(chunk)
        return resp.status_code, b"".join(chunks)


async def soap(service: upnp.Service, action: str, args: dict[str, str]) -> dict[str, str]:
    headers, body = upnp.soap_request(service, action, args)
    status, answer = await _http("POST", service.control_url, headers, body)
    return upnp.parse_soap_response(status, answer, action)


async def create(
    offers: Offers, internal_port: int, lease_s: int, now: float, previous: Mapping | None = None
) -> Mapping:
    """Map UDP ``internal_port`` with the best protocol the gateway offers (PCP, NAT-PMP,
    UPnP), asking for the previous external port if there was one (a renewal)."""
    attempts = [
        ("PCP", offers.pcp, _map_pcp),
        ("NAT-PMP", offers.nat_pmp, _map_natpmp),
        ("UPnP", offers.upnp is not None, _map_upnp),
    ]
    errors = []
    for name, offered, attempt in attempts:
        if not offered:
            continue
        try:
            return await attempt(offers, internal_port, lease_s, now, previous)
        except (TimeoutError, ProtocolError, OSError, httpx.HTTPError) as e:
            errors.append(f"{name}: {str(e) or type(e).__name__}")
    if not errors:
        raise ProtocolError(f"the gateway {offers.gateway} offers no port mapping")
    raise ProtocolError("; ".join(errors))


def _wanted_port(internal_port: int, previous: Mapping | None) -> int:
    return previous.external.port if previous is not None else internal_port


async def _map_pcp(
    offers: Offers, internal_port: int, lease_s: int, now: float, previous: Mapping | None
) -> Mapping:
    nonce = previous.nonce if previous is not None and previous.nonce else os.urandom(12)
    want = _wanted_port(internal_port, previous)
    r = await udp_exchange(
        (offers.gateway, offers.port),
        pcp.map_request(offers.local_ip, nonce, internal_port, want, lease_s),
        _pcp_map_answer(nonce),
        REQUEST_TIMEOUT_S,
    )
    external = Endpoint(r.external_ip, r.external_port)
    return Mapping("pcp", external, internal_port, r.lifetime_s, now, nonce=nonce)


async def _map_natpmp(
    offers: Offers, internal_port: int, lease_s: int, now: float, previous: Mapping | None
) -> Mapping:
    where = (offers.gateway, offers.port)
    address = offers.external_ip
    if address is None:
        answer = await udp_exchange(where, natpmp.external_address_request(),
                                    natpmp.parse_address_response, REQUEST_TIMEOUT_S)  # fmt: skip
        address = answer.external_ip
    want = _wanted_port(internal_port, previous)
    m = await udp_exchange(where, natpmp.map_request(internal_port, want, lease_s),
                           natpmp.parse_map_response, REQUEST_TIMEOUT_S)  # fmt: skip
    return Mapping("nat-pmp", Endpoint(address, m.external_port), internal_port, m.lifetime_s, now)


async def _map_upnp(
    offers: Offers, internal_port: int, lease_s: int, now: float, previous: Mapping | None
) -> Mapping:
    """A renewal repeats AddPortMapping for the port we have. A new mapping on an IGDv2
    uses AddAnyPortMapping (the router picks a free port when ours is taken, say by
    another node behind it); on IGDv1 a taken port (error 718) is retried once at a
    random port."""
    service = offers.upnp
    assert service is not None
    ip = upnp.parse_external_ip(await soap(service, "GetExternalIPAddress", {}))
    want = _wanted_port(internal_port, previous)

    def args(port: int) -> dict[str, str]:
        return upnp.add_port_mapping_args(port, offers.local_ip, internal_port, lease_s,
                                          DESCRIPTION)  # fmt: skip

    if previous is None and service.service_type.endswith(":2"):
        answer = await soap(service, "AddAnyPortMapping", args(want))
        port = upnp.parse_reserved_port(answer)
    else:
        port = want
        try:
            await soap(service, "AddPortMapping", args(port))
        except upnp.UpnpFault as e:
            if e.code != upnp.CONFLICT_IN_MAPPING_ENTRY or previous is not None:
                raise
            port = 1024 + int.from_bytes(os.urandom(2), "big") % (65536 - 1024)
            await soap(service, "AddPortMapping", args(port))
    return Mapping("upnp", Endpoint(ip, port), internal_port, lease_s, now, service=service)


def _pcp_map_answer(nonce: bytes) -> Callable[[bytes], pcp.Response]:
    def parse(data: bytes) -> pcp.Response:
        r = pcp.parse_response(data)
        if r.opcode != pcp.OP_MAP or r.nonce != nonce:
            raise ProtocolError("PCP: an answer to another request")
        return r

    return parse


async def delete(offers: Offers, mapping: Mapping) -> None:
    """Remove ``mapping`` from the gateway (lifetime 0, or DeletePortMapping)."""
    port = mapping.internal_port
    if mapping.protocol == "pcp":
        request = pcp.map_request(offers.local_ip, mapping.nonce, port, 0, 0)
        await udp_exchange((offers.gateway, offers.port), request, _pcp_map_answer(mapping.nonce),
                           REQUEST_TIMEOUT_S)  # fmt: skip
    elif mapping.protocol == "nat-pmp":
        await udp_exchange((offers.gateway, offers.port), natpmp.map_request(port, 0, 0),
                           natpmp.parse_map_response, REQUEST_TIMEOUT_S)  # fmt: skip
    elif mapping.service is not None:
        await soap(mapping.service, "DeletePortMapping", upnp.port_args(mapping.external.port))
