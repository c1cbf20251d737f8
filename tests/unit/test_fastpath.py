"""The data plane's batch functions: the C extension against the pure-Python reference
(same bytes for the same inputs, hypothesis-fuzzed), and what both must do: segments
that are valid packets, runs of one TCP flow merged into one TUN write, the replay
window, malformed input refused without harm."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.test_offload import super_packet, tcp_ok

from weftnet import fastpath
from weftnet.fastpath import reference
from weftnet.node import offload
from weftnet.node.vnet import (
    VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR,
)
from weftnet.wireguard.constants import REJECT_AFTER_MESSAGES
from weftnet.wireguard.messages import padded_size

native = fastpath.native
IMPLS = [pytest.param(reference, id="python"), pytest.param(native, id="c")]
KEY = bytes(range(32))
INDEX = 0x01020304
MTU = 1420


def test_the_c_extension_is_built_and_used() -> None:
    """`make install` builds it; a silent fallback to the pure path would cost most of
    the throughput (docs/dataplane.md)."""
    assert native is not None, "weftnet.fastpath._fastpath is not built: run make install"
    assert fastpath.IMPLEMENTATION == "c"


def tso_frame(v4: bool, payload: bytes, mss: int, flags: int = 0x18, options: bytes = b"") -> bytes:
    pkt = super_packet(v4, payload, flags, options)
    ihl = 20 if v4 else 40
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if v4 else VIRTIO_NET_HDR_GSO_TCPV6
    hlen = ihl + 20 + len(options)
    return VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, hlen, mss, ihl, 16) + pkt


def seal(impl, frame: bytes, vnet: bool = True, counter: int = 0, off: int = 0):  # type: ignore[no-untyped-def]
    out = bytearray(200_000)
    result = impl.seal_packet(impl.Aead(KEY), INDEX, counter, frame, vnet, MTU, out, off)
    return result, bytes(out)


def open_all(impl, buf: bytes, start: int, end: int, seg: int, coalesce: bool = True, replay=None):  # type: ignore[no-untyped-def]
    dec = bytearray(300_000)
    window = replay if replay is not None else impl.ReplayWindow()
    result = impl.open_messages(
        impl.Aead(KEY), window, INDEX, buf, start, end, seg, dec, 7, coalesce
    )
    return result, bytes(dec)


def messages(impl, packets: list[bytes], counter: int = 0) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    """Plain packets sealed back to back (a GRO read when all but the last are equal)."""
    out = bytearray(400_000)
    off = 0
    aead = impl.Aead(KEY)
    sizes = []
    for i, p in enumerate(packets):
        _, end, size = impl.seal_packet(aead, INDEX, counter + i, p, False, MTU, out, off)
        sizes.append(size)
        off = end
    return bytes(out[:off]), max(sizes)


def items_of(result, dec: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [dec[off : off + length] for off, length, _ in result[2]]


# -- C == Python --------------------------------------------------------------------------

frames = st.builds(
    tso_frame,
    v4=st.booleans(),
    payload=st.binary(min_size=1, max_size=9000),
    mss=st.integers(min_value=1, max_value=2000),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x98, 0x11]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames, counter=st.integers(0, 2**40), off=st.integers(0, 64))
def test_seal_c_equals_python(frame: bytes, counter: int, off: int) -> None:
    assert seal(native, frame, True, counter, off) == seal(reference, frame, True, counter, off)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), vnet=st.booleans(), mtu=st.integers(0, 1500))
def test_seal_of_arbitrary_bytes_c_equals_python(data: bytes, vnet: bool, mtu: int) -> None:
    """Whatever a TUN read holds: the same messages, or the same refusal."""
    results = []
    for impl in (native, reference):
        out = bytearray(200_000)
        try:
            r = impl.seal_packet(impl.Aead(KEY), INDEX, 5, data, vnet, mtu, out, 3)
        except ValueError as e:  # only for an output buffer too small: never here
            r = ("ValueError", str(e))
        results.append((r, bytes(out)))
    assert results[0] == results[1]


def _perturb(buf: bytes, seg: int, ops: list[tuple[int, int]]) -> bytes:
    """Drop, duplicate, swap or corrupt whole messages of a GRO buffer, keeping the
    layout (equal messages but the last)."""
    msgs = [bytearray(buf[i : i + seg]) for i in range(0, len(buf), seg)]
    for op, at in ops:
        if not msgs:
            break
        i = at % len(msgs)
        if op == 0 and len(msgs) > 1:
            del msgs[i]
        elif op == 1:
            msgs.insert(i, bytearray(msgs[i]))
        elif op == 2:
            j = (i + 1) % len(msgs)
            msgs[i], msgs[j] = msgs[j], msgs[i]
        elif op == 3:
            msgs[i][(at * 7) % len(msgs[i])] ^= 0x40
    # a shorter message may only be last
    full = [m for m in msgs if len(m) == seg]
    short = [m for m in msgs if len(m) != seg][:1]
    return b"".join(full + short)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame=frames,
    ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), max_size=6),
    coalesce=st.booleans(),
)
def test_open_c_equals_python(frame: bytes, ops: list[tuple[int, int]], coalesce: bool) -> None:
    (count, end, size), out = seal(reference, frame)
    if not count:
        return
    buf = _perturb(out[:end], size, ops)
    assert open_all(native, buf, 0, len(buf), size, coalesce) == open_all(
        reference, buf, 0, len(buf), size, coalesce
    )


@settings(max_examples=100, deadline=None)
@given(buf=st.binary(max_size=400), seg=st.integers(0, 200), index=st.booleans())
def test_open_of_arbitrary_bytes_c_equals_python(buf: bytes, seg: int, index: bool) -> None:
    if index and len(buf) >= 8:  # a transport header for our index, garbage after it
        buf = b"\x04\x00\x00\x00" + struct.pack("<I", INDEX) + buf[8:]
    assert open_all(native, buf, 0, len(buf), seg) == open_all(reference, buf, 0, len(buf), seg)


@settings(max_examples=200, deadline=None)
@given(
    counters=st.lists(st.integers(-5, 20_000) | st.integers(2**64 - 9000, 2**64 + 5), max_size=60)
)
def test_replay_window_c_equals_python(counters: list[int]) -> None:
    c, py = native.ReplayWindow(), reference.ReplayWindow()
    for counter in counters:
        assert c.check_and_update(counter) == py.check_and_update(counter), counter
    c.reset()
    py.reset()
    assert c.check_and_update(0) and py.check_and_update(0)


# -- what both do -----------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("v4", [True, False])
def test_segments_round_trip_as_valid_packets(impl, v4: bool) -> None:  # type: ignore[no-untyped-def]
    payload = bytes(range(256)) * 20 + b"tail"
    (count, end, size), out = seal(impl, tso_frame(v4, payload, 1000))
    assert count == 6 and end == 5 * size + (end - 5 * size)
    result, dec = open_all(impl, out, 0, end, size, coalesce=False)
    assert result[0] == end and result[3:] == (0, 0, 0)
    pkts = [item[10:] for item in items_of(result, dec)]
    assert len(pkts) == 6 and all(tcp_ok(p, v4) for p in pkts)
    assert b"".join(p[(40 if v4 else 60) :] for p in pkts) == payload
    assert pkts[-1][(33 if v4 else 53)] == 0x18 and pkts[0][(33 if v4 else 53)] == 0x10


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_of_segments_becomes_one_super_packet(impl) -> None:  # type: ignore[no-untyped-def]
    payload = bytes(range(256)) * 40
    (count, end, size), out = seal(impl, tso_frame(True, payload, 1000))
    result, dec = open_all(impl, out, 0, end, size)
    [frame] = items_of(result, dec)
    assert result[2][0][2] == count == 11
    flags, gso, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    assert (flags, gso, hdr_len, gso_size, csum_start, csum_offset) == (
        VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 40, 1000, 20, 16,
    )  # fmt: skip
    pkt = frame[10:]
    assert struct.unpack(">H", pkt[2:4])[0] == len(pkt) == 40 + len(payload)
    assert pkt[40:] == payload
    assert pkt[33] == 0x18  # PSH of the last segment kept
    # The checksum field holds the pseudo-header sum, as CHECKSUM_PARTIAL requires.
    filled = bytearray(pkt)
    offload.complete_partial_checksum(memoryview(filled), 20, 16)
    assert tcp_ok(bytes(filled), True)


def _segments(payload: bytes, mss: int) -> list[bytes]:
    out = bytearray(65536)
    segs: list[bytes] = []
    offload.TcpSegmenter.segment(
        memoryview(super_packet(True, payload, 0x18)), True, mss, out,
        lambda n: segs.append(bytes(out[:n])),
    )  # fmt: skip
    return segs


@pytest.mark.parametrize("impl", IMPLS)
def test_gap_in_sequence_splits_the_run(impl) -> None:  # type: ignore[no-untyped-def]
    segs = _segments(bytes(5000), 1000)
    buf, seg = messages(impl, segs[:2] + segs[3:])  # segment 3 lost
    result, dec = open_all(impl, buf, 0, len(buf), seg)
    assert [len(f) - 10 for f in items_of(result, dec)] == [40 + 2000, 40 + 2000]


@pytest.mark.parametrize("impl", IMPLS)
def test_other_flows_and_non_tcp_are_written_alone(impl) -> None:  # type: ignore[no-untyped-def]
    a = _segments(bytes(3000), 1000)
    icmp = bytearray(bytes.fromhex("4500041000004000400100006440000164400002") + bytes(1020))
    buf, seg = messages(impl, [a[0], bytes(icmp), a[1], a[2]])
    result, dec = open_all(impl, buf, 0, len(buf), seg)
    frames = items_of(result, dec)
    assert [len(f) - 10 for f in frames] == [1040, 1040, 40 + 2000]
    assert frames[1][0] == VIRTIO_NET_HDR_F_DATA_VALID  # written as it came
    assert [n for _, _, n in result[2]] == [1, 1, 2]


@pytest.mark.parametrize("impl", IMPLS)
def test_replays_forgeries_and_keepalives_are_counted_not_written(impl) -> None:  # type: ignore[no-untyped-def]
    segs = _segments(bytes(2000), 1000)
    buf, seg = messages(impl, segs)
    window = impl.ReplayWindow()
    first, _ = open_all(impl, buf, 0, len(buf), seg, replay=window)
    assert first[3] == 0 and len(first[2]) == 1
    again, _ = open_all(impl, buf, 0, len(buf), seg, replay=window)
    assert again[0] == len(buf) and again[2] == [] and again[3] == 2  # both replayed
    forged = bytearray(buf)
    forged[40] ^= 1
    bad, _ = open_all(impl, bytes(forged), 0, len(forged), seg)
    assert bad[3] == 1 and len(bad[2]) == 1  # the second one still opens
    tag = ChaCha20Poly1305(KEY).encrypt(bytes(4) + (9).to_bytes(8, "little"), b"", None)
    keepalive = struct.pack("<IIQ", 4, INDEX, 9) + tag
    ka, _ = open_all(impl, keepalive, 0, len(keepalive), len(keepalive))
    assert ka[2] == [] and ka[5] == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_stops_at_a_message_for_another_keypair(impl) -> None:  # type: ignore[no-untyped-def]
    segs = _segments(bytes(3000), 1000)
    buf, seg = messages(impl, segs)
    other = bytearray(buf)
    other[seg + 4] ^= 0xFF  # the second message's receiver index
    result, _ = open_all(impl, bytes(other), 0, len(other), seg)
    assert result[0] == seg and len(result[2]) == 1  # the caller takes the rest


@pytest.mark.parametrize("impl", IMPLS)
def test_counter_limit_raises_before_writing(impl) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OverflowError):
        seal(impl, tso_frame(True, bytes(3000), 1000), counter=REJECT_AFTER_MESSAGES - 2)
    (count, _, _), _ = seal(
        impl, tso_frame(True, bytes(3000), 1000), counter=REJECT_AFTER_MESSAGES - 3
    )
    assert count == 3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes(10),  # a virtio header and nothing
        VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 0, 1000, 0, 0) + b"\x45" + bytes(10),
        VNET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, 0, 1, 0, 0)
        + super_packet(True, bytes(1000), 0x10),
        VNET_HDR.pack(0, 5, 0, 1000, 0, 0) + super_packet(True, bytes(100), 0x10),  # UDP GSO
        VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 50, 16) + bytes(60),
    ],
    ids=["empty", "header-only", "short-tcp", "too-many-segments", "udp-gso", "csum-past-end"],
)
def test_malformed_reads_seal_nothing(impl, frame: bytes) -> None:  # type: ignore[no-untyped-def]
    (count, end, size), out = seal(impl, frame, off=9)
    assert (count, end, size) == (0, 9, 0) and out == bytes(len(out))


@pytest.mark.parametrize("impl", IMPLS)
def test_output_too_small_is_an_error(impl) -> None:  # type: ignore[no-untyped-def]
    out = bytearray(3000)
    with pytest.raises(ValueError):
        impl.seal_packet(
            impl.Aead(KEY), INDEX, 0, tso_frame(True, bytes(5000), 1000), True, MTU, out, 0
        )


def test_segment_packet_gives_what_seal_packet_seals() -> None:
    frame = tso_frame(False, bytes(range(200)) * 20, 1200)
    plain = reference.segment_packet(frame, True)
    assert plain is not None and len(plain) == 4
    buf, seg = messages(reference, plain)
    (count, end, size), out = seal(reference, frame)
    assert (count, size) == (4, seg) and out[:end] == buf


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("length", "mtu", "padded"),
    [(100, 1420, 112), (1415, 1420, 1420), (1420, 1420, 1420), (60, 0, 64), (2850, 1420, 2856)],
)
def test_padding_is_wireguard_gos(impl, length: int, mtu: int, padded: int) -> None:  # type: ignore[no-untyped-def]
    """calculatePaddingSize: to 16, never past the MTU; past it, the remainder is padded."""
    assert padded_size(length, mtu) == padded
    packet = super_packet(True, bytes(length - 40), 0x10)
    out = bytearray(10_000)
    count, _end, size = impl.seal_packet(impl.Aead(KEY), INDEX, 0, packet, False, mtu, out, 0)
    assert (count, size) == (1, padded + 32)
