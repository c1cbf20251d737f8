"""The batch functions of the data plane in pure Python: the reference for the C
extension (``weftnet.fastpath._fastpath``, same names, same bytes out) and the fallback
where it is not built.

``seal_packet`` turns one TUN read (a packet, or a TCP super-packet from TSO) into
WireGuard transport messages, back to back in an output buffer: cut into MSS segments
with valid checksums (``node.offload.TcpSegmenter``), each padded to 16 bytes (never past
the MTU) and sealed with the next counters.

``open_messages`` opens a run of transport messages for one keypair, laid out as a UDP
GRO read (each ``seg`` bytes, the last maybe shorter), into a decrypt buffer as TUN
writes: every item starts with a virtio-net header; runs of one TCP flow's consecutive
segments are merged into one super-packet (GSO TCPV4/6, NEEDS_CSUM, as the kernel's GRO
would), other packets stand alone with DATA_VALID. It stops, unconsumed, at the first
message that is not transport data for ``local_index`` (the caller takes it the slow
way) or when the buffer is full (the caller flushes and calls again).

Both functions are pure (no I/O, clock or randomness) and keep no state between calls
but a scratch buffer (not thread-safe, like the C version's objects).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from weftnet.node import offload
from weftnet.node.vnet import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    VNET_HDR_LEN,
)
from weftnet.wireguard.constants import PADDING_MULTIPLE, REJECT_AFTER_MESSAGES
from weftnet.wireguard.messages import MESSAGE_TRANSPORT, TRANSPORT_HEADER_SIZE, padded_size
from weftnet.wireguard.replay import ReplayWindow

__all__ = [
    "MAX_COALESCE",
    "MAX_PACKET",
    "MAX_SEGMENTS",
    "MESSAGE_OVERHEAD",
    "Aead",
    "ReplayWindow",
    "open_messages",
    "seal_packet",
    "segment_packet",
]

Aead = ChaCha20Poly1305
TAG_SIZE = 16
MESSAGE_OVERHEAD = TRANSPORT_HEADER_SIZE + TAG_SIZE
MAX_SEGMENTS = 256  # a super-packet cut finer than this is refused (MSS below ~256)
MAX_PACKET = 65535  # the largest packet or super-packet taken
MAX_COALESCE = 64  # segments merged into one TUN write at most

_header = struct.Struct("<IIQ")
_pack_header = _header.pack_into
_index_counter = struct.Struct("<IQ").unpack_from
_pack_be16 = struct.Struct(">H").pack_into
_pack_le16 = struct.Struct("<H").pack_into
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_VHDR_VALID = VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)
_scratch = bytearray(MAX_PACKET + PADDING_MULTIPLE)
_scratch_view = memoryview(_scratch)


class _Sealer:
    """Seals what the segmenter leaves in the scratch buffer, message after message."""

    __slots__ = ("aead", "count", "counter", "first", "mtu", "off", "out", "remote_index")

    def __init__(
        self, aead: Aead, remote_index: int, counter: int, mtu: int, out: memoryview, off: int
    ) -> None:
        self.aead, self.remote_index, self.counter = aead, remote_index, counter
        self.mtu, self.out, self.off = mtu, out, off
        self.count = self.first = 0

    def emit(self, length: int) -> None:
        padded = padded_size(length, self.mtu)
        offload.pad_to(_scratch, length, padded)
        size = padded + MESSAGE_OVERHEAD
        off = self.off
        if off + size > len(self.out):
            raise ValueError("output buffer too small")
        counter = self.counter + self.count
        _pack_header(self.out, off, MESSAGE_TRANSPORT, self.remote_index, counter)
        self.aead.encrypt_into(
            _NONCE_PREFIX + counter.to_bytes(8, "little"),
            _scratch_view[:padded],
            None,
            self.out[off + TRANSPORT_HEADER_SIZE : off + size],
        )
        if not self.count:
            self.first = size
        self.count += 1
        self.off = off + size


def tcp_segments(pkt: memoryview, mss: int) -> int:
    """How many segments a TCP super-packet cuts into; 0 if it is not one we can cut."""
    n = len(pkt)
    version = pkt[0] >> 4 if n else 0
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or n < ihl + 20 or pkt[9] != offload.PROTO_TCP:
            return 0
    elif version == 6:
        ihl = 40
        if n < 60 or pkt[6] != offload.PROTO_TCP:
            return 0  # extension headers: not produced by TSO
    else:
        return 0
    thl = (pkt[ihl + 12] >> 4) * 4
    plen = n - ihl - thl
    if thl < 20 or plen <= 0 or mss <= 0:
        return 0
    count = (plen + mss - 1) // mss
    return count if count <= MAX_SEGMENTS else 0


def _tun_read(
    pkt: bytes | bytearray | memoryview, vnet: bool
) -> tuple[memoryview, int, int, int, int, int] | None:
    """(packet, flags, GSO type, MSS, csum_start, csum_offset) of a TUN read, the
    virtio header's fields zero without ``vnet``; None if it cannot be a packet."""
    view = memoryview(pkt)
    flags = gso = mss = csum_start = csum_offset = 0
    if vnet:
        if len(view) < VNET_HDR_LEN:
            return None
        flags, gso, _, mss, csum_start, csum_offset = VNET_HDR.unpack_from(view)
        view = view[VNET_HDR_LEN:]
        gso &= ~VIRTIO_NET_HDR_GSO_ECN
    if not 0 < len(view) <= MAX_PACKET:
        return None
    return view, flags, gso, mss, csum_start, csum_offset


