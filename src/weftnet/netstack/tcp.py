"""One TCP connection: the RFC 9293 state machine, without I/O.

Theory of operation
-------------------
The ``Stack`` owns connections and calls, with ``now`` in monotonic seconds:
``segment_received`` for every segment of this flow, ``flush`` once per batch (sends
what the windows allow, and a pending ACK), ``on_timer`` when ``next_timer_at`` passes,
and the app calls ``send``, ``close``, ``abort`` and ``pause_receiving``. Packets go to
the stack's output list, events to its event list; received data collects in ``rx``
and the stack joins it into one ``DataReceived`` per batch.

Sequence numbers are kept unwrapped: plain Python integers that start at the ISN and
grow past 2**32. Each incoming SEQ/ACK is unwrapped relative to RCV.NXT/SND.UNA (the
nearest integer with the same low 32 bits), so every comparison below is ``<`` on ints
and RFC 9293's modular arithmetic (§3.4) lives in two lines.

Send side. ``snd_buf`` holds the bytes from SND.UNA on (unacknowledged, then unsent);
``buf_seq`` is the sequence number of its first byte; a FIN the app asked for takes the
sequence number after the last byte. ``flush`` sends full-sized segments while
SND.NXT < SND.UNA + min(SND.WND, cwnd) (sender silly-window avoidance: a short segment
only when it empties the buffer or nothing is in flight). ACKs: cumulative, RFC 6298
timer (one timed segment, Karn), NewReno (congestion.py) for fast retransmit/recovery;
a timeout rewinds SND.NXT to SND.UNA (go-back-N, as without SACK) with cwnd = 1 SMSS.
A zero window with data waiting arms the persist timer, whose probes are a bare ACK
with SEQ = SND.UNA - 1 (as Linux's), which makes the peer repeat its window.

Receive side. In-order data goes to ``rx``; data past a gap to the reassembly queue
(reassembly.py) and we ACK at once (a duplicate ACK, so the peer fast-retransmits).
In-order data is acknowledged every second segment, otherwise after DELAYED_ACK_S
(RFC 9293 §3.8.6.3, RFC 1122 4.2.3.2). The window we advertise is ``receive_window``;
while the app has paused receiving, the right edge stops moving (never shrinks).

Options: MSS and window scale (RFC 7323 §2) on SYNs; scaling is used only if both
SYNs carry it. No timestamps, SACK or urgent data (URG is ignored).

Robustness (RFC 5961): a RST is honoured only at exactly RCV.NXT (in-window but not
exact: challenge ACK); a SYN on a synchronized connection draws a challenge ACK; an
ACK above SND.MAX or below SND.UNA - MAX.SND.WND is answered with an ACK and dropped.
"""

from __future__ import annotations

import enum

from weftnet.netstack import events as ev
from weftnet.netstack.congestion import NewReno, RtoEstimator
from weftnet.netstack.packet import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    TcpBuilder,
    TcpOptions,
    TcpSegment,
)
from weftnet.netstack.reassembly import ReassemblyQueue

MASK = 0xFFFFFFFF  # sequence numbers are 32 bits on the wire
HALF = 1 << 31
DELAYED_ACK_S = 0.04  # RFC 1122 allows up to 500 ms; Linux's minimum is 40 ms
ACK_EVERY_SEGMENTS = 2  # RFC 9293 §3.8.6.3: at least every second full-sized segment
TIME_WAIT_S = 60.0  # 2 MSL with Linux's MSL of 30 s
MAX_SYN_RETRIES = 6  # Linux tcp_syn_retries
MAX_RETRIES = 15  # Linux tcp_retries2: about 15 minutes of backed-off retransmissions
MAX_PERSIST_S = 60.0  # ceiling of the zero-window probe interval
KEEPALIVE_INTERVAL_S = 75.0  # Linux tcp_keepalive_intvl
KEEPALIVE_PROBES = 9  # Linux tcp_keepalive_probes
DEFAULT_RECEIVE_WINDOW = 1 << 20  # bytes we let a peer send ahead of the app
MAX_WINDOW_FIELD = 0xFFFF


