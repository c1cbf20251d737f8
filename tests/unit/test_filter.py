"""The inbound packet filter: rules, connection tracking, odd packets (weftnet.node.filter)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weftnet import tailcfg
from weftnet.node.filter import (
    OTHER_TIMEOUT_S,
    TCP_TIMEOUT_S,
    PacketFilter,
)

ME4, PEER4, OTHER4 = "100.64.0.1", "100.64.0.2", "100.64.0.3"
ME6, PEER6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"
SYN, ACK, SYN_ACK = 0x02, 0x10, 0x12
T0 = 1000.0


# -- packets --------------------------------------------------------------------------


def addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ip4(
    src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0, mf: bool = False,
    options: bytes = b"",
) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    flags = (0x2000 if mf else 0) | frag
    hdr = struct.pack(
        ">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 1, flags, 64, proto, 0,
        addr(src), addr(dst),
    )  # fmt: skip
    return hdr + options + payload


def ip6(
    src: str, dst: str, proto: int, payload: bytes, ext: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """An IPv6 packet; ``ext``: (header type, body after the next-header byte) in order."""
    chain = b""
    types = [t for t, _ in ext] + [proto]
    for i, (_, body) in enumerate(ext):
        chain += bytes([types[i + 1]]) + body
    first = types[0]
    return (
        struct.pack(">IHBB16s16s", 0x60000000, len(chain) + len(payload), first, 64,
                    addr(src), addr(dst))
        + chain
        + payload
    )  # fmt: skip


def opts() -> bytes:
    """The rest of an 8-byte hop-by-hop or destination options header (length 0, PadN)."""
    return b"\x00\x01\x04\x00\x00\x00\x00"


def frag6(offset: int, more: bool = False) -> bytes:
    return b"\x00" + struct.pack(">HI", (offset << 3) | int(more), 7)


def tcp(sport: int, dport: int, flags: int = ACK) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int, dport: int, data: bytes = b"x") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def icmp(kind: int, ident: int = 0, seq: int = 1, data: bytes = b"") -> bytes:
    return struct.pack(">BBHHH", kind, 0, 0, ident, seq) + data


def tcp4(src: str, dst: str, sport: int, dport: int, flags: int = ACK) -> bytes:
    return ip4(src, dst, 6, tcp(sport, dport, flags))


def udp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ip4(src, dst, 17, udp(sport, dport))


def rule(
    src: list[str], dst: list[tuple[str, int, int]], protos: list[int] | None = None
) -> tailcfg.FilterRule:
    return tailcfg.FilterRule(
        src_ips=src,
        dst_ports=[
            tailcfg.NetPortRange(ip=ip, ports=tailcfg.PortRange(first=lo, last=hi))
            for ip, lo, hi in dst
        ],
        ip_proto=[6, 17, 1, 58] if protos is None else protos,
    )


ALLOW_ALL = rule(["0.0.0.0/0", "::/0"], [("0.0.0.0/0", 0, 65535), ("::/0", 0, 65535)])
SSH_FROM_PEER = rule([PEER4 + "/32", PEER6 + "/128"], [(ME4 + "/32", 22, 22), (ME6 + "/128", 22, 22)], [6])  # fmt: skip


# -- rules ----------------------------------------------------------------------------


def test_allow_all_accepts_its_protocols_both_families() -> None:
    f = PacketFilter([ALLOW_ALL])
    assert f.check(tcp4(PEER4, ME4, 40000, 5201), T0)
    assert f.check(udp4(OTHER4, ME4, 53, 9999), T0)
    assert f.check(ip4(PEER4, ME4, 1, icmp(8, 7)), T0)
    assert f.check(ip6(PEER6, ME6, 6, tcp(1, 443)), T0)
    assert f.check(ip6(PEER6, ME6, 58, icmp(128, 7)), T0)
    assert not f.check(ip4(PEER4, ME4, 47, b"\x00" * 8), T0)  # GRE is not in its protocols
    assert f.drop_denied == 1 and f.drop_malformed == 0


def test_empty_rules_deny_everything_unsolicited() -> None:
    f = PacketFilter([])
    for pkt in (
        tcp4(PEER4, ME4, 40000, 22, SYN),
        udp4(PEER4, ME4, 1, 2),
        ip4(PEER4, ME4, 1, icmp(8, 1)),
        ip6(PEER6, ME6, 58, icmp(128, 1)),
    ):
        assert not f.check(pkt, T0)
    assert f.drop_denied == 4


def test_ports_protocols_sources_and_destinations() -> None:
    f = PacketFilter([rule([PEER4 + "/32"], [(ME4 + "/32", 1000, 2000)], [6])])
    assert not f.check(tcp4(PEER4, ME4, 5, 999), T0)
    assert f.check(tcp4(PEER4, ME4, 5, 1000), T0)
    assert f.check(tcp4(PEER4, ME4, 5, 2000), T0)
    assert not f.check(tcp4(PEER4, ME4, 5, 2001), T0)
    assert not f.check(udp4(PEER4, ME4, 5, 1500), T0)  # TCP only
    assert not f.check(tcp4(OTHER4, ME4, 5, 1500), T0)  # another source
    assert not f.check(tcp4(PEER4, OTHER4, 5, 1500), T0)  # another destination
    assert not f.check(ip4(PEER4, ME4, 1, icmp(8)), T0)


def test_several_rules_and_ranges() -> None:
    f = PacketFilter(
        [
            rule(["100.64.0.0/24"], [(ME4 + "/32", 80, 80), (ME4 + "/32", 443, 443)], [6]),
            rule([OTHER4 + "/32"], [("0.0.0.0/0", 53, 53)], [17]),
        ]
    )
    assert f.check(tcp4(PEER4, ME4, 5, 443), T0) and f.check(tcp4(OTHER4, ME4, 5, 80), T0)
    assert not f.check(tcp4("100.64.1.2", ME4, 5, 80), T0)
    assert f.check(udp4(OTHER4, ME4, 5, 53), T0) and not f.check(udp4(PEER4, ME4, 5, 53), T0)


def test_protocols_without_ports_ignore_the_range() -> None:
    f = PacketFilter([rule([PEER4 + "/32"], [(ME4 + "/32", 22, 22)], [1, 47])])
    assert f.check(ip4(PEER4, ME4, 1, icmp(8, 3)), T0)
    assert f.check(ip4(PEER4, ME4, 47, b"\x00" * 8), T0)


def test_no_protocols_means_tcp_udp_icmp() -> None:
    f = PacketFilter([rule(["*"], [("*", 0, 65535)], [])])
    assert f.check(tcp4(PEER4, ME4, 1, 2), T0) and f.check(udp4(PEER4, ME4, 1, 2), T0)
    assert f.check(ip6(PEER6, ME6, 58, icmp(128)), T0)
    assert not f.check(ip4(PEER4, ME4, 132, b"\x00" * 12), T0)  # SCTP needs naming


def test_ipv6_rules() -> None:
    f = PacketFilter([rule(["fd7a:115c:a1e0::/48"], [(ME6 + "/128", 22, 22)], [6, 58])])
    assert f.check(ip6(PEER6, ME6, 6, tcp(5, 22, SYN)), T0)
    assert not f.check(ip6(PEER6, ME6, 6, tcp(5, 23, SYN)), T0)
    assert not f.check(ip6("fd00::2", ME6, 6, tcp(5, 22, SYN)), T0)
    assert not f.check(tcp4(PEER4, ME4, 5, 22, SYN), T0)  # no IPv4 rule at all
    assert f.check(ip6(PEER6, ME6, 58, icmp(128)), T0)


def test_sctp_has_ports() -> None:
    f = PacketFilter([rule(["*"], [("*", 9, 9)], [132])])
    assert f.check(ip4(PEER4, ME4, 132, struct.pack(">HHII", 1, 9, 0, 0)), T0)
    assert not f.check(ip4(PEER4, ME4, 132, struct.pack(">HHII", 1, 10, 0, 0)), T0)


def test_unparseable_cidrs_are_left_out() -> None:
    f = PacketFilter([rule(["nonsense", PEER4 + "/32"], [("bad", 0, 9), (ME4, 0, 65535)])])
    assert f.ignored == ["nonsense", "bad"]
    assert f.check(tcp4(PEER4, ME4, 1, 2), T0)  # a bare address is one host


# -- connection tracking --------------------------------------------------------------


def test_reply_to_our_tcp_flow_passes_unsolicited_does_not() -> None:
    f = PacketFilter([])
    f.track_outbound(tcp4(ME4, PEER4, 40000, 443, SYN), T0)
    assert f.check(tcp4(PEER4, ME4, 443, 40000, SYN_ACK), T0)
    assert f.check(tcp4(PEER4, ME4, 443, 40000), T0 + 1)  # cached
    assert not f.check(tcp4(PEER4, ME4, 443, 40001, SYN_ACK), T0)  # another port
    assert not f.check(tcp4(OTHER4, ME4, 443, 40000, SYN_ACK), T0)  # another peer
    assert not f.check(tcp4(PEER4, ME4, 40000, 443, SYN), T0)  # same ports, not reversed
    assert f.tracked_flows == 1


def test_ipv6_udp_reply_passes() -> None:
    f = PacketFilter([])
    f.track_outbound(ip6(ME6, PEER6, 17, udp(5353, 53)), T0)
    assert f.check(ip6(PEER6, ME6, 17, udp(53, 5353)), T0)
    assert not f.check(ip6(PEER6, ME6, 17, udp(53, 5354)), T0)


def test_flows_expire_when_idle_and_outbound_traffic_keeps_them() -> None:
    f = PacketFilter([])
    f.track_outbound(tcp4(ME4, PEER4, 40000, 443, SYN), T0)
    f.track_outbound(udp4(ME4, PEER4, 5000, 53), T0)
    reply_tcp, reply_udp = tcp4(PEER4, ME4, 443, 40000), udp4(PEER4, ME4, 53, 5000)
    assert f.check(reply_tcp, T0) and f.check(reply_udp, T0)
    assert f.check(reply_udp, T0 + OTHER_TIMEOUT_S - 1)
    assert not f.check(reply_udp, T0 + OTHER_TIMEOUT_S)
    assert f.check(reply_tcp, T0 + OTHER_TIMEOUT_S)
    f.track_outbound(tcp4(ME4, PEER4, 40000, 443), T0 + 200)  # still talking: kept
    assert f.check(reply_tcp, T0 + 200 + TCP_TIMEOUT_S - 1)
    assert not f.check(reply_tcp, T0 + 200 + TCP_TIMEOUT_S)


def test_an_expired_flow_of_ours_is_not_revived_over_theirs() -> None:
    f = PacketFilter([ALLOW_ALL])
    f.track_outbound(udp4(ME4, PEER4, 5000, 53), T0)
    later = T0 + OTHER_TIMEOUT_S + 1
    assert f.check(udp4(PEER4, ME4, 53, 5000), later)  # now a flow the rules let in
    f.track_outbound(udp4(ME4, PEER4, 5000, 53), later)  # our answer on it
    f.set_rules([])
    assert not f.check(udp4(PEER4, ME4, 53, 5000), later)


def test_expired_flows_are_swept() -> None:
    f = PacketFilter([])
    for port in range(10):
        f.track_outbound(udp4(ME4, PEER4, 5000 + port, 53), T0)
    assert f.tracked_flows == 10
    f.track_outbound(udp4(ME4, PEER4, 6000, 53), T0 + OTHER_TIMEOUT_S + 60)
    assert f.tracked_flows == 1


def test_echo_reply_needs_our_request_from_that_peer() -> None:
    f = PacketFilter([])
    f.track_outbound(ip4(ME4, PEER4, 1, icmp(8, ident=77)), T0)
    assert f.check(ip4(PEER4, ME4, 1, icmp(0, ident=77)), T0)
    assert not f.check(ip4(PEER4, ME4, 1, icmp(0, ident=78)), T0)
    assert not f.check(ip4(OTHER4, ME4, 1, icmp(0, ident=77)), T0)
    assert not f.check(ip4(PEER4, ME4, 1, icmp(8, ident=77)), T0)  # a request is no reply
    f.track_outbound(ip6(ME6, PEER6, 58, icmp(128, ident=5)), T0)
    assert f.check(ip6(PEER6, ME6, 58, icmp(129, ident=5)), T0)
    assert not f.check(ip6(PEER6, ME6, 58, icmp(129, ident=6)), T0)
    assert not f.check(ip6(PEER6, ME6, 58, icmp(129, ident=5)), T0 + OTHER_TIMEOUT_S)


def test_icmp_error_about_our_flow_passes() -> None:
    f = PacketFilter([])
    sent = udp4(ME4, PEER4, 5000, 53)
    f.track_outbound(sent, T0)
    unreachable = ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 3, 0, 0) + sent[:28])
    assert f.check(unreachable, T0)
    other = udp4(ME4, PEER4, 5001, 53)
    assert not f.check(ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 3, 0, 0) + other[:28]), T0)
    # It must quote a packet from us.
    spoofed = udp4(OTHER4, PEER4, 5000, 53)
    assert not f.check(ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 3, 0, 0) + spoofed[:28]), T0)
    # From a router on the way, and for IPv6 (packet too big).
    sent6 = ip6(ME6, PEER6, 6, tcp(40000, 443, SYN))
    f.track_outbound(sent6, T0)
    too_big = ip6("fd00::99", ME6, 58, struct.pack(">BBHI", 2, 0, 0, 1280) + sent6[:48])
    assert f.check(too_big, T0)
    assert not f.check(ip6("fd00::99", ME6, 58, struct.pack(">BBHI", 2, 0, 0, 1280)), T0)


def test_icmp_error_about_a_flow_the_rules_let_in_passes() -> None:
    f = PacketFilter([SSH_FROM_PEER])
    answer = tcp4(ME4, PEER4, 22, 40000)  # our side of a connection the peer opened
    err = ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 4, 0, 1200) + answer[:28])
    assert f.check(err, T0)
    bad = tcp4(ME4, PEER4, 23, 40000)
    assert not f.check(ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 4, 0, 1200) + bad[:28]), T0)


def test_table_is_bounded_least_recently_used_goes() -> None:
    f = PacketFilter([], max_flows=4)
    for port in range(5):
        f.track_outbound(udp4(ME4, PEER4, 5000 + port, 53), T0 + port * 2)
    assert f.tracked_flows == 4
    assert not f.check(udp4(PEER4, ME4, 53, 5000), T0 + 10)
    assert all(f.check(udp4(PEER4, ME4, 53, 5000 + p), T0 + 10) for p in range(1, 5))
    # Using a flow makes it young: 5001 is refreshed, so 5002 goes next.
    f.track_outbound(udp4(ME4, PEER4, 5001, 53), T0 + 11)
    f.track_outbound(udp4(ME4, PEER4, 6000, 53), T0 + 12)
    assert f.check(udp4(PEER4, ME4, 53, 5001), T0 + 12)
    assert not f.check(udp4(PEER4, ME4, 53, 5002), T0 + 12)


def test_a_flood_of_flows_stays_bounded() -> None:
    f = PacketFilter([ALLOW_ALL], max_flows=100)
    for port in range(1000):
        f.track_outbound(udp4(ME4, PEER4, port, 53), T0)
        f.check(udp4(OTHER4, ME4, port, 53), T0)  # peer-started flows, also bounded
    assert f.tracked_flows == 100


def test_rule_change_keeps_our_flows_and_rechecks_theirs() -> None:
    f = PacketFilter([SSH_FROM_PEER, ALLOW_ALL])
    f.track_outbound(tcp4(ME4, PEER4, 40000, 443, SYN), T0)
    theirs_ssh, theirs_web = tcp4(PEER4, ME4, 40001, 22), tcp4(PEER4, ME4, 40002, 80)
    assert f.check(theirs_ssh, T0) and f.check(theirs_web, T0)
    # We answer on both connections: that does not make them ours.
    f.track_outbound(tcp4(ME4, PEER4, 22, 40001, SYN_ACK), T0)
    f.track_outbound(tcp4(ME4, PEER4, 80, 40002), T0)
    f.set_rules([SSH_FROM_PEER])
    assert f.check(tcp4(PEER4, ME4, 443, 40000), T0 + 1)  # our flow keeps going
    assert f.check(theirs_ssh, T0 + 1)  # still allowed
    assert not f.check(theirs_web, T0 + 1)  # now denied
    f.set_rules([])
    assert f.check(tcp4(PEER4, ME4, 443, 40000), T0 + 2)
    assert not f.check(theirs_ssh, T0 + 2)


def test_under_allow_all_who_started_a_flow_still_counts() -> None:
    """The server's rule when no policy is set opens everything; setting a policy later
    must cut the peers' flows it denies and keep ours."""
    f = PacketFilter([ALLOW_ALL])
    # The peer connects to us over TCP and talks to us over UDP...
    assert f.check(tcp4(PEER4, ME4, 40001, 80, SYN), T0)
    f.track_outbound(tcp4(ME4, PEER4, 80, 40001, SYN_ACK), T0)
    assert f.check(udp4(PEER4, ME4, 5000, 53), T0)
    f.track_outbound(udp4(ME4, PEER4, 53, 5000), T0)
    # ...and we connect to it, both ways.
    f.track_outbound(tcp4(ME4, PEER4, 40002, 443, SYN), T0)
    f.track_outbound(udp4(ME4, PEER4, 5001, 53), T0)
    assert f.check(tcp4(PEER4, ME4, 443, 40002, SYN_ACK), T0)
    assert f.check(udp4(PEER4, ME4, 53, 5001), T0)
    f.set_rules([])
    assert not f.check(tcp4(PEER4, ME4, 40001, 80), T0 + 1)
    assert not f.check(udp4(PEER4, ME4, 5000, 53), T0 + 1)
    assert f.check(tcp4(PEER4, ME4, 443, 40002), T0 + 1)
    assert f.check(udp4(PEER4, ME4, 53, 5001), T0 + 1)
    assert f.tracked_flows == 2