def seal_packet(
    aead: Aead,
    remote_index: int,
    counter: int,
    pkt: bytes | bytearray | memoryview,
    vnet: bool,
    mtu: int,
    out: bytearray | memoryview,
    out_off: int,
) -> tuple[int, int, int]:
    """Seal one TUN read (with its virtio-net header if ``vnet``) into ``out`` from
    ``out_off``, with counters from ``counter`` on.

    Returns (messages, end offset, size of the first message); every message but the
    last has the first one's size. (0, out_off, 0): malformed, nothing written.
    Raises OverflowError if the counters would reach REJECT_AFTER_MESSAGES and
    ValueError if ``out`` is too small."""
    read = _tun_read(pkt, vnet)
    if read is None:
        return 0, out_off, 0
    view, flags, gso, mss, csum_start, csum_offset = read
    n = len(view)
    sealer = _Sealer(aead, remote_index, counter, mtu, memoryview(out), out_off)
    if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
        count = tcp_segments(view, mss)
        if not count:
            return 0, out_off, 0
        if counter + count > REJECT_AFTER_MESSAGES:
            raise OverflowError("keypair exhausted")
        offload.TcpSegmenter.segment(view, view[0] >> 4 == 4, mss, _scratch, sealer.emit)
    elif gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and csum_start + csum_offset + 2 > n:
            return 0, out_off, 0
        if counter + 1 > REJECT_AFTER_MESSAGES:
            raise OverflowError("keypair exhausted")
        _scratch[:n] = view
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            offload.complete_partial_checksum(_scratch_view[:n], csum_start, csum_offset)
        sealer.emit(n)
    else:
        return 0, out_off, 0  # UDP GSO was not offered to the kernel
    return sealer.count, sealer.off, sealer.first


def segment_packet(pkt: bytes | bytearray | memoryview, vnet: bool) -> list[bytes] | None:
    """The plaintext packets ``seal_packet`` would seal for one TUN read (for a peer
    with no session yet, whose packets wait for the handshake); None if malformed."""
    read = _tun_read(pkt, vnet)
    if read is None:
        return None
    view, flags, gso, mss, csum_start, csum_offset = read
    n = len(view)
    packets: list[bytes] = []
    if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
        if not tcp_segments(view, mss):
            return None
        offload.TcpSegmenter.segment(
            view, view[0] >> 4 == 4, mss, _scratch, lambda k: packets.append(bytes(_scratch[:k]))
        )
    elif gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            if csum_start + csum_offset + 2 > n:
                return None
            out = bytearray(view)
            offload.complete_partial_checksum(memoryview(out), csum_start, csum_offset)
            packets.append(bytes(out))
        else:
            packets.append(bytes(view))
    else:
        return None
    return packets


