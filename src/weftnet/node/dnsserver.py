"""The node's resolver on the wire: UDP and TCP on 100.100.100.100:53 and
[fd7a:115c:a1e0::53]:53, and its queries to upstream nameservers (docs/dns.md).

The decisions are weftnet.dns.resolver's; this shell reads sockets, asks the resolver,
and writes what it returns, or races the upstreams it names. The service addresses sit
on the TUN device next to the node's own (Engine.set_service_addresses) from the first
map on, so the host's own programs reach them through the kernel's local delivery; the
overlay routes take the node's own address as source (tun.configure_interface).

Who may ask (research/dns-routes.md §2.6.3, S1-S3):

* S1: only this host's own addresses (loopback, the service addresses, the node's
  overlay and underlay addresses). A LAN neighbour routing 100.100.100.100 through us
  gets nothing; its datagrams and connections are dropped and counted
  (``refused_nonlocal``). The host's addresses are listed from netlink at start and again
  (at most once a second) when an unknown source shows up.
* S2: the data plane drops decrypted packets to a service address (datapath,
  ``drop_service_ip``): a peer cannot reach our resolver through the tunnel.
* S3: UDP answers fit the client's size (the resolver truncates); TCP takes queries of
  at most ``TCP_MAX_QUERY`` bytes, ``TCP_MAX_CONNECTIONS`` connections, each closed after
  ``TCP_IDLE_S`` without a query.

Forwarding (§2.6.5): every upstream of the route is asked at once over UDP, and over
TCP as well after ``UDP_RACE_S`` without an answer; the first answer that is not
SERVFAIL or REFUSED wins. A truncated UDP answer is asked again over TCP for a TCP
client. After ``QUERY_TIMEOUT_S`` the client gets SERVFAIL. At most ``MAX_ACTIVE``
queries are forwarded at once; beyond that SERVFAIL at once. Upstream sockets follow
normal routing (no bypass mark), so a split-DNS server on the tailnet works.

The default route "." without the server's resolvers is the OS's own resolvers from
before weftd configured it: ``set_base_resolvers``, which the OS configuration calls;
until then the ``nameserver`` lines of /etc/resolv.conf read when weftd started.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from weftnet import tailcfg
from weftnet.asyncwait import wait_within
from weftnet.dns import DNS_PORT, SERVICE_ADDRESSES, SERVICE_V4
from weftnet.dns import records as dnsrecords
from weftnet.dns.resolver import (
    HEADER_LEN,
    Answer,
    Forward,
    Resolver,
    Upstream,
    is_truncated,
    parse_nameservers,
    rcode_of,
    routes_for,
)

log = logging.getLogger("weftd.dns")

RESOLV_CONF = "/etc/resolv.conf"
UDP_RACE_S = 2.0  # a UDP upstream silent this long: ask it over TCP as well (Tailscale's)
TCP_UPSTREAM_TIMEOUT_S = 5.0  # one TCP exchange with an upstream
QUERY_TIMEOUT_S = 10.0  # a forwarded query gets SERVFAIL after this (dnsQueryTimeout)
MAX_ACTIVE = 256  # forwarded queries in flight (Tailscale's maxActiveQueries)
TCP_MAX_CONNECTIONS = 64  # client connections at once
TCP_IDLE_S = 45.0  # a client connection without a query this long is closed
TCP_MAX_QUERY = 4096  # a larger query over TCP closes the connection
UDP_MAX_QUERY = 65535  # read buffer: a datagram is never larger
MAX_PENDING_CHECKS = 64  # datagrams from unknown sources waiting for the address list
LOCAL_REFRESH_S = 1.0  # the host's address list is re-read at most this often
_BAD_RCODES = (2, 5)  # SERVFAIL, REFUSED: another upstream may do better

Listen = tuple[str, int]


@dataclass
class DnsCounters:
    queries: int = 0  # from local clients
    local_answers: int = 0
    forwarded: int = 0
    servfail: int = 0
    refused_nonlocal: int = 0
    truncated: int = 0
    upstream_timeouts: int = 0


def read_base_resolvers(path: str = RESOLV_CONF) -> list[str]:
    """The nameservers of ``path`` that are not quad-100 ([] when unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_nameservers(f.read())
    except OSError:
        return []


def host_addresses() -> set[str]:
    """Every address of every interface of this host (blocking netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {
            str(ipaddress.ip_address(addr))
            for msg in ipr.get_addr()
            if (addr := msg.get_attr("IFA_ADDRESS")) or (addr := msg.get_attr("IFA_LOCAL"))
        }


class LocalAddresses:
    """Whether a source address is this host's own (S1)."""

    def __init__(self, lister: Callable[[], set[str]] = host_addresses) -> None:
        self._lister = lister
        self.known: set[str] = set()
        self._listed_at = -LOCAL_REFRESH_S
        self._refreshing: asyncio.Future[set[str]] | None = None

    def knows(self, ip: str) -> bool:
        ip = ip.split("%", 1)[0]
        if ip in self.known:
            return True
        try:
            return ipaddress.ip_address(ip).is_loopback
        except ValueError:
            return False

    async def refresh(self, force: bool = False) -> None:
        """Read the host's addresses again, unless done within LOCAL_REFRESH_S."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
            return
        if not force and time.monotonic() - self._listed_at < LOCAL_REFRESH_S:
            return
        loop = asyncio.get_running_loop()
        self._refreshing = loop.run_in_executor(None, self._lister)
        try:
            self.known = set(await asyncio.shield(self._refreshing)) | set(SERVICE_ADDRESSES)
        except Exception:
            log.exception("cannot list the host's addresses")
        finally:
            self._listed_at = time.monotonic()
            self._refreshing = None


class DnsServer:
    """The resolver of one weftd. ``apply`` on every map, ``stop`` on down and logout."""

    def __init__(
        self,
        engine: Any,
        supervisor: Any,
        listen: Sequence[Listen] | None = None,
        resolv_conf: str = RESOLV_CONF,
        local: LocalAddresses | None = None,
        serve_sockets: bool = True,
    ) -> None:
        self.engine = engine
        # False (userspace mode): no sockets, no service addresses; the resolver's table
        # answers the proxies in-process (node.proxy.resolve).
        self.serve_sockets = serve_sockets
        self.supervisor = supervisor
        self.listen = list(listen or [(ip, DNS_PORT) for ip in SERVICE_ADDRESSES])
        self.resolver = Resolver()
        self.counters = DnsCounters()
        self.local = local or LocalAddresses()
        self.bound: list[Listen] = []  # where it listens now (ports as bound)
        self.notes: list[str] = []  # health: why it does not listen somewhere
        self._base = read_base_resolvers(resolv_conf)  # before anything rewrites it
        self._config: tailcfg.DNSConfig | None = None
        self._started = False
        self._active = 0
        self._pending_checks = 0
        self._tcp_connections = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the daemon calls -------------------------------------------------------------

    def set_base_resolvers(self, servers: list[str]) -> None:
        """The OS's resolvers from before weftd configured it ("198.18.1.53",
        "[fd00::1]:53"): the default route when the server sends no resolvers of its
        own. The OS configuration calls this; service addresses are ignored."""
        self._base = [s for s in servers if s.strip() not in SERVICE_ADDRESSES]
        self.resolver.routes = routes_for(self._config, self._base)

    @property
    def base_resolvers(self) -> list[str]:
        return list(self._base)

    async def apply(
        self,
        self_node: tailcfg.Node | None,
        peers: Sequence[tailcfg.Node],
        config: tailcfg.DNSConfig | None,
    ) -> None:
        """A new map: a new name table; the first one starts the server."""
        self._config = config
        self.resolver.table = dnsrecords.build(self_node, peers, config)
        self.resolver.routes = routes_for(config, self._base)
        if not self.serve_sockets:
            return
        if not self._started and self_node is not None and self_node.addresses:
            self._started = True
            await self._set_service_addresses(True)
            self.supervisor.spawn("dns", self.serve)

    async def stop(self) -> None:
        """Stop answering and take the service addresses off the device."""
        if self._started:
            self._started = False
            await self.supervisor.stop("dns")
            await self._set_service_addresses(False)
        self.resolver.table = dnsrecords.NameTable()

    def status(self) -> dict[str, Any]:
        """The counters, for `weft status --json` ("dns")."""
        return {
            **asdict(self.counters),
            "active": self._active,
            "listening": [_show(ip, port) for ip, port in self.bound],
            "base_resolvers": list(self._base),
        }

    def health(self) -> list[str]:
        return list(self.notes) if self._started else []

    # -- the supervised task ----------------------------------------------------------------

    async def serve(self) -> None:
        """Listen on every address until cancelled. Raises when the IPv4 one cannot be
        bound (the supervisor logs it and tries again); an IPv6 one that cannot is a
        health note."""
        loop = asyncio.get_running_loop()
        await self.local.refresh(force=True)
        closers: list[Any] = []
        self.notes = []
        try:
            for ip, port in self.listen:
                try:
                    closers += await self._bind(loop, ip, port)
                except OSError as e:
                    note = _bind_note(ip, port, e)
                    if ipaddress.ip_address(ip).version == 6:
                        log.warning("%s", note)
                        self.notes.append(note)
                        continue
                    self.notes = [note]
                    raise OSError(e.errno, note) from e
            log.info("resolver listening on %s", ", ".join(_show(*b) for b in self.bound))
            await asyncio.Event().wait()  # until cancelled
        finally:
            for close in closers:
                close()
            self.bound = []
            for task in list(self._tasks):
                task.cancel()

    async def _bind(self, loop: asyncio.AbstractEventLoop, ip: str, port: int) -> list[Any]:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR for UDP: with it, a wildcard :53 server that set it too
            # would share the port silently instead of failing the bind (EADDRINUSE).
            udp.bind((ip, port))
        except OSError:
            udp.close()
            raise
        port = udp.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp)
        try:
            server = await asyncio.start_server(
                self._tcp_client, ip, port, family=family, reuse_address=True
            )
        except OSError:
            transport.close()
            raise
        self.bound.append((ip, port))
        return [transport.close, server.close]

    # -- queries -------------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        if self.local.knows(addr[0]):
            self._udp_query(data, addr, transport)
        elif self._pending_checks >= MAX_PENDING_CHECKS:
            self.counters.refused_nonlocal += 1
        else:
            self._pending_checks += 1
            self._spawn(self._check_then_query(data, addr, transport))

    async def _check_then_query(
        self, data: bytes, addr: Any, transport: asyncio.DatagramTransport
    ) -> None:
        try:
            await self.local.refresh()
        finally:
            self._pending_checks -= 1
        if self.local.knows(addr[0]):
            self._udp_query(data, addr, transport)
        else:
            self.counters.refused_nonlocal += 1

    def _udp_query(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        decision = self._decide(data, tcp=False)
        if isinstance(decision, Answer):
            transport.sendto(decision.wire, addr)
        elif isinstance(decision, Forward):
            self._spawn(self._forward_udp(decision, addr, transport))

    async def _forward_udp(
        self, fwd: Forward, addr: Any, transport: asyncio.DatagramTransport
    ) -> None:
        answer = await self._forward(fwd, tcp=False)
        if not transport.is_closing():
            transport.sendto(answer.wire, addr)

    def _decide(self, data: bytes, tcp: bool) -> Answer | Forward | None:
        decision = self.resolver.handle(data, now=time.time(), tcp=tcp)
        if decision is None:
            return None
        self.counters.queries += 1
        if isinstance(decision, Answer):
            self._count(decision)
        return decision

    def _count(self, answer: Answer) -> None:
        if answer.rcode == 2:  # SERVFAIL
            self.counters.servfail += 1
        elif answer.local:
            self.counters.local_answers += 1
        if answer.truncated:
            self.counters.truncated += 1

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        if not self.local.knows(peer[0]):
            await self.local.refresh()
        if not self.local.knows(peer[0]):
            self.counters.refused_nonlocal += 1
            writer.close()
            return
        if self._tcp_connections >= TCP_MAX_CONNECTIONS:
            writer.close()
            return
        self._tcp_connections += 1
        try:
            while True:
                head = await wait_within(reader.readexactly(2), TCP_IDLE_S)
                size = int.from_bytes(head, "big")
                if not HEADER_LEN <= size <= TCP_MAX_QUERY:
                    return
                data = await wait_within(reader.readexactly(size), TCP_IDLE_S)
                decision = self._decide(data, tcp=True)
                if isinstance(decision, Forward):
                    decision = await self._forward(decision, tcp=True)
                if decision is None:
                    continue
                writer.write(len(decision.wire).to_bytes(2, "big") + decision.wire)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._tcp_connections -= 1
            writer.close()

    # -- forwarding ------------------------------------------------------------------------

    async def _forward(self, fwd: Forward, tcp: bool) -> Answer:
        self.counters.forwarded += 1
        if self._active >= MAX_ACTIVE:
            answer = self.resolver.servfail(fwd)
        else:
            self._active += 1
            try:
                wire = await wait_within(self._race(fwd, tcp), QUERY_TIMEOUT_S)
            except TimeoutError:
                wire = None
            finally:
                self._active -= 1
            if wire is None:
                self.counters.upstream_timeouts += 1
                answer = self.resolver.servfail(fwd)
            else:
                answer = self.resolver.finish(fwd, wire)
        self._count(answer)
        return answer

    async def _race(self, fwd: Forward, tcp: bool) -> bytes | None:
        """The first good answer of any upstream; else the last bad one; None if none."""
        tasks = [asyncio.ensure_future(self._ask(up, fwd, tcp)) for up in fwd.upstreams]
        last: bytes | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    wire = await next_done
                except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError):
                    continue
                if wire is None:
                    continue
                if rcode_of(wire) not in _BAD_RCODES:
                    return wire
                last = wire
            return last
        finally:
            for t in tasks:
                t.cancel()

    async def _ask(self, up: Upstream, fwd: Forward, tcp: bool) -> bytes | None:
        """One upstream: UDP, then TCP too after UDP_RACE_S; TCP again for a truncated
        answer when the client came over TCP (a UDP client gets the TC bit)."""
        udp: asyncio.Future[bytes] = asyncio.ensure_future(self._udp_exchange(up, fwd))
        tcp_task: asyncio.Future[bytes] | None = None
        try:
            done, _ = await asyncio.wait({udp}, timeout=UDP_RACE_S)
            if udp in done and udp.exception() is None:
                wire = udp.result()
                if not (tcp and is_truncated(wire)):
                    return wire
                return await wait_within(self._tcp_exchange(up, fwd), TCP_UPSTREAM_TIMEOUT_S)
            tcp_task = asyncio.ensure_future(
                wait_within(self._tcp_exchange(up, fwd), TCP_UPSTREAM_TIMEOUT_S)
            )
            pending: set[asyncio.Future[bytes]] = {tcp_task} if udp.done() else {udp, tcp_task}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.exception() is None:
                        return t.result()
            return None
        finally:
            udp.cancel()
            if tcp_task is not None:
                tcp_task.cancel()

    async def _udp_exchange(self, up: Upstream, fwd: Forward) -> bytes:
        loop = asyncio.get_running_loop()
        sent_id = secrets.randbits(16)
        answered: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamUdp(fwd, sent_id, answered), remote_addr=(up.ip, up.port)
        )
        try:
            transport.sendto(fwd.query_with_id(sent_id))
            return await answered
        finally:
            transport.close()

    async def _tcp_exchange(self, up: Upstream, fwd: Forward) -> bytes:
        sent_id = secrets.randbits(16)
        reader, writer = await asyncio.open_connection(up.ip, up.port)
        try:
            query = fwd.query_with_id(sent_id)
            writer.write(len(query).to_bytes(2, "big") + query)
            await writer.drain()
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                wire = await reader.readexactly(size)
                if fwd.is_answer(wire, sent_id):
                    return wire
        finally:
            writer.close()

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("resolver query failed", exc_info=task.exception())

    async def _set_service_addresses(self, on: bool) -> None:
        wanted = [
            ipaddress.ip_interface(ip) for ip, _ in self.listen if on and ip in SERVICE_ADDRESSES
        ]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.engine.set_service_addresses, wanted)


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not an asyncio.DatagramTransport subclass (duck type)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.transport is not None:
            self.server.datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an answer we sent: nothing to do


class _UpstreamUdp(asyncio.DatagramProtocol):
    """One query's socket to one upstream: the first datagram that answers it."""

    def __init__(self, fwd: Forward, sent_id: int, answered: asyncio.Future[bytes]) -> None:
        self.fwd, self.sent_id, self.answered = fwd, sent_id, answered

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answered.done() and self.fwd.is_answer(data, self.sent_id):
            self.answered.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)  # e.g. port unreachable: no server there


def _show(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _bind_note(ip: str, port: int, e: OSError) -> str:
    """One line for `weft status` saying why and what to do."""
    where = _show(ip, port)
    if e.errno == errno.EADDRINUSE:
        return (
            f"MagicDNS: cannot listen on {where}: the port is taken"
            f" (a DNS server listening on all addresses? see `ss -lpnu sport = :{port}`)"
        )
    if e.errno == errno.EADDRNOTAVAIL and ip != SERVICE_V4:
        return f"MagicDNS: no IPv6 service address {where} here ({e.strerror}): IPv4 only"
    return f"MagicDNS: cannot listen on {where}: {e.strerror or e}"