def test_a_peer_flow_that_idles_out_is_recorded_again() -> None:
    f = PacketFilter([ALLOW_ALL])
    theirs = udp4(PEER4, ME4, 5000, 53)
    assert f.check(theirs, T0)
    later = T0 + OTHER_TIMEOUT_S + 5  # only the peer talked meanwhile, from the cache
    assert f.check(theirs, later)
    f.track_outbound(udp4(ME4, PEER4, 53, 5000), later)  # we answer at last
    f.set_rules([])
    assert not f.check(theirs, later)
    assert f.tracked_flows == 0


def test_a_reset_starts_no_flow() -> None:
    f = PacketFilter([ALLOW_ALL])
    for port in range(100):  # a port scan we refuse
        assert f.check(tcp4(PEER4, ME4, 40000, port, SYN), T0)
        f.track_outbound(tcp4(ME4, PEER4, port, 40000, 0x14), T0)  # RST-ACK
    assert f.tracked_flows == 0


def test_a_tcp_flow_we_lost_is_judged_by_the_rules_if_they_let_it_in() -> None:
    f = PacketFilter([SSH_FROM_PEER])
    f.track_outbound(tcp4(ME4, PEER4, 22, 40000), T0)  # mid-flow, after a restart
    f.track_outbound(tcp4(ME4, PEER4, 40001, 443), T0)
    assert f.tracked_flows == 1  # only the second: the rules would not let it in
    f.set_rules([])
    assert not f.check(tcp4(PEER4, ME4, 40000, 22), T0)
    assert f.check(tcp4(PEER4, ME4, 443, 40001), T0)