def ip_total_length(dec: bytearray, p: int, plen: int) -> int:
    """The length an opened packet says it has; -1 if it is no IP packet that fits."""
    version = dec[p] >> 4
    if version == 4 and plen >= 20:
        total = (dec[p + 2] << 8) | dec[p + 3]
    elif version == 6 and plen >= 40:
        total = ((dec[p + 4] << 8) | dec[p + 5]) + 40
    else:
        return -1
    return total if 20 <= total <= plen else -1


def _tcp_info(dec: bytearray, p: int, total: int) -> tuple[int, int, int, int] | None:
    """(IP header length, IP + TCP header length, seq, flags) of a TCP packet that could
    be merged with its neighbours; None for anything else (fragments, IP options,
    extension headers)."""
    b0 = dec[p]
    if b0 == 0x45:
        if dec[p + 9] != offload.PROTO_TCP or dec[p + 6] & 0x3F or dec[p + 7]:
            return None
        ihl = 20
    elif b0 >> 4 == 6:
        if dec[p + 6] != offload.PROTO_TCP:
            return None
        ihl = 40
    else:
        return None
    if total < ihl + 20:
        return None
    hlen = ihl + (dec[p + ihl + 12] >> 4) * 4
    if hlen < ihl + 20 or hlen > total:
        return None
    seq = int.from_bytes(dec[p + ihl + 4 : p + ihl + 8], "big")
    return ihl, hlen, seq, dec[p + ihl + 13]


def _same_flow(dec: bytearray, a: int, b: int, ihl: int, hlen: int) -> bool:
    """Headers at ``a`` and ``b`` equal but for what differs within one run: IP length,
    ID and checksum; TCP sequence number, flags and checksum."""
    t = ihl
    ip: tuple[tuple[int, int], ...] = (
        ((0, 2), (6, 10), (12, t + 4)) if ihl == 20 else ((0, 4), (6, t + 4))
    )
    spans = (*ip, (t + 8, t + 13), (t + 14, t + 16), (t + 18, hlen))
    return all(dec[a + i : a + j] == dec[b + i : b + j] for i, j in spans)


class _Run:
    """A TCP run being merged: the item starts at ``item`` (its virtio header)."""

    __slots__ = ("count", "flags", "hlen", "ihl", "item", "mss", "next_seq", "size")

    def __init__(self, item: int, ihl: int, hlen: int, seq: int, total: int) -> None:
        self.item, self.ihl, self.hlen = item, ihl, hlen
        self.mss = total - hlen
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.size = total
        self.count = 1
        self.flags = offload.TCP_ACK


def _finish_run(dec: bytearray, run: _Run, items: list[tuple[int, int, int]]) -> None:
    item, h, size = run.item, run.item + VNET_HDR_LEN, run.size
    if run.count == 1:
        dec[item:h] = _VHDR_VALID
        items.append((item, VNET_HDR_LEN + size, 1))
        return
    ihl = run.ihl
    v4 = ihl == 20
    hdr = memoryview(dec)[h : h + run.hlen]
    if v4:
        _pack_be16(dec, h + 2, size)
        dec[h + 10] = dec[h + 11] = 0
        _pack_le16(dec, h + 10, offload.finish_checksum(int.from_bytes(dec[h : h + 20], "little")))
    else:
        _pack_be16(dec, h + 4, size - 40)
    dec[h + ihl + 13] = run.flags
    psum = offload.pseudo_sum(hdr, v4, offload.PROTO_TCP, size - ihl) % 0xFFFF
    _pack_le16(dec, h + ihl + 16, psum or 0xFFFF)
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if v4 else VIRTIO_NET_HDR_GSO_TCPV6
    VNET_HDR.pack_into(dec, item, VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, run.hlen, run.mss, ihl, 16)
    items.append((item, VNET_HDR_LEN + size, run.count))


