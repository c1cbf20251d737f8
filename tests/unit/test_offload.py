"""Checksums and TCP segmentation of super-packets, against a plain reference."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet.node import offload


def ref_checksum(data: bytes) -> int:
    """RFC 1071, big-endian words, as written in the RFC."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_ok(pkt: bytes, v4: bool) -> bool:
    ihl = (pkt[0] & 0xF) * 4 if v4 else 40
    seg = pkt[ihl:]
    if v4:
        pseudo = pkt[12:20] + struct.pack(">BBH", 0, 6, len(seg))
    else:
        pseudo = pkt[8:40] + struct.pack(">IxxxB", len(seg), 6)
    return ref_checksum(pseudo + seg) == 0


@given(st.binary(max_size=3000))
def test_le_sum_matches_rfc1071(data: bytes) -> None:
    ours = offload.finish_checksum(offload.le_sum(data))
    assert struct.pack("<H", ours) == struct.pack(">H", ref_checksum(data)) or (
        ref_checksum(data) in (0, 0xFFFF) and ours in (0, 0xFFFF)
    )


def super_packet(v4: bool, payload: bytes, flags: int, options: bytes = b"") -> bytes:
    thl = 20 + len(options)
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 0xFFFFFF00, 7, (thl // 4) << 4, flags, 512, 0, 0)
    tcp += options
    if v4:
        total = 20 + thl + len(payload)
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            total & 0xFFFF,
            0x1234,
            0x4000,
            64,
            6,
            0,
            bytes([100, 64, 0, 1]),
            bytes([100, 64, 0, 2]),
        )
    else:
        ip = struct.pack(
            ">IHBB16s16s",
            6 << 28,
            thl + len(payload),
            6,
            64,
            bytes.fromhex("fd7a115ca1e0" + "00" * 9 + "01"),
            bytes.fromhex("fd7a115ca1e0" + "00" * 9 + "02"),
        )
    return ip + tcp + payload


@settings(max_examples=60)
@given(
    v4=st.booleans(),
    mss=st.integers(500, 1400),
    size=st.integers(1, 20000),
    psh_fin=st.sampled_from([0x10, 0x18, 0x19, 0x90]),
    ts=st.booleans(),
)
def test_segments_are_valid_packets(v4: bool, mss: int, size: int, psh_fin: int, ts: bool) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    options = b"\x01\x01\x08\x0a" + bytes(range(8)) if ts else b""
    sp = super_packet(v4, payload, psh_fin, options)
    out = bytearray(65536)
    segs: list[bytes] = []
    assert offload.TcpSegmenter.segment(
        memoryview(sp), v4, mss, out, lambda n: segs.append(bytes(out[:n]))
    )
    ihl = 20 if v4 else 40
    hlen = ihl + 20 + len(options)
    assert len(segs) == -(-size // mss)
    assert b"".join(s[hlen:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert tcp_ok(s, v4)
        if v4:
            assert ref_checksum(s[:20]) == 0
            assert struct.unpack(">H", s[2:4])[0] == len(s)
            assert struct.unpack(">H", s[4:6])[0] == 0x1234 + i
        else:
            assert struct.unpack(">H", s[4:6])[0] == len(s) - 40
        seq = struct.unpack(">I", s[ihl + 4 : ihl + 8])[0]
        assert seq == (0xFFFFFF00 + i * mss) & 0xFFFFFFFF
        flags = s[ihl + 13]
        last = i == len(segs) - 1
        assert bool(flags & 0x08) == (last and bool(psh_fin & 0x08))
        assert bool(flags & 0x01) == (last and bool(psh_fin & 0x01))
        assert bool(flags & 0x80) == (i == 0 and bool(psh_fin & 0x80))


def test_partial_checksum_is_completed() -> None:
    pkt = bytearray(super_packet(True, b"hello world!!", 0x18))
    # What the kernel leaves: the folded pseudo-header sum in the checksum field.
    psum = offload.pseudo_sum(memoryview(pkt), True, 6, len(pkt) - 20) % 0xFFFF
    struct.pack_into("<H", pkt, 36, psum)
    offload.complete_partial_checksum(memoryview(pkt), 20, 16)
    assert tcp_ok(bytes(pkt), True)