def test_denied_then_we_start_the_flow() -> None:
    f = PacketFilter([])
    reply = udp4(PEER4, ME4, 53, 5000)
    assert not f.check(reply, T0) and not f.check(reply, T0)  # the second from the cache
    f.track_outbound(udp4(ME4, PEER4, 5000, 53), T0 + 1)
    assert f.check(reply, T0 + 1)
    assert f.drop_denied == 2


def test_our_syn_on_a_flow_they_started_makes_it_ours() -> None:
    f = PacketFilter([ALLOW_ALL])
    assert f.check(tcp4(PEER4, ME4, 5000, 6000, SYN), T0)
    f.track_outbound(tcp4(ME4, PEER4, 6000, 5000, SYN), T0)  # simultaneous open
    f.set_rules([])
    assert f.check(tcp4(PEER4, ME4, 5000, 6000), T0)


def test_flow_we_send_on_without_knowing_it_is_ours() -> None:
    """After a restart: our ACKs on a connection we no longer remember re-learn it."""
    f = PacketFilter([])
    f.track_outbound(tcp4(ME4, PEER4, 40000, 22, ACK), T0)
    assert f.check(tcp4(PEER4, ME4, 22, 40000), T0)


def test_tso_super_packet_is_one_flow() -> None:
    f = PacketFilter([])
    big = ip4(ME4, PEER4, 6, tcp(40000, 443) + bytes(60000))
    f.track_outbound(memoryview(big), T0)
    assert f.tracked_flows == 1 and f.check(tcp4(PEER4, ME4, 443, 40000), T0)