def _extends(dec: bytearray, run: _Run, p: int, total: int, info: tuple[int, ...]) -> bool:
    ihl, hlen, seq, flags = info
    payload = total - hlen
    return (
        run.count < MAX_COALESCE
        and run.flags == offload.TCP_ACK
        and run.size - run.hlen == run.mss * run.count  # no short segment yet
        and ihl == run.ihl
        and hlen == run.hlen
        and seq == run.next_seq
        and 0 < payload <= run.mss
        and flags & ~offload.TCP_PSH == offload.TCP_ACK
        and run.size + payload <= MAX_PACKET
        and _same_flow(dec, run.item + VNET_HDR_LEN, p, ihl, hlen)
    )


def open_messages(
    aead: Aead,
    replay: ReplayWindow,
    local_index: int,
    buf: bytes | bytearray | memoryview,
    start: int,
    end: int,
    seg: int,
    dec: bytearray,
    dec_off: int,
    coalesce: bool,
) -> tuple[int, int, list[tuple[int, int, int]], int, int, int]:
    """Open the transport messages for ``local_index`` in ``buf[start:end]`` (each
    ``seg`` bytes, the last maybe shorter) into ``dec`` from ``dec_off``.

    Returns (offset of the first message not consumed, end of what was written to
    ``dec``, the items as (offset, length, packets), messages that failed authentication
    or the replay window, messages that opened to no valid IP packet, keepalives)."""
    view = memoryview(buf)
    dview = memoryview(dec)
    items: list[tuple[int, int, int]] = []
    failed = malformed = keepalives = 0
    cap = len(dec)
    cursor = dec_off
    run: _Run | None = None
    pos = start
    seg = max(seg, 1)
    while pos < end:
        mend = min(pos + seg, end)
        mlen = mend - pos
        if (
            mlen < MESSAGE_OVERHEAD
            or view[pos] != MESSAGE_TRANSPORT
            or any(view[pos + 1 : pos + 4])
        ):
            break
        index, counter = _index_counter(view, pos + 4)
        if index != local_index:
            break
        clen = mlen - MESSAGE_OVERHEAD
        p = cursor + VNET_HDR_LEN
        if p + clen > cap:
            break
        try:
            aead.decrypt_into(
                _NONCE_PREFIX + counter.to_bytes(8, "little"),
                view[pos + TRANSPORT_HEADER_SIZE : mend],
                None,
                dview[p : p + clen],
            )
        except InvalidTag:
            failed += 1
            pos = mend
            continue
        pos = mend
        if not replay.check_and_update(counter):
            failed += 1
            continue
        if clen == 0:
            keepalives += 1
            continue
        total = ip_total_length(dec, p, clen)
        if total < 0:
            malformed += 1
            continue
        info = _tcp_info(dec, p, total) if coalesce else None
        if run is not None:
            if info is not None and _extends(dec, run, p, total, info):
                payload = total - run.hlen
                dec[cursor : cursor + payload] = dec[p + run.hlen : p + total]
                cursor += payload
                run.size += payload
                run.count += 1
                run.next_seq = (run.next_seq + payload) & 0xFFFFFFFF
                run.flags = info[3]
                continue
            _finish_run(dec, run, items)
            run = None
        if info is not None and info[3] == offload.TCP_ACK and total > info[1]:
            run = _Run(cursor, info[0], info[1], info[2], total)
        else:
            dec[cursor:p] = _VHDR_VALID
            items.append((cursor, VNET_HDR_LEN + total, 1))
        cursor = p + total
    if run is not None:
        _finish_run(dec, run, items)
    return pos, cursor, items, failed, malformed, keepalives
