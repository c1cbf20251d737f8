"""The data plane: TUN <-> WireGuard <-> UDP, in batches.

Outbound, one TUN read gives a packet or a TCP super-packet; ``fastpath.seal_packet``
cuts it into segments and seals them straight into a send buffer, and consecutive
messages to one endpoint leave in one ``sendmsg`` with UDP_SEGMENT (UDP GSO): the kernel
splits them into datagrams. Inbound, the socket has UDP_GRO, so one ``recvmsg`` returns
many datagrams of one flow glued together with their size in a control message;
``fastpath.open_messages`` opens the run of them for one keypair into a decrypt buffer as
TUN writes, one TCP flow's consecutive segments merged into a single super-packet (GSO
write). Python sees each batch and each TUN write, not each packet: the per-packet work
is in the C extension (docs/dataplane.md), or its pure-Python reference where it is not
built.

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

import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from weftnet import fastpath, sockmark, udpsock
from weftnet.dns import SERVICE_V4, SERVICE_V6
from weftnet.endpoint import PSEUDO_PREFIXES, RELAY_PREFIX, Endpoint, canonical
from weftnet.fastpath.reference import MAX_PACKET, MAX_SEGMENTS, MESSAGE_OVERHEAD, segment_packet
from weftnet.node.filter import PacketFilter
from weftnet.node.localnets import LocalDestinations
from weftnet.node.vnet import VNET_HDR_LEN
from weftnet.udpsock import SOL_UDP, UDP_SEGMENT
from weftnet.wireguard.constants import REJECT_AFTER_TIME_S
from weftnet.wireguard.device import Device, Peer, Transmit
from weftnet.wireguard.errors import ProtocolError
from weftnet.wireguard.messages import MESSAGE_TRANSPORT
from weftnet.wireguard.session import Keypair

log = logging.getLogger("weftd.datapath")

MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in older kernels
MAX_GSO_BYTES = 65507  # a GSO send must fit one UDP datagram (IPv4: 65535 - 20 - 8)
SEND_BUF_SIZE = 512 * 1024  # sealed output of several super-packets
# The most one TUN read can seal to: every segment gains a header, a tag and padding.
OUT_RESERVE = MAX_PACKET + MAX_SEGMENTS * (MESSAGE_OVERHEAD + 16 + 120)
RECV_BUF_SIZE = 65536 + 4096  # one coalesced GRO read
DEC_BUF_SIZE = 512 * 1024  # plaintext of several GRO reads, kept until the TUN flush
DEC_RESERVE = RECV_BUF_SIZE  # one read's plaintext: a virtio header is smaller than a tag
MAX_READS_PER_WAKEUP = 16  # bound each reader callback so both directions get a turn

_unpack_index = struct.Struct("<I").unpack_from


def tso_max_size(mtu: int) -> int:
    """The TUN's gso_max_size for ``mtu``: TCP super-packets the kernel hands over then
    cut into as many segments as one UDP GSO send carries (45 at MTU 1420), so a TUN read
    leaves in one ``sendmsg``, and a receiver's GRO read, which stops short of 64 KiB,
    holds one whole super-packet: one TUN write at a weftd peer. The kernel's TCP keeps
    MAX_TCP_HEADER (about 320 bytes) of it for headers; the MSS counted is that of IPv4
    with timestamps. A read that still comes out larger is split over two sends."""
    per_send = max(MAX_GSO_BYTES // (mtu + MESSAGE_OVERHEAD), 1)
    return per_send * max(mtu - 52, 1) + 400


# The resolver's addresses, as they appear in a packet's destination field.
_SERVICE_V4 = ipaddress.IPv4Address(SERVICE_V4).packed
_SERVICE_V6 = ipaddress.IPv6Address(SERVICE_V6).packed


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
    # Through relays (counted per relay frame, never per packet): the rest went direct.
    relay_tx_bytes: int = 0  # sealed transport data handed to a relay
    relay_tx_packets: int = 0
    relay_rx_bytes: int = 0  # transport data from a relay that opened
    relay_rx_packets: int = 0  # ... and its packets that reached the TUN
    # What peers no longer on the device had counted (node.metrics sums them with the
    # live peers' counters, so totals only grow).
    retired_tx_bytes: int = 0
    retired_rx_bytes: int = 0
    retired_handshakes: int = 0  # handshakes completed
    retired_initiations: int = 0  # initiations sent by devices replaced since

    def handshake_drop(self, reason: str) -> None:
        self.drop_handshake[reason] = self.drop_handshake.get(reason, 0) + 1


def make_socket(port: int) -> socket.socket:
    """One dual-stack UDP socket with GRO on and large buffers."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udpsock.tune(s)
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
        if not src[0].startswith(PSEUDO_PREFIXES):
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
        self._tun_items: list[tuple[int, int]] = []  # (offset, length) of TUN writes in _dec
        self._coalesce = True  # merge a TCP flow's segments into one TUN write
        # The batch functions (C, or the pure reference: weftnet.fastpath.use).
        self._seal_packet = fastpath.seal_packet
        self._open_messages = fastpath.open_messages
        self._route_cache: dict[bytes, Peer | None] = {}
        self._src_cache: dict[bytes, Peer | None] = {}
        self._sockaddr_cache: dict[Endpoint, tuple] = {}
        self._ep_cache: dict[tuple, Endpoint] = {}
        self._sent_peers: set[Peer] = set()
        self._recv_peers: dict[Peer, tuple[Keypair, bool]] = {}

    def set_bind(self, bind: Bind) -> None:
        """Send and receive through ``bind`` from now on (the path layer starting or
        stopping); the previous bind is forgotten."""
        self.bind = bind
        self._authenticated = bind.authenticated
        self._send_to_pseudo = bind.send_to_pseudo
        self._send_to_pseudo_batch = bind.send_to_pseudo_batch

    def retire_peer(self, peer: Peer) -> None:
        """``peer`` leaves the device: what it counted stays in the totals."""
        c = self.counters
        c.retired_tx_bytes += peer.tx_bytes
        c.retired_rx_bytes += peer.rx_bytes
        c.retired_handshakes += peer.handshakes_completed

    def config_changed(self) -> None:
        """Forget cached routing decisions (peers or allowed IPs changed)."""
        self._route_cache.clear()
        self._src_cache.clear()

    # -- sending ----------------------------------------------------------------------

    def _sockaddr(self, ep: Endpoint) -> tuple:
        sa = self._sockaddr_cache.get(ep)
        if sa is None:
            host, port = ep
            if host.startswith(PSEUDO_PREFIXES):  # a relay, or an extra socket of the Bind
                return ("relay", ep)
            if ipaddress.ip_address(host).version == 4:
                host = "::ffff:" + host
            sa = (host, port, 0, 0)
            self._sockaddr_cache[ep] = sa
        return sa

    def send_transmits(self, transmits: list[Transmit]) -> None:
        counters = self.counters
        for t in transmits:
            # Transport data the device sealed (staged packets, keepalives) is counted
            # like the fast path's; a keepalive (no payload) is not a packet.
            transport = t.data[0] == MESSAGE_TRANSPORT
            packets = 1 if transport and len(t.data) > MESSAGE_OVERHEAD else 0
            counters.tx_packets += packets
            if t.endpoint[0].startswith(PSEUDO_PREFIXES):
                if t.peer_key:
                    self._send_to_pseudo(t.peer_key, t.endpoint, t.data)
                    if transport and t.endpoint[0].startswith(RELAY_PREFIX):
                        counters.relay_tx_bytes += len(t.data)
                        counters.relay_tx_packets += packets
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

    def receive_from_pseudo(self, data: bytes, src: Endpoint, seg: int = 0) -> None:
        """Datagrams the Bind received on a socket of its own (a birthday-probing extra
        socket), from the pseudo-endpoint ``src``: replies go back the same way. ``data``
        may be a GRO read: datagrams of ``seg`` bytes but the last (0: one datagram)."""
        now = self.clock()
        self._receive(data, len(data), seg or len(data), src, now)
        self._flush_tun()
        self._after_receive(now)

    def receive_from_relay(self, data: bytes, src_key: bytes, region: str) -> None:
        """A datagram the relay delivered from the peer with node key ``src_key``."""
        self.receive_from_relay_batch(data, len(data), src_key, region)

    def receive_from_relay_batch(
        self, data: bytes | bytearray | memoryview, seg: int, src_key: bytes, region: str
    ) -> None:
        """Several datagrams the relay delivered from the peer with node key ``src_key``,
        back to back, each ``seg`` bytes but the last (the layout of a GRO read)."""
        peer = self.device.peers.get(src_key)
        counters = self.counters
        if peer is None:
            counters.drop_no_peer += 1
            return
        now = self.clock()
        n = len(data)
        rx_bytes, rx_packets = peer.rx_bytes, counters.rx_packets
        # A handshake message is answered through the relay to the key it came from (a
        # cookie reply has no peer of its own).
        self._receive(data, n, seg if 0 < seg < n else n, Endpoint(RELAY_PREFIX + region, 0),
                      now, src_key)  # fmt: skip
        counters.relay_rx_bytes += peer.rx_bytes - rx_bytes
        counters.relay_rx_packets += counters.rx_packets - rx_packets
        self._flush_tun()
        self._after_receive(now)

    def _seal(self, peer: Peer, kp: Keypair, pkt: memoryview | bytes, vnet: bool) -> None:
        """Seal one TUN read (``vnet``: with its virtio header) or one packet for ``peer``
        into the send buffer and queue its messages for a GSO send."""
        if self._out_len + OUT_RESERVE > SEND_BUF_SIZE:
            self._flush_sends()
        start = self._out_len
        try:
            count, end, size = self._seal_packet(
                kp.send_fast, kp.remote_index, kp.send_counter, pkt, vnet, self.device.mtu,
                self._out, start,
            )  # fmt: skip
        except OverflowError:  # the keypair's counters ran out mid-batch: rekeying anyway
            self.counters.drop_no_peer += 1
            return
        if not count:
            self.counters.drop_malformed += 1
            return
        kp.send_counter += count
        peer.tx_bytes += end - start
        self._out_len = end
        self._sent_peers.add(peer)
        self._queue(peer, start, end, size, count)

    def _queue(self, peer: Peer, start: int, end: int, size: int, count: int) -> None:
        """Messages out[start:end] for ``peer`` (``count`` of ``size`` bytes, the last
        maybe shorter) into GSO sends: each of equal datagrams but a shorter last one, at
        most MAX_GSO_SEGMENTS and MAX_GSO_BYTES, extending the current send if they can."""
        last = end - start - (count - 1) * size
        # Messages of exactly ``size``; one message alone may close the current send.
        full = 0 if count == 1 else (count if last == size else count - 1)
        pos = start
        while full:
            cur = self._send_for(peer, pos, size, last=False)
            room = min(MAX_GSO_SEGMENTS - cur[4], (MAX_GSO_BYTES - (cur[2] - cur[1])) // size)
            k = min(max(room, 1), full)
            cur[2] += k * size
            cur[4] += k
            pos += k * size
            full -= k
        if pos == end:
            return
        cur = self._send_for(peer, pos, last, last=True)
        cur[2] += last
        cur[4] += 1
        if last < cur[3]:
            cur[5] = True  # a shorter datagram can only be the last of a GSO send

    def _send_for(self, peer: Peer, pos: int, size: int, last: bool) -> list:
        """The GSO send a datagram of ``size`` at out[pos] joins: the current one if it
        is ``peer``'s, still open, ends at ``pos``, has room, and its datagrams are
        ``size`` (``last``: at least ``size``; a shorter one closes it); else a new one."""
        cur = self._cur
        if (
            cur is None or cur[6] is not peer or cur[5] or cur[2] != pos
            or (size > cur[3] if last else size != cur[3])
            or cur[4] >= MAX_GSO_SEGMENTS or cur[2] - cur[1] + size > MAX_GSO_BYTES
        ):  # fmt: skip
            return self._new_send(peer, pos, size)
        return cur

    def _new_send(self, peer: Peer, pos: int, seg: int) -> list:
        ep = peer.endpoint
        assert ep is not None
        cur = [self._sockaddr(ep), pos, pos, seg, 0, False, peer]
        self._batches.append(cur)
        self._cur = cur
        return cur

    def _flush_sends(self) -> None:
        out = self._out_view
        sock = self.sock
        for sa, start, end, seg, count, _, peer in self._batches:
            if sa[0] == "relay":
                self._send_to_pseudo_batch(peer.public_key, sa[1], bytes(out[start:end]), seg)
                self.counters.tx_packets += count
                if sa[1][0].startswith(RELAY_PREFIX):
                    self.counters.relay_tx_packets += count
                    self.counters.relay_tx_bytes += end - start
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
        """One TUN read: a virtio header, then a packet or a TCP super-packet."""
        version = frame[VNET_HDR_LEN] >> 4
        n = len(frame) - VNET_HDR_LEN
        if version == 4 and n >= 20:
            dst = bytes(frame[VNET_HDR_LEN + 16 : VNET_HDR_LEN + 20])
        elif version == 6 and n >= 40:
            dst = bytes(frame[VNET_HDR_LEN + 24 : VNET_HDR_LEN + 40])
        else:
            self.counters.drop_malformed += 1
            return
        peer = self._lookup_dst(dst)
        if peer is None:
            self.counters.drop_no_peer += 1
            return
        if self.filter is not None:
            # once per read: a super-packet is one flow
            self.filter.track_outbound(frame[VNET_HDR_LEN:], now)
        kp = self.device.sending_keypair(peer, now)
        if kp is None or peer.endpoint is None:
            self._stage(peer, frame, True, now)
        else:
            self._seal(peer, kp, frame, True)

    def _stage(self, peer: Peer, pkt: memoryview | bytes, vnet: bool, now: float) -> None:
        """No session yet: the device keeps the packets (cut into segments) for after the
        handshake it starts."""
        plain = segment_packet(pkt, vnet)
        if plain is None:
            self.counters.drop_malformed += 1
        elif plain:
            self.send_transmits(self.device.send_packets(peer, plain, now))

    # -- receiving --------------------------------------------------------------------

    def on_udp_readable(self) -> None:
        now = self.clock()
        sock = self.sock
        rbuf = [self._recv_buf]
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
            seg = udpsock.gro_segment(anc, n)
            src = self._ep_cache.get(addr)
            if src is None:
                src = canonical(addr)
                if len(self._ep_cache) > 1024:
                    self._ep_cache.clear()
                self._ep_cache[addr] = src
            self._receive(self._recv_buf, n, seg, src, now)
        self._flush_tun()
        self._after_receive(now)

    def _receive(
        self,
        buf: bytes | bytearray | memoryview,
        n: int,
        seg: int,
        src: Endpoint,
        now: float,
        relay_key: bytes = b"",
    ) -> None:
        """Datagrams buf[:n] from ``src``, each ``seg`` bytes but the last: runs of
        transport data for a live keypair are opened in one batch call, the rest (handshakes,
        disco, STUN, unknown or expired keypairs) one by one."""
        indices = self.device.indices
        off = 0
        while off < n:
            end = off + seg if off + seg < n else n
            if end - off >= MESSAGE_OVERHEAD and buf[off] == MESSAGE_TRANSPORT:
                kp = indices.get(_unpack_index(buf, off + 4)[0])
                if (
                    type(kp) is Keypair
                    and not (buf[off + 1] or buf[off + 2] or buf[off + 3])
                    and now - kp.created_at < REJECT_AFTER_TIME_S
                ):
                    off = self._open_run(kp, buf, off, n, seg, src, now)
                    continue
            self._inbound(memoryview(buf)[off:end], src, now, relay_key)
            off = end

    def _open_run(
        self,
        kp: Keypair,
        buf: bytes | bytearray | memoryview,
        off: int,
        n: int,
        seg: int,
        src: Endpoint,
        now: float,
    ) -> int:
        """Open the run of messages for ``kp`` from ``off``; returns where it ended."""
        if self._dec_len + DEC_RESERVE > DEC_BUF_SIZE:
            self._flush_tun()
        pos, dec_end, items, failed, malformed, keepalives = self._open_messages(
            kp.recv_fast, kp.replay, kp.local_index, buf, off, n, seg, self._dec,
            self._dec_len, self._coalesce,
        )  # fmt: skip
        if pos == off:  # one message larger than the whole buffer: never valid
            self.counters.drop_malformed += 1
            return min(off + seg, n)
        self._dec_len = dec_end
        counters = self.counters
        if failed:
            counters.drop_replay_or_auth += failed
        if malformed:
            counters.drop_malformed += malformed
        if not (items or malformed or keepalives):
            return pos
        peer = kp.peer
        assert isinstance(peer, Peer)
        if kp is not peer.current:
            self.send_transmits(self.device.received_on(kp, now))
        if peer.endpoint != src:
            self._authenticated(peer, src)
        peer.rx_bytes += pos - off
        if items or malformed:
            self._recv_peers[peer] = (kp, True)
        elif peer not in self._recv_peers:
            self._recv_peers[peer] = (kp, False)
        if items:
            self._admit(peer, items, now)
        return pos

    def _admit(self, peer: Peer, items: list[tuple[int, int, int]], now: float) -> None:
        """Check each opened item (a packet, or a merged run of one TCP flow) against
        where it may come from and go to; queue what passes for the TUN."""
        dec = self._dec
        counters = self.counters
        flt = self.filter
        local = self.local
        tun = self._tun_items
        for off, length, packets in items:
            p = off + VNET_HDR_LEN
            v4 = dec[p] >> 4 == 4
            if v4:
                srcip = bytes(dec[p + 12 : p + 16])
                # 100.100.100.100: the two first octets are a cheap pre-check
                to_service = dec[p + 16] == 100 == dec[p + 17] and (
                    dec[p + 16 : p + 20] == _SERVICE_V4
                )
            else:
                srcip = bytes(dec[p + 8 : p + 24])
                to_service = dec[p + 24 : p + 40] == _SERVICE_V6
            try:
                owner = self._src_cache[srcip]
            except KeyError:
                owner = self.device.allowed_ips.lookup(srcip)
                if len(self._src_cache) > 4096:
                    self._src_cache.clear()
                self._src_cache[srcip] = owner
            if owner is not peer:
                counters.drop_bad_source += packets
                continue
            if to_service:  # S2: a peer never reaches our resolver (docs/dns.md)
                counters.drop_service_ip += packets
                continue
            if local is not None and not (
                local.allows4(bytes(dec[p + 16 : p + 20]))
                if v4
                else local.allows6(bytes(dec[p + 24 : p + 40]))
            ):
                counters.drop_not_local += packets
                continue
            if flt is not None and not flt.allow_inbound(dec, p, length - VNET_HDR_LEN, now):
                counters.drop_filtered += packets
                continue
            tun.append((off, length))
            counters.rx_packets += packets

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

    def _inbound(self, msg: memoryview, src: Endpoint, now: float, relay_key: bytes = b"") -> None:
        """One datagram that is not transport data for a live keypair."""
        mlen = len(msg)
        if mlen >= MESSAGE_OVERHEAD and msg[0] == MESSAGE_TRANSPORT:
            kp = self.device.indices.get(_unpack_index(msg, 4)[0])
            if type(kp) is not Keypair or msg[1] or msg[2] or msg[3]:
                self.counters.drop_unknown_index += 1
            else:
                self.counters.drop_replay_or_auth += 1  # past REJECT_AFTER_TIME
            return
        # Not WireGuard (type 1-4 then three zero bytes): disco or STUN, for the path picker.
        if mlen >= 4 and (msg[0] > MESSAGE_TRANSPORT or msg[1] or msg[2] or msg[3]):
            if not self.bind.receive_other(bytes(msg), src):
                self.counters.drop_malformed += 1
            return
        self._handshake(bytes(msg), src, now, relay_key)

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
        """Write the admitted items to the TUN, one write each (a merged run is one GSO
        super-packet)."""
        items = self._tun_items
        if items:
            dv = self._dec_view
            fd = self.tun_fd
            for off, length in items:
                try:
                    os.write(fd, dv[off : off + length])
                except OSError as e:
                    log.debug("TUN write failed: %s", e)
            items.clear()
        self._dec_len = 0


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
        self._coalesce = False  # the stack takes packets no larger than the MTU
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
        device = self.device
        cur_dst = None
        peer: Peer | None = None
        kp: Keypair | None = None
        for pkt in packets:
            n = len(pkt)
            version = pkt[0] >> 4 if n else 0
            if version == 4 and 20 <= n <= MAX_PACKET:
                dst = pkt[16:20]
            elif version == 6 and 40 <= n <= MAX_PACKET:
                dst = pkt[24:40]
            else:
                counters.drop_malformed += 1
                continue
            if dst != cur_dst:
                cur_dst = dst
                peer = self._lookup_dst(dst)
                kp = None
                if peer is not None and peer.endpoint is not None:
                    kp = device.sending_keypair(peer, now)
            if peer is None:
                counters.drop_no_peer += 1
                continue
            if flt is not None:
                flt.track_outbound(pkt, now)
            if kp is None:
                self._stage(peer, pkt, False, now)  # queued until a handshake completes
            else:
                self._seal(peer, kp, pkt, False)
        self._flush_sends()
        self._after_send(now)

    def _flush_tun(self) -> None:
        items = self._tun_items
        if not items:
            self._dec_len = 0
            return
        dec = self._dec
        packets = [bytes(dec[off + VNET_HDR_LEN : off + length]) for off, length in items]
        items.clear()
        self._dec_len = 0
        self.deliver(packets)