# -- fragments, extension headers, malformed -----------------------------------------


def test_ipv4_later_fragments_pass_and_the_first_is_filtered() -> None:
    later = ip4(PEER4, ME4, 6, bytes(16), frag=100)
    assert PacketFilter([SSH_FROM_PEER]).check(later, T0)
    assert PacketFilter([ALLOW_ALL]).check(later, T0)
    first = ip4(PEER4, ME4, 6, tcp(5, 22, SYN), mf=True)
    assert PacketFilter([SSH_FROM_PEER]).check(first, T0)
    assert not PacketFilter([SSH_FROM_PEER]).check(ip4(PEER4, ME4, 6, tcp(5, 23, SYN), mf=True), T0)


def test_fragmented_reply_to_our_own_flow_passes_under_a_port_limited_policy() -> None:
    # Regression (D7): the tail of a large UDP reply to a flow this node started.
    f = PacketFilter([SSH_FROM_PEER])  # a policy that opens only SSH to us
    f.track_outbound(udp4(ME4, PEER4, 5000, 53), T0)  # we ask the peer's DNS server
    first = ip4(PEER4, ME4, 17, udp(53, 5000, b"x" * 1400), mf=True)  # offset 0, MF
    second = ip4(PEER4, ME4, 17, b"y" * 600, frag=176)  # the rest of the datagram
    assert f.check(first, T0)
    assert f.check(second, T0)


