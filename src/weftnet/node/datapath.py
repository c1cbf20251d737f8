"""The data plane: TUN <-> WireGuard <-> UDP, in batches.

Outbound, one TUN read gives a packet or a TCP super-packet; it is cut into segments
(offload.TcpSegmenter), each sealed straight into a send buffer, and consecutive
messages to one endpoint leave in one ``sendmsg`` with UDP_SEGMENT (UDP GSO): the kernel
splits them into datagrams. Inbound, the socket has UDP_GRO, so one ``recvmsg`` returns
many datagrams of one flow glued together with their size in a control message; each is
opened into a receive buffer, and runs of TCP segments of one flow are written to the
TUN as a single super-packet (GSO write), the rest one by one.

Everything that is not transport data (handshakes, cookie replies, timers) goes to the
pure ``Device``; this module only moves bytes and calls it.

The ``Bind`` is the seam to what chooses paths (wireguard-go's conn.Bind, which
Tailscale's magicsock implements): it owns every peer's endpoint, sends to
pseudo-endpoints (a relay region) and reads what is not WireGuard (disco, STUN). The
data plane only tells it "this peer authenticated from that source". ``UdpBind`` is
plain WireGuard: the endpoint roams to the source of authenticated packets;
``weftnet.magicsock.MagicSock`` is the tailnet's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from weftnet import sockmark
from weftnet.dns import SERVICE_V4, SERVICE_V6
from weftnet.endpoint import RELAY_PREFIX, Endpoint, canonical
from weftnet.node import offload
from weftnet.node.filter import PacketFilter
from weftnet.node.localnets import LocalDestinations
from weftnet.node.vnet import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
    VNET_HDR_LEN,
)
from weftnet.wireguard.constants import PADDING_MULTIPLE, REJECT_AFTER_TIME_S
from weftnet.wireguard.device import Device, Peer, Transmit
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import MESSAGE_TRANSPORT, TRANSPORT_HEADER_SIZE
from weftnet.wireguard.session import Keypair

log = logging.getLogger("weftd.datapath")

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send with GSO, value = segment size
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams
MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in older kernels
MAX_GSO_BYTES = 65000  # a GSO send must fit one 64 KiB UDP datagram
SEND_BUF_SIZE = 256 * 1024  # sealed output of several super-packets
RECV_BUF_SIZE = 65536 + 4096  # one coalesced GRO read
DEC_BUF_SIZE = 512 * 1024  # plaintext of several GRO reads, kept until the TUN flush
MAX_READS_PER_WAKEUP = 16  # bound each reader callback so both directions get a turn
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024

_transport_hdr = struct.Struct("<IIQ")
_unpack_transport = _transport_hdr.unpack_from
_be16 = struct.Struct(">H")
_pack_be16 = _be16.pack_into
_pack_le16 = struct.Struct("<H").pack_into
MAX_COALESCE = 64  # segments merged into one TUN write at most


@functools.cache
def _header_mask(length: int, tcp_at: int) -> int:
    """All-ones over ``length`` header bytes except what differs within one TCP run:
    sequence number, flags and checksum (byte offsets relative to the TCP header at
    ``tcp_at``)."""
    keep = bytearray(b"\xff" * length)
    for r in (*range(4, 8), 13, 16, 17):
        keep[tcp_at + r] = 0
    return int.from_bytes(keep, "big")


# The resolver's addresses, as they appear in a packet's destination field.
_SERVICE_V4 = ipaddress.IPv4Address(SERVICE_V4).packed
_SERVICE_V6 = ipaddress.IPv6Address(SERVICE_V6).packed
_VHDR_VALID = VNET_HDR.pack(VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0)


@dataclass
class Counters:
    rx_packets: int = 0
    tx_packets: int = 0
    drop_replay_or_auth: int = 0
    drop_unknown_index: int = 0
    drop_bad_source: int = 0
    drop_no_peer: int = 0
    drop_malformed: int = 0
    drop_filtered: int = 0  # decrypted, but the packet filter does not let it in
    drop_service_ip: int = 0  # decrypted, but to the resolver's address: local clients only
    drop_not_local: int = 0  # decrypted, but to none of our addresses or served routes
    drop_handshake: dict[str, int] = field(default_factory=dict)

    def handshake_drop(self, reason: str) -> None:
        self.drop_handshake[reason] = self.drop_handshake.get(reason, 0) + 1


def make_socket(port: int) -> socket.socket:
    """One dual-stack UDP socket with GRO on and large buffers."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE as root
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    with contextlib.suppress(OSError):  # not Linux: one datagram per read
        s.setsockopt(SOL_UDP, UDP_GRO, 1)
    sockmark.mark(s)  # WireGuard, disco and STUN bypass weftd's routes (docs/routes.md)
    s.bind(("::", port))
    s.setblocking(False)
    return s


