"""The inbound packet filter: what may reach this node, checked after decryption.

Theory of operation
-------------------
The coordination server sends each node its rules (``tailcfg.FilterRule``, see
docs/policy.md); the data plane asks ``allow_inbound`` about every packet that came out
of the tunnel authenticated and from an address in the sending peer's AllowedIPs. As in
Tailscale's ``wgengine/filter``, a packet passes when

1. some rule accepts it: its source in the rule's ``src_ips``, its protocol in
   ``ip_proto`` (a rule without protocols means TCP, UDP, ICMP and ICMPv6), its
   destination in the CIDR of one of ``dst_ports`` and, for TCP, UDP and SCTP, its
   destination port in that entry's range (other protocols have no ports: the range is
   ignored); or
2. it answers a flow this node started (connection tracking): the reversed 5-tuple of a
   TCP, UDP or SCTP flow, an echo reply to one of our echo requests (same peer, same
   identifier), or an ICMP error quoting a packet of such a flow (or of a flow the
   rules let in).

Rules ``[]`` accept nothing but replies.

Connection tracking. ``track_outbound`` is called with each packet this node sends
(once per TUN read: a TSO super-packet is one flow). Flows are keyed the way packets
from the peer arrive, ``(protocol, source + destination + ports)``, so one dict lookup
answers an inbound packet. Two tables, each bounded (least recently used out):

* ``_out``: flows this node started. Their replies pass whatever the rules say, so
  changing the rules never cuts a connection this node opened.
* ``_in``: flows a peer started that the rules let in, remembered so that our answers
  on them are not taken for flows of our own. Their packets are judged by the rules
  alone: when the rules change, a flow the new rules deny stops at its next packet.

Who started a flow: the direction of its first packet. An inbound packet the rules
accept on a flow in neither table enters ``_in``; an outbound packet on a flow in
neither table enters ``_out``, except that for TCP the flags tell: a SYN starts a flow
of ours, a SYN-ACK answers a peer's, a RST starts nothing, and a segment in the middle
of a flow we lost (weftd restarted, or the flow idled out) is taken for the peer's if
the rules let the peer's side in (so it is judged by the rules: fails closed), else for
ours. Entries expire after ``TCP_TIMEOUT_S`` (TCP, SCTP) or ``OTHER_TIMEOUT_S`` (UDP,
ICMP) without a packet; other protocols are not tracked (only rules let them in).

Speed. Inbound TCP arrives in GRO runs of one flow, so the verdict of a flow is cached
under a key read straight from the IPv4 (IHL 5, unfragmented) or IPv6 (no extension
header) header with one ``struct.unpack_from``: the flow's ``_out`` or ``_in`` entry
(it passes while the entry lives; an expired or evicted entry is marked dead in place,
so the next packet takes the full path and the flow is recorded again) or "denied".
Cached packets skip the transport header checks (the kernel checks them again). The
cache starts over when the rules change and when it grows past ``MAX_VERDICTS``.
A protocol that a rule opens completely (every source, every address and port, as the
server's rule when no policy is set) passes on its protocol number and length alone,
with no key, if our own packets show who starts its flows: TCP (flags), ICMP (echo
requests) and untracked protocols; not UDP or SCTP, whose first packet must be seen.

Decisions:

* IPv4 fragments after the first carry no ports, so they always pass, as in Tailscale
  ("Fragments after the first always need to be passed through", wgengine/filter/
  filter.go): the first fragment is filtered like any packet and must hold the whole
  transport header (RFC 1858 tiny fragments are dropped), and without it the kernel
  cannot reassemble the datagram. Otherwise the tail of a large UDP reply to a flow this
  node started would be dropped under a port-limited policy.
* IPv6 extension headers hop-by-hop (0), routing (43), fragment (44) and destination
  options (60) are followed, at most ``MAX_EXTENSION_HEADERS``; the header after them is
  the protocol. Later IPv6 fragments are treated like IPv4 ones.
* Truncated or malformed packets are dropped and counted, never raised on.

Pure: no I/O and no clock; every time-dependent method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from weftnet import tailcfg

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
# Smallest transport header a packet of these protocols must carry (RFC 9293, 768, 9260).
PORT_HEADER_LEN = {PROTO_TCP: 20, PROTO_UDP: 8, PROTO_SCTP: 12}
ICMP_HEADER_LEN = 8  # type, code, checksum, then 4 bytes (id and sequence for echoes)
ICMPS = frozenset({PROTO_ICMP, PROTO_ICMPV6})
QUOTED_L4_LEN = 8  # an ICMP error quotes at least the first 8 bytes past the IP header
DEFAULT_PROTOS = (PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6)  # a rule without ip_proto
MAX_PORT = 65535

ICMP4_ECHO_REPLY, ICMP4_ECHO_REQUEST = 0, 8
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129
ICMP4_ERRORS = frozenset({3, 11, 12})  # unreachable, time exceeded, parameter problem
ICMP6_ERRORS = frozenset({1, 2, 3, 4})  # unreachable, too big, time exceeded, parameter
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

IPV6_FRAGMENT = 44
IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
MAX_EXTENSION_HEADERS = 8  # more than this in one packet: malformed

TCP_TIMEOUT_S = 300.0  # idle TCP or SCTP flow forgotten after this
OTHER_TIMEOUT_S = 120.0  # idle UDP flow or echo forgotten after this
REFRESH_S = 1.0  # a flow's expiry moves at most once a second (cheap per-read tracking)
SWEEP_INTERVAL_S = 30.0  # expired flows are dropped from the tables this often
MAX_FLOWS = 65536  # per table; the least recently used goes first
MAX_VERDICTS = 16384  # cached flow verdicts; the cache starts over past this

FlowKey = tuple[int, bytes]  # (protocol, source + destination + 4 bytes of ports or echo id)
Buf = bytes | bytearray | memoryview
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The verdict cache's keys, read in one call: for IPv4 with IHL 5 the first byte, flags
# and fragment offset (so a fragment never matches an unfragmented packet's entry), the
# protocol, then addresses and ports; for IPv6 the next header, addresses and ports.
_fast4 = struct.Struct(">B5xHxB2x12s").unpack_from
_fast6 = struct.Struct(">6xBx36s").unpack_from
# What tracking reads of a packet we send: (flags, proto or next header,) source,
# destination, source port, destination port.
_out4 = struct.Struct(">6xHxB2x4s4s2s2s").unpack_from
_out6 = struct.Struct(">6xBx16s16s2s2s").unpack_from
# The same header fields, unsplit: tells a packet of the flow of the one before apart.
_head4 = struct.Struct(">6xHxB2x12s").unpack_from
_head6 = struct.Struct(">6xBx36s").unpack_from
IPV4_DF = 0x4000
_NO_PORTS = b"\x00\x00"
_DEAD = float("-inf")  # the expiry of a flow that left its table
_DENIED = [_DEAD]  # the cached verdict of a flow nothing lets in


def _fast_keys(key: FlowKey) -> tuple[object, ...]:
    """The verdict cache keys an unfragmented packet of flow ``key`` can have."""
    proto, tail = key
    if len(tail) == 36:
        return (key,)
    return ((0x45, 0, proto, tail), (0x45, IPV4_DF, proto, tail))


@dataclass(frozen=True, slots=True)
class _Rule:
    srcs: tuple[tuple[int, int], ...]  # (network, mask) as integers
    protos: frozenset[int]
    dsts: tuple[tuple[int, int, int, int], ...]  # (network, mask, first port, last port)


@dataclass(frozen=True, slots=True)
class _Packet:
    """What the filter reads of one IP packet."""

    version: int
    src: bytes
    dst: bytes
    proto: int
    l4: int  # offset of the transport header (or of the fragment's data)
    end: int  # offset just past the packet (or past what is quoted of it)
    later_fragment: bool  # a fragment other than the first: no transport header


def _networks(cidrs: Iterable[str], ignored: list[str]) -> list[Network]:
    out: list[Network] = []
    for text in cidrs:
        if text == "*":
            out += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            ignored.append(text)
    return out


def compile_rules(
    rules: Iterable[tailcfg.FilterRule],
) -> tuple[tuple[_Rule, ...], tuple[_Rule, ...], list[str]]:
    """Rules as (IPv4 matchers, IPv6 matchers, CIDRs that did not parse and were left
    out). Leaving out a bad CIDR only ever accepts less."""
    by_version: dict[int, list[_Rule]] = {4: [], 6: []}
    ignored: list[str] = []
    for rule in rules:
        protos = frozenset(rule.ip_proto or DEFAULT_PROTOS)
        srcs = _networks(rule.src_ips, ignored)
        dsts = [(net, npr.ports) for npr in rule.dst_ports for net in _networks([npr.ip], ignored)]
        for version in (4, 6):
            s = tuple(
                (int(n.network_address), int(n.netmask)) for n in srcs if n.version == version
            )
            d = tuple(
                (int(n.network_address), int(n.netmask), max(p.first, 0), min(p.last, MAX_PORT))
                for n, p in dsts
                if n.version == version
            )
            if s and d:
                by_version[version].append(_Rule(s, protos, d))
    return tuple(by_version[4]), tuple(by_version[6]), ignored


def open_protocols(rules: tuple[_Rule, ...], ip_header_len: int) -> dict[int, int]:
    """Protocols some rule accepts from every source to every address and port, and
    whose flows' origin our own packets show (not UDP, not SCTP): their packets pass
    without a key or a flow. For each, the shortest packet that holds its transport
    header (a shorter one gets the full look)."""
    out: dict[int, int] = {}
    for rule in rules:
        if any(mask == 0 for _, mask in rule.srcs) and any(
            mask == 0 and lo == 0 and hi == MAX_PORT for _, mask, lo, hi in rule.dsts
        ):
            for proto in rule.protos - {PROTO_UDP, PROTO_SCTP}:
                l4 = PORT_HEADER_LEN.get(proto, ICMP_HEADER_LEN if proto in ICMPS else 0)
                out[proto] = ip_header_len + l4
    return out


def _accepts(
    rules: tuple[_Rule, ...], src: bytes, dst: bytes, proto: int, first: int, last: int
) -> bool:
    """Whether a rule accepts ``proto`` from ``src`` to ``dst`` on every port from
    ``first`` to ``last`` (ports count for TCP, UDP and SCTP only)."""
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big")
    ported = proto in PORT_HEADER_LEN
    for rule in rules:
        if proto not in rule.protos:
            continue
        if not any(s & mask == net for net, mask in rule.srcs):
            continue
        for net, mask, lo, hi in rule.dsts:
            if d & mask == net and (not ported or (lo <= first and last <= hi)):
                return True
    return False


def _parse(buf: Buf, off: int, length: int, strict: bool) -> _Packet | None:
    """The IP header at ``buf[off:off+length]``, or None if it is malformed. ``strict``:
    the header's own length must fit (a packet we received); otherwise the packet may be
    cut short (quoted in an ICMP error, or a super-packet's header)."""
    if length < 20:
        return None
    b0 = buf[off]
    version = b0 >> 4
    if version == 4:
        ihl = (b0 & 0x0F) * 4
        total = (buf[off + 2] << 8) | buf[off + 3]
        if ihl < 20 or ihl > length or total < ihl:
            return None
        if strict and total > length:
            return None
        frag = ((buf[off + 6] & 0x1F) << 8) | buf[off + 7]
        end = off + min(total, length)
        return _Packet(
            4, bytes(buf[off + 12 : off + 16]), bytes(buf[off + 16 : off + 20]),
            buf[off + 9], off + ihl, end, frag != 0,
        )  # fmt: skip
    if version != 6 or length < 40:
        return None
    total = ((buf[off + 4] << 8) | buf[off + 5]) + 40
    if strict and total > length:
        return None
    end = off + min(total, length)
    proto = buf[off + 6]
    at = off + 40
    later_fragment = False
    for _ in range(MAX_EXTENSION_HEADERS + 1):
        if proto in IPV6_EXTENSIONS:
            if at + 8 > end:
                return None
            proto, size = buf[at], (buf[at + 1] + 1) * 8
            if at + size > end:
                return None
        elif proto == IPV6_FRAGMENT:
            if at + 8 > end:
                return None
            proto, size = buf[at], 8
            if ((buf[at + 2] << 8) | buf[at + 3]) & 0xFFF8:
                later_fragment = True
        else:
            return _Packet(
                6, bytes(buf[off + 8 : off + 24]), bytes(buf[off + 24 : off + 40]),
                proto, at, end, later_fragment,
            )  # fmt: skip
        at += size
        if later_fragment:
            return _Packet(
                6, bytes(buf[off + 8 : off + 24]), bytes(buf[off + 24 : off + 40]),
                proto, at, end, True,
            )  # fmt: skip
    return None  # too many extension headers


def _timeout(proto: int) -> float:
    return OTHER_TIMEOUT_S if proto == PROTO_UDP else TCP_TIMEOUT_S


def _echo_ids(version: int) -> tuple[int, int, int]:
    """(ICMP protocol, echo request type, echo reply type) of an IP version."""
    if version == 4:
        return PROTO_ICMP, ICMP4_ECHO_REQUEST, ICMP4_ECHO_REPLY
    return PROTO_ICMPV6, ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY


def reply_key(buf: Buf, p: _Packet) -> tuple[FlowKey, float, int] | None:
    """For a packet this node sends (or one quoted back to it): the key its replies
    will have, the flow's idle timeout and the TCP flags (0 for other protocols). None
    if the packet starts no tracked flow."""
    if p.later_fragment:
        return None
    proto, l4, end = p.proto, p.l4, p.end
    if proto in PORT_HEADER_LEN:
        if l4 + 4 > end:
            return None
        ports = bytes(buf[l4 + 2 : l4 + 4]) + bytes(buf[l4 : l4 + 2])
        flags = buf[l4 + 13] if proto == PROTO_TCP and l4 + 14 <= end else 0
        return (proto, p.dst + p.src + ports), _timeout(proto), flags
    icmp, request, _ = _echo_ids(p.version)
    if proto == icmp and l4 + 6 <= end and buf[l4] == request:
        return (proto, p.dst + p.src + bytes(buf[l4 + 4 : l4 + 6]) + _NO_PORTS), OTHER_TIMEOUT_S, 0
    return None


def _live(table: dict[FlowKey, list[float]], key: FlowKey, now: float) -> list[float] | None:
    """The entry of ``key`` if it has not expired (an expired one is dropped)."""
    entry = table.get(key)
    if entry is not None and entry[0] <= now:
        del table[key]
        entry[0] = _DEAD
        return None
    return entry


class PacketFilter:
    """Rules plus connection tracking; see the module docstring."""

    def __init__(
        self, rules: Iterable[tailcfg.FilterRule] = (), *, max_flows: int = MAX_FLOWS
    ) -> None:
        self.max_flows = max_flows
        self.drop_denied = 0  # no rule accepts it and it answers nothing of ours
        self.drop_malformed = 0  # truncated or unparseable
        self.rules: list[tailcfg.FilterRule] = []
        self.ignored: list[str] = []  # CIDRs of the rules that did not parse
        self._rules4: tuple[_Rule, ...] = ()
        self._rules6: tuple[_Rule, ...] = ()
        self._open4: dict[int, int] = {}  # see open_protocols
        self._open6: dict[int, int] = {}
        # Flows by the key of the peer's packets: [expires_at, last packet at].
        self._out: dict[FlowKey, list[float]] = {}  # flows we started
        self._in: dict[FlowKey, list[float]] = {}  # flows peers started, let in by rules
        # Cached verdicts by fast key: the flow's entry (passes while it lives), _DENIED.
        self._verdicts: dict[object, list[float]] = {}
        self._sweep_at = 0.0
        # The last packet we sent was of a flow refreshed until _last_until: its header.
        self._last_head: object = None
        self._last_until = 0.0
        self.set_rules(rules)

    def set_rules(self, rules: Iterable[tailcfg.FilterRule]) -> None:
        """Replace the rules; from the next packet on, flows peers started are judged by
        the new ones. Flows this node started keep their replies."""
        self.rules = list(rules)
        self._rules4, self._rules6, self.ignored = compile_rules(self.rules)
        self._open4 = open_protocols(self._rules4, 20)
        self._open6 = open_protocols(self._rules6, 40)
        self._verdicts = {}

    @property
    def tracked_flows(self) -> int:
        """Flows this node started that are remembered now."""
        return len(self._out)

    # -- inbound ----------------------------------------------------------------------

    def check(self, packet: Buf, now: float) -> bool:
        """``allow_inbound`` for a packet in a buffer of its own (a packet longer than
        the buffer is malformed; bytes past its length are ignored)."""
        n = len(packet)
        if n >= 20 and packet[0] >> 4 in (4, 6):
            if packet[0] >> 4 == 4:
                total = (packet[2] << 8) | packet[3]
            else:
                total = ((packet[4] << 8) | packet[5]) + 40
            if total > n:
                self.drop_malformed += 1
                return False
            n = total
        return self.allow_inbound(packet, 0, n, now)

    def allow_inbound(self, buf: Buf, off: int, length: int, now: float) -> bool:
        """Whether the packet in ``buf[off:off+length]``, just decrypted, may be
        delivered; ``length`` is the packet's length as its IP header says (the data
        plane checked that the header's length fits what was decrypted). Counts what it
        drops."""
        key = None
        if length >= 24:
            b0 = buf[off]
            if b0 == 0x45:
                need = self._open4.get(buf[off + 9])
                if need is not None and length >= need:
                    return True
                key = _fast4(buf, off)
            elif b0 >> 4 == 6 and length >= 44:
                need = self._open6.get(buf[off + 6])
                if need is not None and length >= need:
                    return True
                key = _fast6(buf, off)
        v = self._verdicts.get(key)
        if v is not None:
            if v[0] > now:
                return True
            if v is _DENIED:
                self.drop_denied += 1
                return False
        return self._decide(buf, off, length, now)

    def _decide(self, buf: Buf, off: int, length: int, now: float) -> bool:
        if now >= self._sweep_at:
            self._sweep(now)
        p = _parse(buf, off, length, strict=True)
        if p is None:
            self.drop_malformed += 1
            return False
        rules = self._rules4 if p.version == 4 else self._rules6
        proto, l4, end = p.proto, p.l4, p.end
        if p.later_fragment:
            ok = True  # filtered by its first fragment (see the module docstring)
        elif proto in PORT_HEADER_LEN:
            if end - l4 < PORT_HEADER_LEN[proto]:
                self.drop_malformed += 1
                return False
            key = (proto, p.src + p.dst + bytes(buf[l4 : l4 + 4]))
            verdict = _live(self._out, key, now)
            if verdict is None:
                port = (buf[l4 + 2] << 8) | buf[l4 + 3]
                if _accepts(rules, p.src, p.dst, proto, port, port):
                    verdict = _live(self._in, key, now) or self._insert(
                        self._in, key, _timeout(proto), now
                    )
                else:
                    verdict = _DENIED
            fast: object = None
            if p.version == 6:
                if l4 == off + 40:
                    fast = _fast6(buf, off)
            elif buf[off] == 0x45 and not (buf[off + 6] & 0x3F or buf[off + 7]):
                fast = _fast4(buf, off)
            if fast is not None:
                if len(self._verdicts) >= MAX_VERDICTS:
                    self._verdicts = {}
                self._verdicts[fast] = verdict
            ok = verdict is not _DENIED
        else:
            icmp, _, echo_reply = _echo_ids(p.version)
            if proto == icmp and end - l4 < ICMP_HEADER_LEN:
                self.drop_malformed += 1
                return False
            ok = _accepts(rules, p.src, p.dst, proto, 0, 0)
            if not ok and proto == icmp:
                ok = self._icmp_answers_us(buf, p, echo_reply, rules, now)
        if not ok:
            self.drop_denied += 1
        return ok

    def _icmp_answers_us(
        self, buf: Buf, p: _Packet, echo_reply: int, rules: tuple[_Rule, ...], now: float
    ) -> bool:
        """An echo reply to our request, or an error about a packet of a flow that may
        flow: one we started, or one the rules let in."""
        kind = buf[p.l4]
        if kind == echo_reply:
            key = (p.proto, p.src + p.dst + bytes(buf[p.l4 + 4 : p.l4 + 6]) + _NO_PORTS)
            return _live(self._out, key, now) is not None
        if kind not in (ICMP4_ERRORS if p.version == 4 else ICMP6_ERRORS):
            return False
        quoted = _parse(buf, p.l4 + QUOTED_L4_LEN, p.end - p.l4 - QUOTED_L4_LEN, strict=False)
        if quoted is None or quoted.version != p.version or quoted.src != p.dst:
            return False  # an error is about a packet we sent, so it quotes our address
        answer = reply_key(buf, quoted)
        if answer is None:
            return False
        if _live(self._out, answer[0], now) is not None:
            return True
        if quoted.proto not in PORT_HEADER_LEN:
            return False
        port = (buf[quoted.l4] << 8) | buf[quoted.l4 + 1]  # our source port: theirs to us
        return _accepts(rules, quoted.dst, quoted.src, quoted.proto, port, port)

    # -- outbound ---------------------------------------------------------------------

    def track_outbound(self, packet: Buf, now: float) -> None:
        """Call with each packet this node sends (once per TSO super-packet), before it
        is sealed: remember the flows it starts, so their replies pass."""
        if now >= self._sweep_at:
            self._sweep(now)
        n = len(packet)
        head: object = None
        if n >= 24 and packet[0] == 0x45:
            head = _head4(packet, 0)
        elif n >= 44 and packet[0] >> 4 == 6:
            head = _head6(packet, 0)
        if head is not None and head == self._last_head and now < self._last_until:
            return  # the flow of the packet before, which needs no refresh yet
        fast: FlowKey | None = None
        if n >= 24 and packet[0] == 0x45:
            flags, proto, src, dst, sport, dport = _out4(packet, 0)
            if not flags & 0x3FFF and proto in PORT_HEADER_LEN:
                fast = (proto, dst + src + dport + sport)
        elif n >= 44 and packet[0] >> 4 == 6:
            proto, src, dst, sport, dport = _out6(packet, 0)
            if proto in PORT_HEADER_LEN:
                fast = (proto, dst + src + dport + sport)
        if fast is not None:  # the common case: a flow we know goes on
            for table in (self._out, self._in):
                entry = table.get(fast)
                if entry is not None and entry[0] > now:
                    if now - entry[1] >= REFRESH_S:
                        self._touch(table, fast, entry, _timeout(fast[0]), now)
                    self._last_head, self._last_until = head, entry[1] + REFRESH_S
                    return
        p = _parse(packet, 0, n, strict=False)
        if p is None:
            return
        answer = reply_key(packet, p)
        if answer is None:
            return
        key, timeout, flags = answer
        syn = flags & (TCP_SYN | TCP_ACK)
        mine = _live(self._out, key, now)
        if mine is not None:
            self._touch(self._out, key, mine, timeout, now)
            return
        theirs = _live(self._in, key, now)
        if theirs is not None and syn != TCP_SYN:
            self._touch(self._in, key, theirs, timeout, now)
            return
        if p.proto == PROTO_TCP and syn != TCP_SYN:
            if flags & TCP_RST:
                return  # refusing a connection starts nothing
            if syn == TCP_SYN | TCP_ACK or self._would_accept(packet, p):
                self._insert(self._in, key, timeout, now)  # the peer's connection
                return
        if theirs is not None:
            self._in.pop(key)[0] = _DEAD  # our SYN on it: a new connection, ours
        self._insert(self._out, key, timeout, now)
        for cached in _fast_keys(key):
            if self._verdicts.get(cached) is _DENIED:
                del self._verdicts[cached]  # its replies pass from now on

    def _would_accept(self, packet: Buf, p: _Packet) -> bool:
        """Whether the rules let in the peer's side of the flow of our packet ``p``."""
        rules = self._rules4 if p.version == 4 else self._rules6
        port = (packet[p.l4] << 8) | packet[p.l4 + 1]
        return _accepts(rules, p.dst, p.src, p.proto, port, port)

    # -- the tables -------------------------------------------------------------------

    @staticmethod
    def _touch(
        table: dict[FlowKey, list[float]], key: FlowKey, entry: list[float], timeout: float,
        now: float,
    ) -> None:  # fmt: skip
        entry[0] = now + timeout
        entry[1] = now
        del table[key]
        table[key] = entry  # to the young end

    def _insert(
        self, table: dict[FlowKey, list[float]], key: FlowKey, timeout: float, now: float
    ) -> list[float]:
        while len(table) >= self.max_flows:
            oldest = next(iter(table))
            table.pop(oldest)[0] = _DEAD  # cached verdicts on it lapse too
        entry = table[key] = [now + timeout, now]
        return entry

    def _sweep(self, now: float) -> None:
        """Drop expired flows. Tables are ordered by last use, so the scan stops at the
        first flow used within the shortest timeout."""
        self._sweep_at = now + SWEEP_INTERVAL_S
        for table in (self._out, self._in):
            dead = []
            for key, entry in table.items():
                if entry[1] > now - OTHER_TIMEOUT_S:
                    break
                if entry[0] <= now:
                    dead.append(key)
            for key in dead:
                table.pop(key)[0] = _DEAD
