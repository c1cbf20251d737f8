"""The netstack's wire formats: known checksums, round trips, malformed input rejected
with PacketError and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.netstack.packet import (
    ICMP4_ECHO_REQUEST,
    ICMP6_ECHO_REPLY,
    PROTO_TCP,
    IcmpEcho,
    IPv4Packet,
    IPv6Packet,
    PacketError,
    TcpBuilder,
    TcpOptions,
    TcpSegment,
    UdpPacket,
    internet_checksum,
    parse_ip,
)

v4 = st.binary(min_size=4, max_size=4)
v6 = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
payloads = st.binary(max_size=1500)
addr_pairs = st.one_of(st.tuples(v4, v4), st.tuples(v6, v6))


def reference_checksum(data: bytes) -> int:
    """RFC 1071 §4.1, word by word."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == ~0xDDF2 & 0xFFFF


def test_a_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    packet = IPv4Packet.unpack(
        bytes.fromhex("45000073000040004011b861c0a80001c0a800c7") + bytes(95)
    )
    assert (packet.src, packet.dst, packet.proto, packet.ttl) == (
        bytes([192, 168, 0, 1]), bytes([192, 168, 0, 199]), 17, 64,
    )  # fmt: skip


@given(st.binary(max_size=3000))
def test_the_fast_checksum_matches_rfc1071_word_by_word(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(v4, v4, st.integers(0, 255), payloads, st.integers(0, 255), u16, st.binary(max_size=40))
def test_ipv4_round_trip(
    src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int, ident: int, options: bytes
) -> None:
    options = options[: len(options) // 4 * 4]
    packet = IPv4Packet(src, dst, proto, payload, ttl=ttl, ident=ident, options=options)
    wire = packet.pack()
    assert IPv4Packet.unpack(wire) == packet
    assert IPv4Packet.unpack(wire).pack() == wire


@given(v6, v6, st.integers(0, 255), payloads, st.integers(0, 255), st.integers(0, 0xFFFFF))
def test_ipv6_round_trip(
    src: bytes, dst: bytes, nh: int, payload: bytes, hops: int, flow: int
) -> None:
    packet = IPv6Packet(src, dst, nh, payload, hop_limit=hops, flow_label=flow)
    assert IPv6Packet.unpack(packet.pack()) == packet


@given(addr_pairs, u16, u16, u32, u32, st.integers(0, 0xFFF), u16, payloads)
def test_tcp_round_trip_and_the_builder_agrees(
    addrs: tuple[bytes, bytes], sport: int, dport: int, seq: int, ack: int, flags: int,
    window: int, payload: bytes,
) -> None:  # fmt: skip
    src, dst = addrs
    options = TcpOptions(mss=1380, wscale=7).pack()
    seg = TcpSegment(sport, dport, seq, ack, flags, window, payload, options)
    wire = seg.pack(src, dst)
    assert TcpSegment.unpack(wire, src, dst) == seg
    built = TcpBuilder(src, sport, dst, dport).build(seq, ack, flags, window, payload, options)
    got_src, got_dst, proto, transport = parse_ip(built)
    assert (got_src, got_dst, proto, bytes(transport)) == (src, dst, PROTO_TCP, wire)


def test_tcp_options() -> None:
    assert TcpOptions.unpack(TcpOptions(1460, 7, True).pack()) == TcpOptions(1460, 7, True)
    assert TcpOptions.unpack(b"\x01\x03\x03\x20") == TcpOptions(wscale=14)  # clamped
    assert TcpOptions.unpack(b"\x08\x0a" + bytes(8) + b"\x00\x00") == TcpOptions()  # skipped
    for bad in (b"\x02", b"\x02\x01", b"\x02\x08\x05\xb4"):
        with pytest.raises(PacketError):
            TcpOptions.unpack(bad)


@given(addr_pairs, u16, u16, payloads)
def test_udp_round_trip(addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes) -> None:
    src, dst = addrs
    datagram = UdpPacket(sport, dport, payload)
    assert UdpPacket.unpack(datagram.pack(src, dst), src, dst) == datagram


def test_udp_without_checksum_is_accepted_over_ipv4_only() -> None:
    src, dst = bytes(4), bytes(4)
    wire = UdpPacket(1, 2, b"x", no_checksum=True).pack(src, dst)
    assert UdpPacket.unpack(wire, src, dst) == UdpPacket(1, 2, b"x", no_checksum=True)
    with pytest.raises(PacketError):
        UdpPacket.unpack(wire, bytes(16), bytes(16))


@given(addr_pairs, u16, u16, payloads)
def test_icmp_echo_round_trip(
    addrs: tuple[bytes, bytes], ident: int, seq: int, payload: bytes
) -> None:
    src, dst = addrs
    kind = ICMP4_ECHO_REQUEST if len(src) == 4 else ICMP6_ECHO_REPLY
    echo = IcmpEcho(kind, ident, seq, payload)
    assert IcmpEcho.unpack(echo.pack(src, dst), src, dst) == echo


def _valid_packet(src: bytes, dst: bytes, payload: bytes) -> bytes:
    tcp = TcpSegment(1, 2, 3, 4, 0x18, 5, payload).pack(src, dst)
    if len(src) == 4:
        return IPv4Packet(src, dst, PROTO_TCP, tcp).pack()
    return IPv6Packet(src, dst, PROTO_TCP, tcp).pack()


@given(addr_pairs, payloads, st.data())
def test_truncated_or_corrupted_packets_raise_packet_error(
    addrs: tuple[bytes, bytes], payload: bytes, data: st.DataObject
) -> None:
    src, dst = addrs
    packet = _valid_packet(src, dst, payload)
    cut = data.draw(st.integers(0, len(packet) - 1))
    with pytest.raises(PacketError):
        s, d, _, transport = parse_ip(packet[:cut])
        TcpSegment.unpack(transport, s, d)
    bit = data.draw(st.integers(0, len(packet) * 8 - 1))
    corrupted = bytearray(packet)
    corrupted[bit // 8] ^= 1 << (bit % 8)
    try:
        s, d, _, transport = parse_ip(corrupted)
        TcpSegment.unpack(transport, s, d)
    except PacketError:
        return
    # only IPv6 fields no checksum covers: version/class/flow label, next header, hops
    assert len(src) == 16 and bit // 8 in (0, 1, 2, 3, 6, 7)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_packet_error(data: bytes) -> None:
    for parse in (
        IPv4Packet.unpack,
        IPv6Packet.unpack,
        parse_ip,
        lambda b: TcpSegment.unpack(b, bytes(4), bytes(4)),
        lambda b: UdpPacket.unpack(b, bytes(16), bytes(16)),
        lambda b: IcmpEcho.unpack(b, bytes(4), bytes(4)),
        TcpOptions.unpack,
    ):
        with contextlib.suppress(PacketError):
            parse(data)
