"""Wire formats of the userspace netstack: IPv4, IPv6, TCP, UDP and ICMP echo.

Theory of operation
-------------------
Each format is a frozen, slotted dataclass with ``pack()`` and ``unpack()``; ``unpack``
raises ``PacketError`` (and nothing else) on any malformed input, and
``X.unpack(x.pack()) == x``. Transport formats take the IP addresses as arguments to
``pack``/``unpack`` because their checksum covers a pseudo-header (RFC 9293 §3.1,
RFC 768, RFC 8200 §8.1); ``unpack`` verifies it.

The Internet checksum (RFC 1071) is computed without a Python loop: the data read as
one big-endian integer is congruent modulo 0xFFFF to the ones'-complement sum of its
16-bit words, because 2**16 == 1 (mod 0xFFFF). ``int.from_bytes`` and ``%`` run in C,
so a 1400-byte segment costs about a microsecond.

The stack's receive path does not build an IP dataclass per packet: ``parse_ip`` returns
the fields it needs as a tuple (tolerating the padding a tunnel may leave after the IP
payload), and ``TcpBuilder`` writes whole IP+TCP packets of one flow from a header
template with the constant part of both checksums summed once.

Not supported (dropped by the stack): IPv4 options are kept but ignored, IPv4 fragments
and IPv6 extension headers are not reassembled or followed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

IPV4_HEADER_LEN = 20  # RFC 791, without options
IPV6_HEADER_LEN = 40  # RFC 8200 §3
TCP_HEADER_LEN = 20  # RFC 9293 §3.1, without options
UDP_HEADER_LEN = 8  # RFC 768
ICMP_ECHO_HEADER_LEN = 8  # type, code, checksum, identifier, sequence (RFC 792, 4443)
MAX_IP_PACKET = 65535  # the IPv4 total length and IPv6 payload length are 16 bits

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20

TCP_OPT_END = 0
TCP_OPT_NOP = 1
TCP_OPT_MSS = 2  # RFC 9293 §3.2, length 4
TCP_OPT_WSCALE = 3  # RFC 7323 §2, length 3
TCP_OPT_SACK_PERMITTED = 4  # RFC 2018, length 2 (recognised, never used)
MAX_WSCALE = 14  # RFC 7323 §2.3: larger shifts are taken as 14

ICMP4_ECHO_REPLY, ICMP4_ECHO_REQUEST = 0, 8
ICMP4_UNREACHABLE, ICMP4_PORT_UNREACHABLE = 3, 3  # type, code
ICMP6_UNREACHABLE, ICMP6_PORT_UNREACHABLE = 1, 4
ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129

IPV4_DF = 0x4000  # don't fragment
IPV4_MF = 0x2000  # more fragments
IPV4_OFFSET_MASK = 0x1FFF
DEFAULT_TTL = 64

_IPV4 = struct.Struct(">BBHHHBBH4s4s")
_IPV6 = struct.Struct(">IHBB16s16s")
_TCP = struct.Struct(">HHIIHHHH")
_UDP = struct.Struct(">HHHH")
_ICMP = struct.Struct(">BBHHH")
_U16 = struct.Struct(">H")

Buf = bytes | bytearray | memoryview


class PacketError(ValueError):
    """A packet that is truncated, inconsistent or fails its checksum."""


def sum16(data: Buf) -> int:
    """The 16-bit words of ``data`` (odd length: padded with a zero byte) as one integer
    congruent to their ones'-complement sum modulo 0xFFFF; add such sums, then ``fold``."""
    value = int.from_bytes(data, "big")
    return value << 8 if len(data) & 1 else value


def fold(total: int) -> int:
    """The 16-bit ones'-complement sum of which ``total`` (sums of ``sum16``) is made."""
    r = total % 0xFFFF
    return 0xFFFF if r == 0 and total else r