class Bind(Protocol):
    """What the data plane sends through besides its UDP socket, and reports to."""

    def send_to_pseudo(self, peer_key: bytes, ep: Endpoint, data: bytes) -> None:
        """Send ``data`` for the peer with ``peer_key`` to a pseudo-endpoint (a relay
        region, ``("relay:<region>", 0)``), not an IP address."""

    def send_to_pseudo_batch(self, peer_key: bytes, ep: Endpoint, data: bytes, seg: int) -> None:
        """Several transport messages for one peer to a pseudo-endpoint at once: ``data``
        holds them back to back, each ``seg`` bytes but the last, which may be shorter
        (the layout of a UDP GSO send)."""

    def receive_other(self, data: bytes, src: Endpoint) -> bool:
        """A UDP datagram that is not WireGuard (disco, STUN); False: not ours, dropped."""

    def authenticated(self, peer: Peer, src: Endpoint) -> None:
        """``peer`` proved itself (transport data or a handshake) from ``src``, which is
        not its endpoint. Called only then, so at most once per batch while it differs."""


class UdpBind:
    """Plain WireGuard: the UDP socket only, endpoints roam to authenticated sources."""

    def send_to_pseudo(self, peer_key: bytes, ep: Endpoint, data: bytes) -> None:
        log.debug("no relay in plain WireGuard mode: dropped a datagram for %s", ep)

    def send_to_pseudo_batch(self, peer_key: bytes, ep: Endpoint, data: bytes, seg: int) -> None:
        log.debug("no relay in plain WireGuard mode: dropped datagrams for %s", ep)

    def receive_other(self, data: bytes, src: Endpoint) -> bool:
        return False

    def authenticated(self, peer: Peer, src: Endpoint) -> None:
        if not src[0].startswith(RELAY_PREFIX):
            peer.endpoint = src  # whitepaper section 2.1: the endpoint roams