def test_tiny_first_fragment_is_malformed() -> None:
    f = PacketFilter([ALLOW_ALL])
    assert not f.check(ip4(PEER4, ME4, 6, tcp(5, 22)[:8], mf=True), T0)
    assert f.drop_malformed == 1


def test_ipv6_extension_headers_are_followed() -> None:
    f = PacketFilter([SSH_FROM_PEER])
    ext = [(0, opts()), (60, opts())]
    assert f.check(ip6(PEER6, ME6, 6, tcp(5, 22, SYN), ext), T0)
    assert not f.check(ip6(PEER6, ME6, 6, tcp(5, 23, SYN), ext), T0)
    routing = b"\x00\x00\x00\x00\x00\x00\x00"  # type 0, no segments left
    assert f.check(ip6(PEER6, ME6, 6, tcp(5, 22, SYN), [(43, routing)]), T0)
    assert f.check(ip6(PEER6, ME6, 6, tcp(5, 22, SYN), [(44, frag6(0, True))]), T0)
    later = ip6(PEER6, ME6, 6, bytes(16), [(44, frag6(100))])
    assert f.check(later, T0)  # later fragments pass, as IPv4 ones
    assert PacketFilter([ALLOW_ALL]).check(later, T0)
    too_many = ip6(PEER6, ME6, 6, tcp(5, 22, SYN), [(60, opts())] * 9)
    assert not f.check(too_many, T0)
    assert f.drop_malformed == 1