def internet_checksum(data: Buf, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` plus an ``initial`` (pseudo-header) sum."""
    return ~fold(initial + sum16(data)) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """RFC 9293 §3.1 / RFC 8200 §8.1 pseudo-header, as a ``sum16``-style integer."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length


@dataclass(frozen=True, slots=True)
class IPv4Packet:
    src: bytes  # 4 bytes
    dst: bytes
    proto: int
    payload: bytes
    ttl: int = DEFAULT_TTL
    tos: int = 0
    ident: int = 0
    flags_fragment: int = IPV4_DF  # flags (3 bits) and fragment offset (13 bits)
    options: bytes = b""  # a multiple of 4 bytes, at most 40

    def pack(self) -> bytes:
        ihl = 5 + len(self.options) // 4
        total = ihl * 4 + len(self.payload)
        if len(self.options) % 4 or ihl > 15 or total > MAX_IP_PACKET:
            raise PacketError("IPv4 options or payload too long")
        header = _IPV4.pack(
            0x40 | ihl, self.tos, total, self.ident, self.flags_fragment, self.ttl,
            self.proto, 0, self.src, self.dst,
        ) + self.options  # fmt: skip
        csum = internet_checksum(header)
        return header[:10] + _U16.pack(csum) + header[12:] + self.payload

    @classmethod
    def unpack(cls, data: Buf) -> IPv4Packet:
        data = bytes(data)
        if len(data) < IPV4_HEADER_LEN:
            raise PacketError("IPv4 packet shorter than its header")
        vihl, tos, total, ident, frag, ttl, proto, _, src, dst = _IPV4.unpack_from(data)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < IPV4_HEADER_LEN or total < ihl or total != len(data):
            raise PacketError("bad IPv4 version, header length or total length")
        if internet_checksum(data[:ihl]) != 0:
            raise PacketError("bad IPv4 header checksum")
        return cls(src, dst, proto, data[ihl:], ttl, tos, ident, frag, data[20:ihl])


@dataclass(frozen=True, slots=True)
class IPv6Packet:
    src: bytes  # 16 bytes
    dst: bytes
    next_header: int
    payload: bytes
    hop_limit: int = DEFAULT_TTL
    traffic_class: int = 0
    flow_label: int = 0

    def pack(self) -> bytes:
        if len(self.payload) > MAX_IP_PACKET:
            raise PacketError("IPv6 payload too long (jumbograms are not supported)")
        first = 0x60000000 | self.traffic_class << 20 | self.flow_label
        head = _IPV6.pack(
            first, len(self.payload), self.next_header, self.hop_limit, self.src, self.dst
        )
        return head + self.payload

    @classmethod
    def unpack(cls, data: Buf) -> IPv6Packet:
        data = bytes(data)
        if len(data) < IPV6_HEADER_LEN:
            raise PacketError("IPv6 packet shorter than its header")
        first, length, nh, hops, src, dst = _IPV6.unpack_from(data)
        if first >> 28 != 6 or length != len(data) - IPV6_HEADER_LEN:
            raise PacketError("bad IPv6 version or payload length")
        return cls(src, dst, nh, data[40:], hops, first >> 20 & 0xFF, first & 0xFFFFF)


def parse_ip(packet: Buf) -> tuple[bytes, bytes, int, memoryview]:
    """(source, destination, protocol, transport bytes) of a packet for this host.

    Fast path of the stack: no dataclass; bytes past the IP length are ignored (tunnel
    padding). Fragments, bad header checksums and truncation raise PacketError; IPv6
    extension headers come back as the protocol (the stack drops what it doesn't know).
    """
    view = memoryview(packet)
    n = len(view)
    if n and view[0] >> 4 == 4:
        if n < IPV4_HEADER_LEN:
            raise PacketError("IPv4 packet shorter than its header")
        vihl, _, total, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(view)
        ihl = (vihl & 0x0F) * 4
        if ihl < IPV4_HEADER_LEN or total < ihl or total > n:
            raise PacketError("bad IPv4 header length or total length")
        if frag & (IPV4_MF | IPV4_OFFSET_MASK):
            raise PacketError("IPv4 fragment (reassembly is not supported)")
        if fold(sum16(view[:ihl])) != 0xFFFF:
            raise PacketError("bad IPv4 header checksum")
        return src, dst, proto, view[ihl:total]
    if n and view[0] >> 4 == 6:
        if n < IPV6_HEADER_LEN:
            raise PacketError("IPv6 packet shorter than its header")
        _, length, nh, _, src, dst = _IPV6.unpack_from(view)
        if IPV6_HEADER_LEN + length > n:
            raise PacketError("IPv6 payload length past the end of the packet")
        return src, dst, nh, view[40 : 40 + length]
    raise PacketError("not an IPv4 or IPv6 packet")


def ip_packet(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet (by the length of the addresses) carrying ``payload``."""
    if len(src) == 4:
        return IPv4Packet(src, dst, proto, payload).pack()
    return IPv6Packet(src, dst, proto, payload).pack()


@dataclass(frozen=True, slots=True)
class TcpOptions:
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False

    def pack(self) -> bytes:
        out = b""
        if self.mss is not None:
            out += struct.pack(">BBH", TCP_OPT_MSS, 4, self.mss)
        if self.wscale is not None:
            out += struct.pack(">BBBB", TCP_OPT_NOP, TCP_OPT_WSCALE, 3, self.wscale)
        if self.sack_permitted:
            out += struct.pack(">BBBB", TCP_OPT_NOP, TCP_OPT_NOP, TCP_OPT_SACK_PERMITTED, 2)
        return out

    @classmethod
    def unpack(cls, data: Buf) -> TcpOptions:
        """The options this stack understands; others are skipped by their length."""
        data = bytes(data)
        mss = wscale = None
        sack = False
        i = 0
        while i < len(data):
            kind = data[i]
            if kind == TCP_OPT_END:
                break
            if kind == TCP_OPT_NOP:
                i += 1
                continue
            if i + 1 >= len(data) or data[i + 1] < 2 or i + data[i + 1] > len(data):
                raise PacketError("malformed TCP option")
            length = data[i + 1]
            if kind == TCP_OPT_MSS and length == 4:
                mss = _U16.unpack_from(data, i + 2)[0]
            elif kind == TCP_OPT_WSCALE and length == 3:
                wscale = min(data[i + 2], MAX_WSCALE)
            elif kind == TCP_OPT_SACK_PERMITTED and length == 2:
                sack = True
            i += length
        return cls(mss, wscale, sack)


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int  # the low 12 bits of header bytes 12-13 (reserved bits, then CWR..FIN)
    window: int
    payload: bytes = b""
    options: bytes = b""  # raw, a multiple of 4 bytes; see TcpOptions
    urgent: int = 0

    def pack(self, src_ip: bytes, dst_ip: bytes) -> bytes:
        if len(self.options) % 4 or len(self.options) > 40:
            raise PacketError("TCP options must be a multiple of 4 bytes, at most 40")
        off_flags = (5 + len(self.options) // 4) << 12 | self.flags
        head = _TCP.pack(
            self.src_port, self.dst_port, self.seq, self.ack, off_flags, self.window, 0,
            self.urgent,
        ) + self.options  # fmt: skip
        total = len(head) + len(self.payload)
        initial = pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, total) + sum16(self.payload)
        csum = internet_checksum(head, initial)
        return head[:16] + _U16.pack(csum) + head[18:] + self.payload

    @classmethod
    def unpack(cls, data: Buf, src_ip: bytes, dst_ip: bytes) -> TcpSegment:
        n = len(data)
        if n < TCP_HEADER_LEN:
            raise PacketError("TCP segment shorter than its header")
        sport, dport, seq, ack, off_flags, window, _, urgent = _TCP.unpack_from(data)
        off = (off_flags >> 12) * 4
        if off < TCP_HEADER_LEN or off > n:
            raise PacketError("bad TCP data offset")
        if fold(pseudo_header_sum(src_ip, dst_ip, PROTO_TCP, n) + sum16(data)) != 0xFFFF:
            raise PacketError("bad TCP checksum")
        return cls(
            sport, dport, seq, ack, off_flags & 0x0FFF, window, bytes(data[off:]),
            bytes(data[20:off]), urgent,
        )  # fmt: skip


class TcpBuilder:
    """Writes the IP+TCP packets of one flow (our address and port to the peer's)."""

    __slots__ = ("_ip_sum", "_ports", "_pseudo", "_src", "_v4", "dst")

    def __init__(self, src: bytes, src_port: int, dst: bytes, dst_port: int) -> None:
        self._v4 = len(src) == 4
        self._src = src
        self.dst = dst
        self._ports = src_port << 16 | dst_port
        self._pseudo = pseudo_header_sum(src, dst, PROTO_TCP, 0) + src_port + dst_port
        # IPv4 header words that never change: version/IHL, DF, TTL/protocol, addresses
        self._ip_sum = 0x4500 + IPV4_DF + (DEFAULT_TTL << 8 | PROTO_TCP)
        self._ip_sum += int.from_bytes(src, "big") + int.from_bytes(dst, "big")

    def build(
        self, seq: int, ack: int, flags: int, window: int, payload: Buf = b"", options: bytes = b""
    ) -> bytes:
        tcp_len = TCP_HEADER_LEN + len(options) + len(payload)
        off_flags = (5 + len(options) // 4) << 12 | flags
        s = self._pseudo + tcp_len + seq + ack + off_flags + window
        if options:
            s += int.from_bytes(options, "big")
        if payload:
            s += sum16(payload)
        csum = ~fold(s) & 0xFFFF
        tcp = _TCP.pack(
            self._ports >> 16, self._ports & 0xFFFF, seq, ack, off_flags, window, csum, 0
        )
        if self._v4:
            total = IPV4_HEADER_LEN + tcp_len
            ip_csum = ~fold(self._ip_sum + total) & 0xFFFF
            ip = _IPV4.pack(
                0x45, 0, total, 0, IPV4_DF, DEFAULT_TTL, PROTO_TCP, ip_csum, self._src, self.dst
            )
        else:
            ip = _IPV6.pack(0x60000000, tcp_len, PROTO_TCP, DEFAULT_TTL, self._src, self.dst)
        return b"".join((ip, tcp, options, payload))


@dataclass(frozen=True, slots=True)
class UdpPacket:
    src_port: int
    dst_port: int
    payload: bytes
    no_checksum: bool = False  # IPv4 only (RFC 768): the sender left the checksum 0

    def pack(self, src_ip: bytes, dst_ip: bytes) -> bytes:
        length = UDP_HEADER_LEN + len(self.payload)
        if length > MAX_IP_PACKET:
            raise PacketError("UDP payload too long")
        if self.no_checksum:
            if len(src_ip) != 4:
                raise PacketError("UDP over IPv6 must carry a checksum (RFC 8200 §8.1)")
            return _UDP.pack(self.src_port, self.dst_port, length, 0) + self.payload
        initial = pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length) + sum16(self.payload)
        initial += self.src_port + self.dst_port + length
        csum = ~fold(initial) & 0xFFFF or 0xFFFF  # 0 is sent as all ones (RFC 768)
        return _UDP.pack(self.src_port, self.dst_port, length, csum) + self.payload

    @classmethod
    def unpack(cls, data: Buf, src_ip: bytes, dst_ip: bytes) -> UdpPacket:
        if len(data) < UDP_HEADER_LEN:
            raise PacketError("UDP datagram shorter than its header")
        sport, dport, length, csum = _UDP.unpack_from(data)
        if length != len(data):
            raise PacketError("UDP length disagrees with the IP length")
        if csum == 0:
            if len(src_ip) != 4:
                raise PacketError("UDP over IPv6 without a checksum")
            return cls(sport, dport, bytes(data[8:]), no_checksum=True)
        if fold(pseudo_header_sum(src_ip, dst_ip, PROTO_UDP, length) + sum16(data)) != 0xFFFF:
            raise PacketError("bad UDP checksum")
        return cls(sport, dport, bytes(data[8:]))


@dataclass(frozen=True, slots=True)
class IcmpEcho:
    """An ICMPv4 (RFC 792) or ICMPv6 (RFC 4443 §4) echo request or reply; ``type``
    says which. ICMPv6's checksum covers a pseudo-header, so pack/unpack take the
    addresses; for ICMPv4 they are only used to tell the version (4-byte addresses)."""

    type: int
    ident: int
    seq: int
    payload: bytes = b""

    def pack(self, src_ip: bytes, dst_ip: bytes) -> bytes:
        head = _ICMP.pack(self.type, 0, 0, self.ident, self.seq)
        initial = sum16(self.payload)
        if len(src_ip) == 16:
            length = len(head) + len(self.payload)
            initial += pseudo_header_sum(src_ip, dst_ip, PROTO_ICMPV6, length)
        csum = internet_checksum(head, initial)
        return head[:2] + _U16.pack(csum) + head[4:] + self.payload

    @classmethod
    def unpack(cls, data: Buf, src_ip: bytes, dst_ip: bytes) -> IcmpEcho:
        if len(data) < ICMP_ECHO_HEADER_LEN:
            raise PacketError("ICMP message shorter than an echo header")
        kind, code, _, ident, seq = _ICMP.unpack_from(data)
        v6 = len(src_ip) == 16
        echoes = (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) if v6 else (ICMP4_ECHO_REQUEST, 0)
        if kind not in echoes or code != 0:
            raise PacketError("not an ICMP echo message")
        initial = pseudo_header_sum(src_ip, dst_ip, PROTO_ICMPV6, len(data)) if v6 else 0
        if fold(initial + sum16(data)) != 0xFFFF:
            raise PacketError("bad ICMP checksum")
        return cls(kind, ident, seq, bytes(data[8:]))


def icmp_port_unreachable(src: bytes, dst: bytes, offending: Buf) -> bytes:
    """The IP packet telling ``dst`` that the datagram ``offending`` (a whole IP packet
    it sent to us, ``src``) found no listener: RFC 792 type 3 code 3, RFC 4443 §3.1
    type 1 code 4, quoting as much of the datagram as fits in the minimum MTU."""
    v6 = len(src) == 16
    quote = bytes(offending[: 1232 if v6 else 548])
    kind, code = (ICMP6_UNREACHABLE, ICMP6_PORT_UNREACHABLE) if v6 else (3, 3)
    head = _ICMP.pack(kind, code, 0, 0, 0)
    initial = sum16(quote)
    if v6:
        initial += pseudo_header_sum(src, dst, PROTO_ICMPV6, len(head) + len(quote))
    csum = internet_checksum(head, initial)
    message = head[:2] + _U16.pack(csum) + head[4:] + quote
    return ip_packet(src, dst, PROTO_ICMPV6 if v6 else PROTO_ICMP, message)


def parse_icmp_unreachable(
    data: Buf, src_ip: bytes, dst_ip: bytes
) -> tuple[bytes, bytes, int, int] | None:
    """(original source, original destination, source port, destination port) of the
    UDP datagram quoted by an ICMP port unreachable ``data`` (None for other ICMP
    messages). The quote is what RFC 792 guarantees: the IP header and 8 bytes."""
    if len(data) < 8:
        return None
    kind, code = data[0], data[1]
    v6 = len(src_ip) == 16
    if (kind, code) != ((ICMP6_UNREACHABLE, ICMP6_PORT_UNREACHABLE) if v6 else (3, 3)):
        return None
    initial = pseudo_header_sum(src_ip, dst_ip, PROTO_ICMPV6, len(data)) if v6 else 0
    if fold(initial + sum16(data)) != 0xFFFF:
        raise PacketError("bad ICMP checksum")
    quote = memoryview(data)[8:]
    if v6:
        if len(quote) < IPV6_HEADER_LEN + UDP_HEADER_LEN or quote[6] != PROTO_UDP:
            return None
        osrc, odst, off = bytes(quote[8:24]), bytes(quote[24:40]), IPV6_HEADER_LEN
    else:
        if len(quote) < IPV4_HEADER_LEN or quote[9] != PROTO_UDP:
            return None
        off = (quote[0] & 0x0F) * 4
        if off < IPV4_HEADER_LEN or len(quote) < off + UDP_HEADER_LEN:
            return None
        osrc, odst = bytes(quote[12:16]), bytes(quote[16:20])
    sport, dport = _U16.unpack_from(quote, off)[0], _U16.unpack_from(quote, off + 2)[0]
    return osrc, odst, sport, dport