class DataPlane:
    def __init__(
        self,
        device: Device,
        tun_fd: int,
        sock: socket.socket,
        clock: Callable[[], float] = time.monotonic,
        bind: Bind | None = None,
    ) -> None:
        self.device = device
        self.tun_fd = tun_fd
        self.sock = sock
        self.clock = clock
        self.counters = Counters()
        self.on_change: Callable[[], None] = lambda: None  # re-arm the timer
        self.bind: Bind = UdpBind()
        self.set_bind(bind or self.bind)
        # Tailnet mode: what may reach this node (None: everything, as plain WireGuard).
        self.filter: PacketFilter | None = None
        # Tailnet mode: where decrypted packets may go (node.localnets); None: anywhere.
        self.local: LocalDestinations | None = None
        self._tun_buf = bytearray(VNET_HDR_LEN + 65536)
        self._tun_view = memoryview(self._tun_buf)
        self._scratch = bytearray(65536 + 64)
        self._scratch_view = memoryview(self._scratch)
        self._out = bytearray(SEND_BUF_SIZE)
        self._out_view = memoryview(self._out)
        self._out_len = 0
        # batches: [sockaddr, start, end, seg_size, count, closed, peer]
        self._batches: list[list] = []
        self._cur: list | None = None
        self._recv_buf = bytearray(RECV_BUF_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self._dec = bytearray(DEC_BUF_SIZE)
        self._dec_view = memoryview(self._dec)
        self._dec_len = 0
        self._rx: list[tuple[int, int]] = []  # (offset, length) of plaintext packets
        self._route_cache: dict[bytes, Peer | None] = {}
        self._src_cache: dict[bytes, Peer | None] = {}
        self._sockaddr_cache: dict[Endpoint, tuple] = {}
        self._ep_cache: dict[tuple, Endpoint] = {}
        self._sent_peers: set[Peer] = set()
        self._recv_peers: dict[Peer, tuple[Keypair, bool]] = {}
        self._segmenter = offload.TcpSegmenter()
        # per-emit state
        self._kp: Keypair | None = None
        self._peer: Peer | None = None
        self._plain: list[bytes] | None = None

    def set_bind(self, bind: Bind) -> None:
        """Send and receive through ``bind`` from now on (the path layer starting or
        stopping); the previous bind is forgotten."""
        self.bind = bind
        self._authenticated = bind.authenticated
        self._send_to_pseudo = bind.send_to_pseudo
        self._send_to_pseudo_batch = bind.send_to_pseudo_batch

    def config_changed(self) -> None:
        """Forget cached routing decisions (peers or allowed IPs changed)."""
        self._route_cache.clear()
        self._src_cache.clear()

    # -- sending ----------------------------------------------------------------------

    def _sockaddr(self, ep: Endpoint) -> tuple:
        sa = self._sockaddr_cache.get(ep)
        if sa is None:
            host, port = ep
            if host.startswith(RELAY_PREFIX):
                return ("relay", ep)
            if ipaddress.ip_address(host).version == 4:
                host = "::ffff:" + host
            sa = (host, port, 0, 0)
            self._sockaddr_cache[ep] = sa
        return sa

    def send_transmits(self, transmits: list[Transmit]) -> None:
        for t in transmits:
            if t.endpoint[0].startswith(RELAY_PREFIX):
                if t.peer_key:
                    self._send_to_pseudo(t.peer_key, t.endpoint, t.data)
                else:
                    log.debug("dropped a datagram for %s with no peer key", t.endpoint)
                continue
            self.send_raw(t.data, t.endpoint)
        if transmits:
            self.on_change()

    def send_raw(self, data: bytes, ep: Endpoint) -> None:
        """One datagram straight out of the UDP socket (disco, STUN)."""
        try:
            self.sock.sendto(data, self._sockaddr(ep))
        except OSError as e:
            log.debug("send to %s failed: %s", ep, e)

    def receive_from_relay(self, data: bytes, src_key: bytes, region: str) -> None:
        """A datagram the relay delivered from the peer with node key ``src_key``."""
        peer = self.device.peers.get(src_key)
        if peer is None:
            self.counters.drop_no_peer += 1
            return
        now = self.clock()
        src = Endpoint(RELAY_PREFIX + region, 0)
        if data and 0 < data[0] < MESSAGE_TRANSPORT and not any(data[1:4]):
            # A handshake message: what answers it (a cookie reply has no peer of its
            # own) goes back through the relay to the key it came from.
            self._handshake(data, src, now, src_key)
            return
        self._inbound(memoryview(data), src, now)
        self._flush_tun()
        self._after_receive(now)

    def receive_from_relay_batch(
        self, data: bytes | memoryview, seg: int, src_key: bytes, region: str
    ) -> None:
        """Several datagrams the relay delivered from the peer with node key ``src_key``,
        back to back, each ``seg`` bytes but the last (the layout of a GRO read)."""
        view = memoryview(data)
        n = len(view)
        if seg <= 0:
            seg = n
        for off in range(0, n, seg):
            self.receive_from_relay(bytes(view[off : min(off + seg, n)]), src_key, region)

    def _emit(self, length: int) -> None:
        """A plaintext packet is in scratch[:length]: seal it for the current peer."""
        if self._plain is not None:
            self._plain.append(bytes(self._scratch[:length]))
            return
        kp = self._kp
        assert kp is not None and self._peer is not None
        padded = (length + PADDING_MULTIPLE - 1) & -PADDING_MULTIPLE
        if padded > self.device.mtu and length <= self.device.mtu:
            padded = self.device.mtu
        if padded > length:
            offload.pad_to(self._scratch, length, padded)
        msg_len = padded + TRANSPORT_HEADER_SIZE + 16
        if self._out_len + msg_len > SEND_BUF_SIZE:
            self._flush_sends()
        cur = self._cur
        if cur is not None and (
            cur[6] is not self._peer
            or cur[5]
            or msg_len > cur[3]
            or cur[4] >= MAX_GSO_SEGMENTS
            or cur[2] - cur[1] + msg_len > MAX_GSO_BYTES
        ):
            cur = None
        off = self._out_len
        kp.seal_into(self._out_view[off:], self._scratch_view[:padded])
        self._out_len = off + msg_len
        if cur is None:
            ep = self._peer.endpoint
            assert ep is not None
            cur = [self._sockaddr(ep), off, off + msg_len, msg_len, 1, False, self._peer]
            self._batches.append(cur)
            self._cur = cur
        else:
            cur[2] += msg_len
            cur[4] += 1
            if msg_len < cur[3]:
                cur[5] = True  # a shorter datagram can only be the last of a GSO send
        self._peer.tx_bytes += msg_len

    def _flush_sends(self) -> None:
        out = self._out_view
        sock = self.sock
        for sa, start, end, seg, count, _, peer in self._batches:
            if sa[0] == "relay":
                self._send_to_pseudo_batch(peer.public_key, sa[1], bytes(out[start:end]), seg)
                self.counters.tx_packets += count
                continue
            try:
                if count > 1:
                    sock.sendmsg(
                        [out[start:end]], [(SOL_UDP, UDP_SEGMENT, struct.pack("H", seg))], 0, sa
                    )
                else:
                    sock.sendto(out[start:end], sa)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.debug("send failed: %s", e)
            self.counters.tx_packets += count
        self._batches.clear()
        self._cur = None
        self._out_len = 0

    def on_tun_readable(self) -> None:
        now = self.clock()
        fd = self.tun_fd
        buf = self._tun_buf
        view = self._tun_view
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                break
            except OSError as e:
                log.warning("TUN read failed: %s", e)
                break
            if n <= VNET_HDR_LEN:
                continue
            self._outbound(view[:n], now)
        self._flush_sends()
        self._after_send(now)

    def _after_send(self, now: float) -> None:
        transmits: list[Transmit] = []
        device = self.device
        for peer in self._sent_peers:
            if peer.new_handshake_at is None:
                peer.data_sent(now, device.jitter())
            else:
                peer.any_authenticated_sent(now)
            transmits += device.after_send(peer, now)
        self._sent_peers.clear()
        if transmits:
            self.send_transmits(transmits)

    def _lookup_dst(self, dst: bytes) -> Peer | None:
        try:
            return self._route_cache[dst]
        except KeyError:
            peer = self.device.allowed_ips.lookup(dst)
            if len(self._route_cache) > 4096:
                self._route_cache.clear()
            self._route_cache[dst] = peer
            return peer

    def _outbound(self, frame: memoryview, now: float) -> None:
        flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
        pkt = frame[VNET_HDR_LEN:]
        version = pkt[0] >> 4
        if version == 4 and len(pkt) >= 20:
            dst = bytes(pkt[16:20])
        elif version == 6 and len(pkt) >= 40:
            dst = bytes(pkt[24:40])
        else:
            self.counters.drop_malformed += 1
            return
        peer = self._lookup_dst(dst)
        if peer is None:
            self.counters.drop_no_peer += 1
            return
        if self.filter is not None:
            self.filter.track_outbound(pkt, now)  # once per read: a super-packet is one flow
        kp = self.device.sending_keypair(peer, now)
        if kp is None or peer.endpoint is None:
            self._plain = []
        else:
            self._plain = None
            self._kp = kp
            self._peer = peer
            self._sent_peers.add(peer)
        gso = gso_type & ~0x80
        if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
            if not self._segmenter.segment(pkt, version == 4, gso_size, self._scratch, self._emit):
                self.counters.drop_malformed += 1
        elif gso == VIRTIO_NET_HDR_GSO_NONE:
            n = len(pkt)
            if n > len(self._scratch) - 16:
                self.counters.drop_malformed += 1
                return
            self._scratch[:n] = pkt
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                sv = self._scratch_view[:n]
                if csum_start + csum_offset + 2 > n:
                    self.counters.drop_malformed += 1
                    return
                offload.complete_partial_checksum(sv, csum_start, csum_offset)
            self._emit(n)
        else:
            self.counters.drop_malformed += 1  # UDP GSO was not offered to the kernel
        if self._plain is not None:
            plain, self._plain = self._plain, None
            if plain:
                self.send_transmits(self.device.send_packets(peer, plain, now))

    # -- receiving --------------------------------------------------------------------

    def on_udp_readable(self) -> None:
        now = self.clock()
        sock = self.sock
        rbuf = [self._recv_buf]
        rview = self._recv_view
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n, anc, _flags, addr = sock.recvmsg_into(rbuf, 64)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("UDP receive failed: %s", e)
                break
            if n == 0:
                self.counters.drop_malformed += 1
                continue
            seg = n
            for level, kind, data in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = int.from_bytes(data[:2], "little") or n
            src = self._ep_cache.get(addr)
            if src is None:
                src = canonical(addr)
                if len(self._ep_cache) > 1024:
                    self._ep_cache.clear()
                self._ep_cache[addr] = src
            if self._dec_len + n + 4096 > DEC_BUF_SIZE:
                self._flush_tun()
            off = 0
            while off < n:
                end = off + seg if off + seg < n else n
                self._inbound(rview[off:end], src, now)
                off = end
        self._flush_tun()
        self._after_receive(now)

    def _after_receive(self, now: float) -> None:
        if not self._recv_peers:
            return
        transmits: list[Transmit] = []
        device = self.device
        for peer, (kp, had_data) in self._recv_peers.items():
            peer.data_received(now, had_data)
            transmits += device.after_receive(kp, now)
        self._recv_peers.clear()
        if transmits:
            self.send_transmits(transmits)

    def _inbound(self, msg: memoryview, src: Endpoint, now: float) -> None:
        mlen = len(msg)
        if mlen >= 32 and msg[0] == MESSAGE_TRANSPORT:
            _, index, counter = _unpack_transport(msg)
            kp = self.device.indices.get(index)
            if type(kp) is not Keypair or msg[1] or msg[2] or msg[3]:
                self.counters.drop_unknown_index += 1
                return
            if now - kp.created_at >= REJECT_AFTER_TIME_S:
                self.counters.drop_replay_or_auth += 1
                return
            off = self._dec_len
            plen = kp.open_into(counter, msg[TRANSPORT_HEADER_SIZE:], self._dec_view[off:])
            if plen < 0:
                self.counters.drop_replay_or_auth += 1
                return
            peer = kp.peer
            assert isinstance(peer, Peer)
            if kp is not peer.current:
                self.send_transmits(self.device.received_on(kp, now))
            if peer.endpoint != src:
                self._authenticated(peer, src)
            peer.rx_bytes += mlen
            had = self._recv_peers.get(peer)
            if plen == 0:  # keepalive
                if had is None:
                    self._recv_peers[peer] = (kp, False)
                return
            self._recv_peers[peer] = (kp, True)
            dec = self._dec
            v = dec[off] >> 4
            if v == 4 and plen >= 20:
                total = (dec[off + 2] << 8) | dec[off + 3]
                srcip = bytes(dec[off + 12 : off + 16])
                # 100.100.100.100: the two first octets are a cheap pre-check
                to_service = dec[off + 16] == 100 == dec[off + 17] and (
                    dec[off + 16 : off + 20] == _SERVICE_V4
                )
            elif v == 6 and plen >= 40:
                total = ((dec[off + 4] << 8) | dec[off + 5]) + 40
                srcip = bytes(dec[off + 8 : off + 24])
                to_service = dec[off + 24 : off + 40] == _SERVICE_V6
            else:
                self.counters.drop_malformed += 1
                return
            if total > plen or total < 20:
                self.counters.drop_malformed += 1
                return
            try:
                owner = self._src_cache[srcip]
            except KeyError:
                owner = self.device.allowed_ips.lookup(srcip)
                if len(self._src_cache) > 4096:
                    self._src_cache.clear()
                self._src_cache[srcip] = owner
            if owner is not peer:
                self.counters.drop_bad_source += 1
                return
            if to_service:  # S2: a peer never reaches our resolver (docs/dns.md)
                self.counters.drop_service_ip += 1
                return
            local = self.local
            if local is not None and not (
                local.allows4(bytes(dec[off + 16 : off + 20]))
                if v == 4
                else local.allows6(bytes(dec[off + 24 : off + 40]))
            ):
                self.counters.drop_not_local += 1
                return
            flt = self.filter
            if flt is not None and not flt.allow_inbound(dec, off, total, now):
                self.counters.drop_filtered += 1
                return
            self._rx.append((off, total))
            self._dec_len = off + total
            self.counters.rx_packets += 1
            return
        # Not WireGuard (type 1-4 then three zero bytes): disco or STUN, for the path picker.
        if mlen >= 4 and (msg[0] > MESSAGE_TRANSPORT or msg[1] or msg[2] or msg[3]):
            if not self.bind.receive_other(bytes(msg), src):
                self.counters.drop_malformed += 1
            return
        self._handshake(bytes(msg), src, now)

    def _handshake(self, data: bytes, src: Endpoint, now: float, relay_key: bytes = b"") -> None:
        """A handshake message from ``src`` (through the relay: from ``relay_key``)."""
        try:
            transmits, peer = self.device.handle_handshake(data, src, now)
        except ProtocolError as e:
            self.counters.handshake_drop(str(e))
            log.debug("dropped handshake message from %s: %s", src, e)
            return
        if peer is not None and peer.endpoint != src:
            self._authenticated(peer, src)
        if relay_key:
            transmits = [
                t if t.peer_key else Transmit(t.data, t.endpoint, relay_key) for t in transmits
            ]
        self.send_transmits(transmits)

    def _flush_tun(self) -> None:
        """Write the opened packets to the TUN: runs of one TCP flow as one super-packet."""
        rx = self._rx
        if not rx:
            self._dec_len = 0
            return
        dv = self._dec_view
        fd = self.tun_fd
        tcp_info = self._tcp_info
        i = 0
        n = len(rx)
        while i < n:
            off, total = rx[i]
            info = tcp_info(off, total)
            if info is not None and info[4] == offload.TCP_ACK and i + 1 < n:
                hv, mask, hlen, seq, _flags = info
                mss = total - hlen
                nxt = seq + mss
                size = total
                last_flags = offload.TCP_ACK
                j = i + 1
                while j < n and j - i < MAX_COALESCE and last_flags == offload.TCP_ACK:
                    o2, t2 = rx[j]
                    info2 = tcp_info(o2, t2)
                    if info2 is None:
                        break
                    hv2, _, hlen2, seq2, flags2 = info2
                    plen2 = t2 - hlen2
                    if (
                        hlen2 != hlen
                        or (hv ^ hv2) & mask
                        or seq2 != nxt & 0xFFFFFFFF
                        or plen2 > mss
                        or plen2 == 0
                        or flags2 & ~offload.TCP_PSH != offload.TCP_ACK
                        or size + plen2 > 65535
                    ):
                        break
                    nxt += plen2
                    size += plen2
                    last_flags = flags2
                    j += 1
                    if plen2 < mss:
                        break  # a short segment ends a run
                if j - i > 1:
                    self._write_coalesced(i, j, hlen, mss, last_flags)
                    i = j
                    continue
            try:
                os.writev(fd, [_VHDR_VALID, dv[off : off + total]])
            except OSError as e:
                log.debug("TUN write failed: %s", e)
            i += 1
        rx.clear()
        self._dec_len = 0

    def _tcp_info(self, off: int, total: int) -> tuple[int, int, int, int, int] | None:
        """For a TCP packet that could be coalesced: (its header from the addresses on as an
        integer, the mask of the bits that must match in a run, header length, seq, flags).
        """
        d = self._dec
        b0 = d[off]
        if b0 == 0x45:
            if d[off + 9] != offload.PROTO_TCP or d[off + 6] & 0x3F or d[off + 7]:
                return None  # fragments are never coalesced
            ihl = 20
            start = 12  # addresses, ports, then the rest of the TCP header
        elif b0 >> 4 == 6:
            if d[off + 6] != offload.PROTO_TCP:
                return None
            ihl = 40
            start = 8
        else:
            return None
        t = off + ihl
        if total < ihl + 20:
            return None
        hlen = ihl + (d[t + 12] >> 4) * 4
        if hlen > total or hlen < ihl + 20:
            return None
        hv = int.from_bytes(d[off + start : off + hlen], "big")
        mask = _header_mask(hlen - start, ihl - start)
        seq = int.from_bytes(d[t + 4 : t + 8], "big")
        return hv, mask, hlen, seq, d[t + 13]

    def _write_coalesced(self, i: int, j: int, hlen: int, mss: int, last_flags: int) -> None:
        rx = self._rx
        dv = self._dec_view
        off0, _ = rx[i]
        hdr = bytearray(dv[off0 : off0 + hlen])
        iov: list[memoryview | bytes | bytearray] = [b"", hdr]
        payload = 0
        for k in range(i, j):
            o, t = rx[k]
            iov.append(dv[o + hlen : o + t])
            payload += t - hlen
        v4 = hdr[0] >> 4 == 4
        ihl = 20 if v4 else 40
        total = hlen + payload
        if v4:
            _pack_be16(hdr, 2, total)
            hdr[10] = 0
            hdr[11] = 0
            _pack_le16(hdr, 10, offload.finish_checksum(int.from_bytes(hdr[:20], "little")))
        else:
            _pack_be16(hdr, 4, total - 40)
        hdr[ihl + 13] = last_flags
        psum = offload.pseudo_sum(memoryview(hdr), v4, offload.PROTO_TCP, total - ihl) % 0xFFFF
        _pack_le16(hdr, ihl + 16, psum or 0xFFFF)
        gso = VIRTIO_NET_HDR_GSO_TCPV4 if v4 else VIRTIO_NET_HDR_GSO_TCPV6
        iov[0] = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, hlen, mss, ihl, 16)
        try:
            os.writev(self.tun_fd, iov)
        except OSError as e:
            log.debug("TUN write failed: %s", e)