@pytest.mark.parametrize(
    "pkt",
    [
        b"",
        b"\x45" + bytes(10),
        tcp4(PEER4, ME4, 1, 22)[:30],  # total length says more than there is
        b"\x44" + tcp4(PEER4, ME4, 1, 22)[1:],  # IHL 4
        ip4(PEER4, ME4, 6, tcp(1, 22)[:12]),  # TCP header cut short
        ip4(PEER4, ME4, 17, udp(1, 22)[:6]),
        ip4(PEER4, ME4, 1, icmp(8)[:4]),
        b"\x50" + bytes(39),  # version 5
        ip6(PEER6, ME6, 6, tcp(1, 22))[:50],
        ip6(PEER6, ME6, 6, tcp(1, 22), [(60, b"\x05" + bytes(6))]),  # header past the end
    ],
)
def test_malformed_packets_are_dropped_and_counted(pkt: bytes) -> None:
    f = PacketFilter([ALLOW_ALL])
    assert not f.check(pkt, T0)
    assert f.drop_malformed == 1 and f.drop_denied == 0
    f.track_outbound(pkt, T0)  # and never raise on the way out either


def test_offset_into_a_larger_buffer() -> None:
    f = PacketFilter([SSH_FROM_PEER])
    pkt = tcp4(PEER4, ME4, 5, 22, SYN)
    buf = bytearray(b"\xff" * 100) + bytearray(pkt) + bytearray(b"\xff" * 100)
    assert f.allow_inbound(buf, 100, len(pkt), T0)
    assert f.allow_inbound(memoryview(buf), 100, len(pkt), T0)