class State(enum.IntEnum):
    CLOSED = 0
    SYN_SENT = 1
    SYN_RECEIVED = 2
    ESTABLISHED = 3
    FIN_WAIT_1 = 4
    FIN_WAIT_2 = 5
    CLOSING = 6
    TIME_WAIT = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9


SYNCHRONIZED_SENDING = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)
RECEIVING = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})


class TcpError(Exception):
    """An app call the connection's state does not allow (send after close)."""


def window_shift(window: int) -> int:
    """The smallest RFC 7323 shift that lets ``window`` fit in the 16-bit field."""
    shift = 0
    while window >> shift > MAX_WINDOW_FIELD and shift < 14:
        shift += 1
    return shift


class TcpConnection:
    __slots__ = (
        "_builder", "_closed_emitted", "_events", "_out", "_persist_backoff", "_probes",
        "ack_now", "announced", "buf_seq", "cc", "delack_at", "fin_queued", "irs", "iss",
        "keepalive_at", "keepalive_idle_s", "local", "max_snd_wnd", "mss", "our_mss",
        "peer_fin_seq", "persist_at", "rcv_adv_edge", "rcv_nxt", "rcv_wscale",
        "receive_window", "receiving_paused", "remote", "reorder", "retries", "rto",
        "rto_at", "rtt_at", "rtt_seq", "rx", "segs_unacked", "snd_buf", "snd_max",
        "snd_nxt", "snd_una", "snd_wl1", "snd_wl2", "snd_wnd", "snd_wscale", "state",
        "timewait_at", "user",
    )  # fmt: skip

    def __init__(
        self,
        builder: TcpBuilder,
        local: ev.Address,
        remote: ev.Address,
        *,
        iss: int,
        mss: int,
        out: list[bytes],
        events: list[ev.Event],
        receive_window: int = DEFAULT_RECEIVE_WINDOW,
        keepalive_idle_s: float | None = None,
    ) -> None:
        self._builder = builder
        self.local = local
        self.remote = remote
        self._out = out
        self._events = events
        self.user: object = None  # for the stack's user (the asyncio adapter's transport)
        self.state = State.CLOSED
        self.our_mss = mss  # what our MTU allows
        self.mss = mss  # what we send: min(ours, the peer's MSS option)
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.buf_seq = iss + 1
        self.snd_buf = bytearray()
        self.fin_queued = False
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_wscale = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv_edge = 0
        self.receive_window = receive_window
        self.rcv_wscale = window_shift(receive_window)
        self.receiving_paused = False
        self.reorder = ReassemblyQueue()
        self.peer_fin_seq: int | None = None
        self.rx: list[bytes] = []
        self.rto = RtoEstimator()
        self.cc = NewReno(mss)
        self.rtt_seq: int | None = None
        self.rtt_at = 0.0
        self.retries = 0
        self.ack_now = False
        self.segs_unacked = 0
        self.rto_at: float | None = None
        self.delack_at: float | None = None
        self.persist_at: float | None = None
        self._persist_backoff = 0
        self.keepalive_idle_s = keepalive_idle_s
        self.keepalive_at: float | None = None
        self._probes = 0
        self.timewait_at: float | None = None
        self._closed_emitted = False
        self.announced = False  # the user knows of it (connect, or NewConnection)

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local} -> {self.remote} {self.state.name}>"

    # ---- opening ------------------------------------------------------------------

    def open_active(self, now: float) -> None:
        """Send our SYN (SYN-SENT)."""
        self.state = State.SYN_SENT
        self.announced = True
        self._send_syn(now)

    def open_passive(self, seg: TcpSegment, options: TcpOptions, now: float) -> None:
        """Answer a peer's SYN with our SYN-ACK (SYN-RECEIVED)."""
        self.state = State.SYN_RECEIVED
        self._take_syn(seg, options, now)
        self._send_syn(now)

    def _take_syn(self, seg: TcpSegment, options: TcpOptions, now: float) -> None:
        self.irs = seg.seq
        self.rcv_nxt = seg.seq + 1
        self.snd_wnd = self.max_snd_wnd = seg.window  # never scaled in a SYN
        self.snd_wl1 = seg.seq
        peer_mss = options.mss if options.mss is not None else 536  # RFC 9293 §3.7.1
        self.mss = max(min(self.our_mss, peer_mss), 64)
        self.cc = NewReno(self.mss)
        if options.wscale is None:
            self.rcv_wscale = 0
            self.receive_window = min(self.receive_window, MAX_WINDOW_FIELD)
        else:
            self.snd_wscale = options.wscale
        if self.keepalive_idle_s is not None:
            self.keepalive_at = now + self.keepalive_idle_s

    def _send_syn(self, now: float) -> None:
        passive = self.state == State.SYN_RECEIVED
        wscale = self.rcv_wscale if not passive or self.snd_wscale or self.rcv_wscale else None
        options = TcpOptions(mss=self.our_mss, wscale=wscale).pack()
        self._send(self.iss, TCP_SYN | TCP_ACK if passive else TCP_SYN, b"", options)
        self.snd_nxt = self.snd_max = self.iss + 1
        if self.retries == 0:
            self.rtt_seq, self.rtt_at = self.iss, now
        self.rto_at = now + self.rto.rto

    # ---- app calls ----------------------------------------------------------------

    @property
    def send_buffered(self) -> int:
        """Bytes given to ``send`` and not yet acknowledged by the peer."""
        return len(self.snd_buf)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        if self.fin_queued or self.state not in (
            State.SYN_SENT, State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT
        ):  # fmt: skip
            raise TcpError(f"cannot send on a connection in {self.state.name} or after close")
        self.snd_buf += data

    def close(self, now: float) -> None:
        """Send FIN after the buffered data (half close; receiving goes on)."""
        if self.fin_queued or self.state == State.CLOSED:
            return
        self.fin_queued = True  # in SYN-SENT/RECEIVED: sent once established
        if self.state == State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif self.state == State.CLOSE_WAIT:
            self.state = State.LAST_ACK

    def abort(self) -> None:
        """Send RST and forget the connection."""
        if self.state in SYNCHRONIZED_SENDING or self.state == State.FIN_WAIT_2:
            self._builder_rst(self.snd_nxt)
        if self.state != State.CLOSED:
            self._reset(ev.ABORTED)

    def pause_receiving(self, paused: bool) -> None:
        """While paused the advertised window's right edge stays put (the app's buffer
        is full); unpausing opens it again with a window update."""
        if self.receiving_paused and not paused:
            self.ack_now = True
        self.receiving_paused = paused

    # ---- timers -------------------------------------------------------------------

    def next_timer_at(self) -> float | None:
        at = [
            t
            for t in (self.rto_at, self.delack_at, self.persist_at, self.keepalive_at,
                      self.timewait_at)
            if t is not None
        ]  # fmt: skip
        return min(at) if at else None

    def on_timer(self, now: float) -> None:
        if self.timewait_at is not None and now >= self.timewait_at:
            self._finish()
            return
        if self.rto_at is not None and now >= self.rto_at:
            self._retransmission_timeout(now)
        if self.state == State.CLOSED:
            return
        if self.persist_at is not None and now >= self.persist_at:
            self._persist_backoff += 1
            self._send(self.snd_una - 1, TCP_ACK)
            interval = self.rto.rto * (1 << min(self._persist_backoff, 16))
            self.persist_at = now + min(interval, MAX_PERSIST_S)
        if self.keepalive_at is not None and now >= self.keepalive_at:
            if self._probes >= KEEPALIVE_PROBES:
                self._reset(ev.TIMED_OUT)
                return
            self._probes += 1
            self._send(self.snd_una - 1, TCP_ACK)
            self.keepalive_at = now + KEEPALIVE_INTERVAL_S
        if self.delack_at is not None and now >= self.delack_at:
            self.ack_now = True
        self.flush(now)

    def _retransmission_timeout(self, now: float) -> None:
        self.retries += 1
        handshake = self.state in (State.SYN_SENT, State.SYN_RECEIVED)
        if self.retries > (MAX_SYN_RETRIES if handshake else MAX_RETRIES):
            self._reset(ev.TIMED_OUT)
            return
        self.rto.back_off()
        self.rtt_seq = None  # Karn: nothing sent before the timeout is timed
        if handshake:
            self._send_syn(now)
            return
        self.cc.on_timeout(self.snd_max - self.snd_una, self.snd_max)
        self.snd_nxt = self.snd_una
        self.rto_at = None
        self.flush(now)
        if self.rto_at is None:  # nothing could be sent (zero window): persist instead
            self.rto_at = now + self.rto.rto if self.snd_max > self.snd_una else None

    # ---- sending ------------------------------------------------------------------

    def _window(self) -> int:
        if self.receiving_paused:
            return max(0, self.rcv_adv_edge - self.rcv_nxt)
        return self.receive_window

    def _send(
        self, seq: int, flags: int, payload: bytes | bytearray = b"", options: bytes = b""
    ) -> None:
        window = self._window()
        if flags & TCP_SYN:
            field = min(window, MAX_WINDOW_FIELD)
        else:
            field = min(window >> self.rcv_wscale, MAX_WINDOW_FIELD)
        ack = 0
        if flags & TCP_ACK:
            ack = self.rcv_nxt & MASK
            edge = self.rcv_nxt + (field << (0 if flags & TCP_SYN else self.rcv_wscale))
            if edge > self.rcv_adv_edge:
                self.rcv_adv_edge = edge
            self.ack_now = False
            self.segs_unacked = 0
            self.delack_at = None
        self._out.append(self._builder.build(seq & MASK, ack, flags, field, payload, options))

    def _builder_rst(self, seq: int) -> None:
        self._out.append(self._builder.build(seq & MASK, 0, TCP_RST, 0))

    def flush(self, now: float) -> None:
        """Send what the windows allow, then a pending ACK if no segment carried it."""
        if self.state in SYNCHRONIZED_SENDING:
            buf = self.snd_buf
            buf_seq = self.buf_seq
            buf_end = buf_seq + len(buf)
            snd_una = self.snd_una
            wnd_end = snd_una + min(self.snd_wnd, self.cc.cwnd)
            mss = self.mss
            nxt = self.snd_nxt
            while nxt < buf_end:
                n = min(mss, buf_end - nxt, wnd_end - nxt)
                if n <= 0 or (n < mss and n < buf_end - nxt and nxt > snd_una):
                    break
                off = nxt - buf_seq
                end = nxt + n
                flags = TCP_ACK
                if end == buf_end:
                    flags |= TCP_PSH | (TCP_FIN if self.fin_queued else 0)
                self._send(nxt, flags, buf[off : off + n])
                if self.rtt_seq is None and end > self.snd_max:
                    self.rtt_seq, self.rtt_at = nxt, now
                nxt = end + (flags & TCP_FIN)
            if nxt == buf_end and self.fin_queued:
                self._send(nxt, TCP_ACK | TCP_FIN)
                nxt += 1
            self.snd_nxt = nxt
            if nxt > self.snd_max:
                self.snd_max = nxt
            if nxt > snd_una and self.rto_at is None:
                self.rto_at = now + self.rto.rto
            if self.snd_wnd == 0 and nxt == snd_una and buf_end > snd_una:
                if self.persist_at is None:
                    self._persist_backoff = 0
                    self.persist_at = now + self.rto.rto
        if self.ack_now and self.state not in (State.CLOSED, State.SYN_SENT):
            self._send(self.snd_nxt, TCP_ACK)

    def _retransmit_first(self) -> None:
        """Resend the first unacknowledged segment (fast retransmit, partial ACK)."""
        una = self.snd_una
        buf_end = self.buf_seq + len(self.snd_buf)
        n = min(self.mss, buf_end - una)
        flags = TCP_ACK
        if n <= 0:
            n = 0
            if not self.fin_queued:
                return
        off = una - self.buf_seq
        if una + n == buf_end and self.fin_queued:
            flags |= TCP_FIN
        self._send(una, flags, self.snd_buf[off : off + n])
        self.rtt_seq = None

    # ---- receiving ----------------------------------------------------------------

    def segment_received(self, seg: TcpSegment, now: float) -> None:
        """Process one segment of this flow (RFC 9293 §3.10.7)."""
        flags = seg.flags
        if self.keepalive_idle_s is not None:
            self.keepalive_at = now + self.keepalive_idle_s
            self._probes = 0
        state = self.state
        if state == State.SYN_SENT:
            self._syn_sent_received(seg, now)
            return
        if state == State.CLOSED:
            return
        rcv_nxt = self.rcv_nxt
        seq = rcv_nxt + ((seg.seq - rcv_nxt + HALF) & MASK) - HALF
        if flags & TCP_SYN and state == State.SYN_RECEIVED and seq == self.irs:
            self._send_syn(now)  # our SYN-ACK was lost: the peer repeats its SYN
            return
        payload = seg.payload
        plen = len(payload)
        seglen = plen + (flags & TCP_FIN) + (flags & TCP_SYN) // TCP_SYN
        wnd = max(self._window(), self.rcv_adv_edge - rcv_nxt)
        if seglen == 0:
            ok = seq == rcv_nxt if wnd == 0 else rcv_nxt <= seq < rcv_nxt + wnd
        else:
            ok = wnd > 0 and (
                rcv_nxt <= seq < rcv_nxt + wnd or rcv_nxt <= seq + seglen - 1 < rcv_nxt + wnd
            )
        if not ok:
            if not flags & TCP_RST:
                self._send(self.snd_nxt, TCP_ACK)
            return
        if flags & TCP_RST:
            if seq == rcv_nxt:
                self._reset(ev.RESET_BY_PEER)
            else:
                self._send(self.snd_nxt, TCP_ACK)  # RFC 5961 §3.2 challenge ACK
            return
        if flags & TCP_SYN:
            self._send(self.snd_nxt, TCP_ACK)  # RFC 5961 §4.2 challenge ACK
            return
        if not flags & TCP_ACK:
            return
        una = self.snd_una
        ack = una + ((seg.ack - una + HALF) & MASK) - HALF
        if state == State.SYN_RECEIVED:
            if not una < ack <= self.snd_max:
                self._builder_rst(seg.ack)
                return
            self.state = State.FIN_WAIT_1 if self.fin_queued else State.ESTABLISHED
            self.snd_wl1 = seq - 1  # so this ACK's window is taken
            if not self.announced:
                self.announced = True
                self._emit(ev.NewConnection(self))
        if ack > self.snd_max or ack < una - self.max_snd_wnd:
            self._send(self.snd_nxt, TCP_ACK)
            return
        self._process_ack(seq, ack, seg.window, seglen == 0, now)
        if self.state == State.CLOSED:
            return
        self._process_fin_acked(now)
        if self.state == State.CLOSED:
            return
        if plen and self.state in RECEIVING:
            self._receive_data(seq, payload, now)
        if flags & TCP_FIN and self.peer_fin_seq is None and self.state in RECEIVING:
            self.peer_fin_seq = seq + plen
        if self.peer_fin_seq is not None and self.rcv_nxt == self.peer_fin_seq:
            self._fin_received(now)
        elif state == State.TIME_WAIT and flags & TCP_FIN:
            self.ack_now = True
            self.timewait_at = now + TIME_WAIT_S

    def _syn_sent_received(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        acks_syn = bool(flags & TCP_ACK) and (seg.ack - self.iss - 1) & MASK == 0
        if flags & TCP_ACK and not acks_syn:
            if not flags & TCP_RST:
                self._builder_rst(seg.ack)
            return
        if flags & TCP_RST:
            if acks_syn:
                self._reset(ev.REFUSED)
            return
        if not flags & TCP_SYN:
            return
        try:
            options = TcpOptions.unpack(seg.options)
        except ValueError:
            return
        if options.wscale is None:
            self.snd_wscale = 0
        self._take_syn(seg, options, now)
        if not acks_syn:  # simultaneous open (RFC 9293 §3.5 figure 8)
            self.state = State.SYN_RECEIVED
            self._send_syn(now)
            return
        self.snd_una = self.iss + 1
        self.snd_wl1, self.snd_wl2 = seg.seq, self.snd_una
        if self.rtt_seq is not None:
            self.rto.sample(now - self.rtt_at)
            self.rtt_seq = None
        self.rto_at = None
        self.retries = 0
        self.state = State.FIN_WAIT_1 if self.fin_queued else State.ESTABLISHED
        self.ack_now = True
        self._emit(ev.Connected(self))

    def _process_ack(self, seq: int, ack: int, window: int, pure: bool, now: float) -> None:
        wnd = window << self.snd_wscale
        una = self.snd_una
        if ack > una:
            flight = self.snd_max - una
            acked = ack - una
            n = min(ack, self.buf_seq + len(self.snd_buf)) - self.buf_seq
            if n > 0:
                del self.snd_buf[:n]
                self.buf_seq += n
            self.snd_una = ack
            if self.snd_nxt < ack:
                self.snd_nxt = ack
            if self.rtt_seq is not None and ack > self.rtt_seq:
                self.rto.sample(now - self.rtt_at)
                self.rtt_seq = None
            self.retries = 0
            if self.cc.on_ack(acked, ack, flight):
                self._retransmit_first()
            self.rto_at = now + self.rto.rto if ack < self.snd_max else None
        elif ack == una and pure and wnd == self.snd_wnd and self.snd_max > una:
            if self.cc.on_duplicate_ack(self.snd_max - una, self.snd_max):
                self._retransmit_first()
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = wnd
            self.snd_wl1, self.snd_wl2 = seq, ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd:
                self.persist_at = None

    def _process_fin_acked(self, now: float) -> None:
        fin_acked = self.fin_queued and self.snd_una == self.buf_seq + len(self.snd_buf) + 1
        if not fin_acked:
            return
        if self.state == State.FIN_WAIT_1:
            self.state = State.FIN_WAIT_2
        elif self.state == State.CLOSING:
            self._enter_time_wait(now)
        elif self.state == State.LAST_ACK:
            self._finish()

    def _receive_data(self, seq: int, payload: bytes, now: float) -> None:
        rcv_nxt = self.rcv_nxt
        if seq < rcv_nxt:
            payload = payload[rcv_nxt - seq :]
            seq = rcv_nxt
        right = rcv_nxt + max(self._window(), self.rcv_adv_edge - rcv_nxt)
        if seq + len(payload) > right:
            payload = payload[: right - seq]
        if not payload:
            return
        if seq > rcv_nxt:
            self.reorder.add(seq, payload)
            self.ack_now = True  # a duplicate ACK tells the peer about the gap
            return
        self.rx.append(payload)
        rcv_nxt += len(payload)
        if self.reorder.size:
            more, rcv_nxt = self.reorder.pop_ready(rcv_nxt)
            if more:
                self.rx.extend(more)
                self.ack_now = True  # a filled gap is acknowledged at once
        self.rcv_nxt = rcv_nxt
        self.segs_unacked += 1
        if self.segs_unacked >= ACK_EVERY_SEGMENTS:
            self._send(self.snd_nxt, TCP_ACK)
        elif self.delack_at is None:
            self.delack_at = now + DELAYED_ACK_S

    def _fin_received(self, now: float) -> None:
        self.rcv_nxt += 1
        self.peer_fin_seq = -1  # seen; never again
        self.ack_now = True
        self._emit(ev.StreamEnded(self))
        if self.state == State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif self.state == State.FIN_WAIT_1:
            self.state = State.CLOSING
        elif self.state == State.FIN_WAIT_2:
            self._enter_time_wait(now)

    # ---- endings ------------------------------------------------------------------

    def _emit(self, event: ev.Event) -> None:
        if self.rx:
            self._events.append(ev.DataReceived(self, b"".join(self.rx)))
            self.rx.clear()
        self._events.append(event)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.rto_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = now + TIME_WAIT_S
        self._emit_closed()

    def _emit_closed(self) -> None:
        if not self._closed_emitted and self.announced:
            self._closed_emitted = True
            self._emit(ev.Closed(self))

    def _finish(self) -> None:
        self.state = State.CLOSED
        self.rto_at = self.delack_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = None
        self._emit_closed()

    def _reset(self, reason: str) -> None:
        self.state = State.CLOSED
        self.rto_at = self.delack_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = None
        self.snd_buf.clear()
        if not self._closed_emitted and self.announced:
            self._closed_emitted = True
            self._emit(ev.Reset(self, reason))