class StackDataPlane(DataPlane):
    """The data plane of the userspace mode: no TUN. Packets the filter lets in go to
    ``deliver`` (the in-process TCP/IP stack, weftnet.node.userspace.net), and the stack
    hands its packets to ``send_packets``, which takes them exactly as if read from a TUN
    (routing to a peer, flow tracking for the filter, WireGuard, batching).

    The TUN fast path is untouched: this class only overrides the TUN flush and adds
    ``send_packets``, its own loop over the stack's packets."""

    def __init__(
        self,
        device: Device,
        sock: socket.socket,
        clock: Callable[[], float] = time.monotonic,
        bind: Bind | None = None,
    ) -> None:
        super().__init__(device, -1, sock, clock, bind)
        self.deliver: Callable[[list[bytes]], None] = lambda packets: None

    def on_tun_readable(self) -> None:  # pragma: no cover - there is no TUN
        raise RuntimeError("no TUN in userspace mode")

    def send_packets(self, packets: list[bytes]) -> None:
        """IP packets from the stack, as if the host had written them to a TUN: routed
        to a peer, tracked by the filter, sealed and batched like ``_outbound`` does, but
        with the peer and keypair looked up once per run of packets to one address (the
        stack sends a flow's segments together) and no virtio header to parse."""
        if not packets:
            return
        now = self.clock()
        counters = self.counters
        flt = self.filter
        scratch = self._scratch
        limit = len(scratch) - 16
        device = self.device
        emit = self._emit
        cur_dst = None
        peer: Peer | None = None
        for pkt in packets:
            n = len(pkt)
            version = pkt[0] >> 4 if n else 0
            if version == 4 and 20 <= n <= limit:
                dst = pkt[16:20]
            elif version == 6 and 40 <= n <= limit:
                dst = pkt[24:40]
            else:
                counters.drop_malformed += 1
                continue
            if dst != cur_dst:
                self._send_plain(peer, now)
                cur_dst = dst
                peer = self._lookup_dst(dst)
                if peer is not None:
                    kp = device.sending_keypair(peer, now)
                    if kp is None or peer.endpoint is None:
                        self._plain = []  # queued until a handshake completes
                    else:
                        self._kp = kp
                        self._peer = peer
                        self._sent_peers.add(peer)
            if peer is None:
                counters.drop_no_peer += 1
                continue
            if flt is not None:
                flt.track_outbound(pkt, now)
            scratch[:n] = pkt
            emit(n)
        self._send_plain(peer, now)
        self._flush_sends()
        self._after_send(now)

    def _send_plain(self, peer: Peer | None, now: float) -> None:
        """Packets held for ``peer`` while it has no session: to the device's queue."""
        plain = self._plain
        if plain is not None:
            self._plain = None
            if plain and peer is not None:
                self.send_transmits(self.device.send_packets(peer, plain, now))

    def _flush_tun(self) -> None:
        rx = self._rx
        if not rx:
            self._dec_len = 0
            return
        dec = self._dec
        packets = [bytes(dec[off : off + total]) for off, total in rx]
        rx.clear()
        self._dec_len = 0
        self.deliver(packets)