# -- fuzz -----------------------------------------------------------------------------

VALID = [
    tcp4(PEER4, ME4, 5, 22, SYN),
    udp4(PEER4, ME4, 53, 5000),
    ip4(PEER4, ME4, 1, struct.pack(">BBHI", 3, 3, 0, 0) + udp4(ME4, PEER4, 5000, 53)[:28]),
    ip6(PEER6, ME6, 6, tcp(5, 22, SYN), [(0, opts()), (44, frag6(0, True))]),
    ip6(PEER6, ME6, 58, struct.pack(">BBHI", 1, 4, 0, 0) + ip6(ME6, PEER6, 17, udp(1, 2))[:48]),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    f = PacketFilter([SSH_FROM_PEER, ALLOW_ALL])
    f.track_outbound(data, T0)
    f.check(data, T0)
    assert f.drop_denied + f.drop_malformed <= 1


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255))))
def test_mutated_packets_never_raise(pkt: bytes, edits: list[tuple[int, int]]) -> None:
    buf = bytearray(pkt)
    for at, value in edits:
        if at < len(buf):
            buf[at] = value
    f = PacketFilter([SSH_FROM_PEER])
    f.track_outbound(bytes(buf), T0)
    f.check(bytes(buf), T0)
    f.check(bytes(buf[: len(buf) // 2]), T0)
