"""TCP segment arrival (RFC 9293 §3.10.7 "SEGMENT ARRIVES") for one connection.

Theory of operation
-------------------
``segment_arrives`` follows the RFC's order: in SYN-SENT, check the ACK, RST, then
take the SYN; otherwise (1) check the sequence number is acceptable (else ACK and
drop), (2) RST, (3) SYN, (4) ACK (SYN-RECEIVED to ESTABLISHED, send-side bookkeeping,
our FIN acknowledged), (5) segment text, (6) FIN. SEQ and ACK are unwrapped first (see
tcp.py), so every test is a plain integer comparison. In SYN-RECEIVED a repeated SYN
(our SYN-ACK was lost) is answered with the SYN-ACK again; a SYN-ACK that acknowledges
our SYN (simultaneous open, RFC 9293 §3.5 figure 8) has its SYN trimmed and goes on.

Receive side. In-order data goes to ``rx``; data past a gap to the reassembly queue
(reassembly.py) and we ACK at once (a duplicate ACK, so the peer fast-retransmits).
In-order data is acknowledged every second segment, otherwise after DELAYED_ACK_S
(RFC 9293 §3.8.6.3, RFC 1122 4.2.3.2). The window we advertise is ``receive_window``;
while the app has paused receiving, the right edge stops moving (never shrinks).

Robustness (RFC 5961): a RST is honoured only at exactly RCV.NXT (in-window but not
exact: challenge ACK); a SYN on a synchronized connection draws a challenge ACK; an
ACK above SND.MAX or below SND.UNA - MAX.SND.WND is answered with an ACK and dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from weftnet.netstack import events as ev
from weftnet.netstack.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpOptions, TcpSegment
from weftnet.netstack.tcpstate import (
    ACK_EVERY_SEGMENTS,
    DELAYED_ACK_S,
    FIN_WAIT_2_TIMEOUT_S,
    HALF,
    MASK,
    RECEIVING,
    TIME_WAIT_S,
    State,
)

if TYPE_CHECKING:
    from weftnet.netstack.tcp import TcpConnection


def segment_arrives(conn: TcpConnection, seg: TcpSegment, now: float) -> None:
    """Process one segment of this flow (RFC 9293 §3.10.7)."""
    flags = seg.flags
    if conn.keepalive_idle_s is not None:
        conn.keepalive_at = now + conn.keepalive_idle_s
        conn.keepalive_probes = 0
    state = conn.state
    if state == State.SYN_SENT:
        _syn_sent(conn, seg, now)
        return
    if state == State.CLOSED:
        return
    rcv_nxt = conn.rcv_nxt
    seq = rcv_nxt + ((seg.seq - rcv_nxt + HALF) & MASK) - HALF
    if flags & TCP_SYN and state == State.SYN_RECEIVED and seq == conn.irs:
        if not (flags & TCP_ACK and (seg.ack - conn.iss - 1) & MASK == 0):
            conn.transmit_syn(now)  # our SYN-ACK was lost: the peer repeats its SYN
            return
        flags &= ~TCP_SYN  # simultaneous open: the peer's SYN-ACK; its SYN is taken
        seq += 1
    payload = seg.payload
    plen = len(payload)
    seglen = plen + (flags & TCP_FIN) + (flags & TCP_SYN) // TCP_SYN
    wnd = max(conn.window(), conn.rcv_adv_edge - rcv_nxt)
    if seglen == 0:
        ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
    else:
        ok = wnd > 0 and (
            rcv_nxt <= seq < rcv_nxt + wnd or rcv_nxt <= seq + seglen - 1 < rcv_nxt + wnd
        )
    if not ok:
        if not flags & TCP_RST:
            conn.transmit(conn.snd_max, TCP_ACK)
        return
    if flags & TCP_RST:
        if seq == rcv_nxt:
            conn.reset(ev.RESET_BY_PEER)
        else:
            conn.transmit(conn.snd_max, TCP_ACK)  # RFC 5961 §3.2 challenge ACK
        return
    if flags & TCP_SYN:
        conn.transmit(conn.snd_max, TCP_ACK)  # RFC 5961 §4.2 challenge ACK
        return
    if not flags & TCP_ACK:
        return
    una = conn.snd_una
    ack = una + ((seg.ack - una + HALF) & MASK) - HALF
    if state == State.SYN_RECEIVED:
        if not una < ack <= conn.snd_max:
            conn.transmit_rst(seg.ack)
            return
        conn.state = State.FIN_WAIT_1 if conn.fin_queued else State.ESTABLISHED
        conn.snd_wl1 = seq - 1  # so this ACK's window is taken
        if conn.announced:  # our connect() met the peer's (simultaneous open)
            conn.emit(ev.Connected(conn))
        else:
            conn.announced = True
            conn.emit(ev.NewConnection(conn))
    if ack > conn.snd_max or ack < una - conn.max_snd_wnd:
        conn.transmit(conn.snd_max, TCP_ACK)
        return
    _process_ack(conn, seq, ack, seg.window, seglen == 0, now)
    if conn.state == State.CLOSED:
        return
    _process_fin_acked(conn, now)
    if conn.state == State.CLOSED:
        return
    if plen and conn.state in RECEIVING:
        _receive_data(conn, seq, payload, now)
    if flags & TCP_FIN and conn.peer_fin_seq is None and conn.state in RECEIVING:
        conn.peer_fin_seq = seq + plen
    if conn.peer_fin_seq is not None and conn.rcv_nxt == conn.peer_fin_seq:
        _fin_received(conn, now)
    elif state == State.TIME_WAIT and flags & TCP_FIN:
        conn.ack_now = True
        conn.timewait_at = now + TIME_WAIT_S


def _syn_sent(conn: TcpConnection, seg: TcpSegment, now: float) -> None:
    flags = seg.flags
    acks_syn = bool(flags & TCP_ACK) and (seg.ack - conn.iss - 1) & MASK == 0
    if flags & TCP_ACK and not acks_syn:
        if not flags & TCP_RST:
            conn.transmit_rst(seg.ack)
        return
    if flags & TCP_RST:
        if acks_syn:
            conn.reset(ev.REFUSED)
        return
    if not flags & TCP_SYN:
        return
    try:
        options = TcpOptions.unpack(seg.options)
    except ValueError:
        return
    if options.wscale is None:
        conn.snd_wscale = 0
    conn.take_syn(seg, options, now)
    if not acks_syn:  # simultaneous open (RFC 9293 §3.5 figure 8)
        conn.state = State.SYN_RECEIVED
        conn.transmit_syn(now)
        return
    conn.snd_una = conn.iss + 1
    conn.snd_wl1, conn.snd_wl2 = seg.seq, conn.snd_una
    if conn.rtt_seq is not None:
        conn.rto.sample(now - conn.rtt_at)
        conn.rtt_seq = None
    conn.rto_at = None
    conn.retries = 0
    conn.state = State.FIN_WAIT_1 if conn.fin_queued else State.ESTABLISHED
    conn.ack_now = True
    conn.emit(ev.Connected(conn))


def _process_ack(
    conn: TcpConnection, seq: int, ack: int, window: int, pure: bool, now: float
) -> None:
    wnd = window << conn.snd_wscale
    una = conn.snd_una
    if ack > una:
        flight = conn.snd_max - una
        acked = ack - una
        n = min(ack, conn.buf_seq + len(conn.snd_buf)) - conn.buf_seq
        if n > 0:
            del conn.snd_buf[:n]
            conn.buf_seq += n
        conn.snd_una = ack
        if conn.snd_nxt < ack:
            conn.snd_nxt = ack
        if conn.rtt_seq is not None and ack > conn.rtt_seq:
            conn.rto.sample(now - conn.rtt_at)
            conn.rtt_seq = None
        conn.retries = 0
        if conn.cc.on_ack(acked, ack, flight):
            conn.retransmit_first()
        conn.rto_at = now + conn.rto.rto if ack < conn.snd_max else None
    elif (
        ack == una
        and pure
        and wnd == conn.snd_wnd
        and conn.snd_max > una
        and conn.cc.on_duplicate_ack(conn.snd_max - una, conn.snd_max)
    ):
        conn.retransmit_first()
    if conn.snd_wl1 < seq or (conn.snd_wl1 == seq and conn.snd_wl2 <= ack):
        conn.snd_wnd = wnd
        conn.snd_wl1, conn.snd_wl2 = seq, ack
        if wnd > conn.max_snd_wnd:
            conn.max_snd_wnd = wnd
        if wnd:
            conn.persist_at = None


def _process_fin_acked(conn: TcpConnection, now: float) -> None:
    fin_acked = conn.fin_queued and conn.snd_una == conn.buf_seq + len(conn.snd_buf) + 1
    if not fin_acked:
        return
    if conn.state == State.FIN_WAIT_1:
        conn.state = State.FIN_WAIT_2
        if conn.orphaned:  # nobody will read: don't wait forever for the peer's FIN
            conn.timewait_at = now + FIN_WAIT_2_TIMEOUT_S
    elif conn.state == State.CLOSING:
        conn.enter_time_wait(now)
    elif conn.state == State.LAST_ACK:
        conn.finish()


def _receive_data(conn: TcpConnection, seq: int, payload: bytes, now: float) -> None:
    rcv_nxt = conn.rcv_nxt
    if seq < rcv_nxt:
        payload = payload[rcv_nxt - seq :]
        seq = rcv_nxt
    right = rcv_nxt + max(conn.window(), conn.rcv_adv_edge - rcv_nxt)
    if seq + len(payload) > right:
        payload = payload[: right - seq]
    if not payload:
        return
    if seq > rcv_nxt:
        conn.reorder.add(seq, payload)
        conn.ack_now = True  # a duplicate ACK tells the peer about the gap
        return
    conn.rx.append(payload)
    rcv_nxt += len(payload)
    if conn.reorder.size:
        more, rcv_nxt = conn.reorder.pop_ready(rcv_nxt)
        if more:
            conn.rx.extend(more)
            conn.ack_now = True  # a filled gap is acknowledged at once
    conn.rcv_nxt = rcv_nxt
    conn.segs_unacked += 1
    if conn.segs_unacked >= ACK_EVERY_SEGMENTS:
        conn.transmit(conn.snd_max, TCP_ACK)
    elif conn.delack_at is None:
        conn.delack_at = now + DELAYED_ACK_S


def _fin_received(conn: TcpConnection, now: float) -> None:
    conn.rcv_nxt += 1
    conn.peer_fin_seq = -1  # seen; never again
    conn.ack_now = True
    conn.emit(ev.StreamEnded(conn))
    if conn.state == State.ESTABLISHED:
        conn.state = State.CLOSE_WAIT
    elif conn.state == State.FIN_WAIT_1:
        conn.state = State.CLOSING
    elif conn.state == State.FIN_WAIT_2:
        conn.enter_time_wait(now)
