"""Internet checksums and TCP segmentation/coalescing for the TUN offloads.

The ones'-complement sum (RFC 1071) does not depend on byte order, so every sum here is
taken over little-endian 16-bit words and stored little-endian: the bytes come out the
same as a big-endian computation. ``int.from_bytes(b, "little") % 0xFFFF`` is that sum
for short buffers (2**16 is 1 modulo 0xFFFF); for the payloads of a TCP super-packet one
numpy reduction sums every segment at once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

_SMALL = 256  # below this many bytes int.from_bytes beats a numpy call
_pack_be16 = struct.Struct(">H").pack_into
_pack_be32 = struct.Struct(">I").pack_into
_pack_le16 = struct.Struct("<H").pack_into
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
PROTO_TCP = 6
PROTO_UDP = 17
_ZERO16 = bytes(16)


def le_sum(b: memoryview | bytes | bytearray) -> int:
    """Ones'-complement sum of ``b`` as little-endian words, modulo 0xFFFF."""
    n = len(b)
    if n < _SMALL:
        return int.from_bytes(b, "little") % 0xFFFF
    words = int(np.frombuffer(b, dtype="<u2", count=n >> 1).sum())
    if n & 1:
        words += b[n - 1]
    return words % 0xFFFF


def swap16(x: int) -> int:
    """A big-endian 16-bit field as it counts in a little-endian sum."""
    return ((x & 0xFF) << 8) | (x >> 8)


def finish_checksum(s: int) -> int:
    """The checksum field value (to be packed little-endian) from a running sum."""
    return ~(s % 0xFFFF) & 0xFFFF


def complete_partial_checksum(pkt: memoryview, csum_start: int, csum_offset: int) -> None:
    """Fill a checksum the kernel left partial (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field
    already holds the folded pseudo-header sum."""
    c = finish_checksum(le_sum(pkt[csum_start:]))
    _pack_le16(pkt, csum_start + csum_offset, c)


def pseudo_sum(pkt: memoryview, v4: bool, proto: int, l4_len: int) -> int:
    """The pseudo-header sum (addresses, protocol, length) of an IP packet."""
    addrs = pkt[12:20] if v4 else pkt[8:40]
    return int.from_bytes(addrs, "little") + (proto << 8) + swap16(l4_len)


def segment_sums(pkt: memoryview, start: int, mss: int, count: int) -> list[int]:
    """Little-endian sums of ``count`` consecutive ``mss``-byte runs from ``start``."""
    if count <= 0:
        return []
    if mss & 1 or count == 1:
        return [le_sum(pkt[start + i * mss : start + (i + 1) * mss]) for i in range(count)]
    arr = np.frombuffer(pkt, dtype="<u2", count=count * (mss >> 1), offset=start)
    return arr.reshape(count, mss >> 1).sum(axis=1).tolist()


class TcpSegmenter:
    """Splits a TCP super-packet (TSO) into MTU-sized packets with valid checksums.

    ``segment(pkt, v4, mss, out, emit)`` writes each segment into ``out`` (a scratch
    buffer) and calls ``emit(length)`` before writing the next one.
    """

    __slots__ = ()

    @staticmethod
    def segment(
        pkt: memoryview, v4: bool, mss: int, out: bytearray, emit: Callable[[int], None]
    ) -> bool:
        if v4:
            ihl = (pkt[0] & 0x0F) * 4
            if pkt[9] != PROTO_TCP:
                return False
        else:
            ihl = 40
            if pkt[6] != PROTO_TCP:
                return False  # extension headers: not produced by TSO
        thl = (pkt[ihl + 12] >> 4) * 4
        hlen = ihl + thl
        plen = len(pkt) - hlen
        if mss <= 0 or plen <= 0 or hlen > len(pkt):
            return False
        nseg = (plen + mss - 1) // mss
        last_len = plen - mss * (nseg - 1)
        sums = segment_sums(pkt, hlen, mss, nseg - 1)
        sums.append(le_sum(pkt[hlen + mss * (nseg - 1) :]))
        addr_sum = int.from_bytes(pkt[12:20] if v4 else pkt[8:40], "little") + (PROTO_TCP << 8)
        seq0 = int.from_bytes(pkt[ihl + 4 : ihl + 8], "big")
        flags0 = pkt[ihl + 13]
        ipid0 = int.from_bytes(pkt[4:6], "big") if v4 else 0
        # A template header with every per-segment field zeroed: its sum is taken once, and
        # each segment's checksums add just what differs (RFC 1624 style).
        out[0:hlen] = pkt[0:hlen]
        full_total = hlen + mss
        if v4:
            out[4] = out[5] = out[10] = out[11] = 0
            _pack_be16(out, 2, full_total)
            ip_base = int.from_bytes(out[0:ihl], "little")
        else:
            _pack_be16(out, 4, full_total - 40)
            ip_base = 0
        out[ihl + 4 : ihl + 8] = b"\x00\x00\x00\x00"
        out[ihl + 13] = 0
        out[ihl + 16] = out[ihl + 17] = 0
        tcp_base = addr_sum + int.from_bytes(out[ihl:hlen], "little")
        full_len_sum = swap16(thl + mss)
        last = nseg - 1
        call = emit
        for i in range(nseg):
            seq = (seq0 + i * mss) & 0xFFFFFFFF
            _pack_be32(out, ihl + 4, seq)
            f = flags0
            if i < last:
                f &= ~(TCP_FIN | TCP_PSH)
                seglen = mss
                len_sum = full_len_sum
            else:
                seglen = last_len
                len_sum = swap16(thl + seglen)
                if v4:
                    _pack_be16(out, 2, hlen + seglen)
                    ip_base += swap16(hlen + seglen) - swap16(full_total)
                else:
                    _pack_be16(out, 4, hlen + seglen - 40)
            if i:
                f &= ~TCP_CWR
            out[ihl + 13] = f
            if v4:
                ipid = (ipid0 + i) & 0xFFFF
                _pack_be16(out, 4, ipid)
                _pack_le16(out, 10, finish_checksum(ip_base + swap16(ipid)))
            tsum = tcp_base + len_sum + (f << 8) + swap16(seq >> 16) + swap16(seq & 0xFFFF)
            _pack_le16(out, ihl + 16, finish_checksum(tsum + sums[i]))
            src = hlen + i * mss
            out[hlen : hlen + seglen] = pkt[src : src + seglen]
            call(hlen + seglen)
        return True


def pad_to(out: bytearray, length: int, padded: int) -> None:
    """Zero the padding after a packet in a reused scratch buffer."""
    if padded > length:
        out[length:padded] = _ZERO16[: padded - length]
