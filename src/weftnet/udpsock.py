"""UDP socket options for WireGuard traffic: GSO sends, GRO receives, large buffers.

The data plane's socket (node.datapath.make_socket) and an extra socket that became a
peer's path (magicsock.portpool, after birthday probing) are set up alike, so a path
through either moves batches of datagrams per system call, not one.
"""

from __future__ import annotations

import contextlib
import errno
import socket

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: send with GSO, value = segment size
UDP_GRO = 104  # linux/udp.h: receive coalesced datagrams
SOCKET_BUFFER_BYTES = 8 * 1024 * 1024
_SO_RCVBUFFORCE, _SO_SNDBUFFORCE = 33, 32  # past net.core.*mem_max, as root


def tune(sock: socket.socket) -> None:
    """Large buffers (forced as root, else up to the system's maximum) and GRO on."""
    for opt, force in ((socket.SO_RCVBUF, _SO_RCVBUFFORCE), (socket.SO_SNDBUF, _SO_SNDBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    with contextlib.suppress(OSError):  # not Linux: one datagram per read
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)


def gro_segment(ancillary: list[tuple[int, int, bytes]], n: int) -> int:
    """The size of each datagram a ``recvmsg`` of ``n`` bytes coalesced (n: just one)."""
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return int.from_bytes(data[:2], "little") or n
    return n


def send_segments(sock: socket.socket, data: bytes, seg: int, addr: tuple[str, int]) -> None:
    """Datagrams ``data`` holds back to back, each ``seg`` bytes but the last, in one GSO
    send; datagram by datagram where the kernel refuses GSO. OSError as ``sendto``."""
    if len(data) > seg:
        try:
            sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, seg.to_bytes(2, "little"))], 0, addr)
            return
        except OSError as e:
            if e.errno not in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):  # no GSO here
                raise
    for i in range(0, len(data), seg):
        sock.sendto(data[i : i + seg], addr)
