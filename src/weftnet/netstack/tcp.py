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
Segments without data or FIN carry SEQ = SND.MAX, as BSD's tcp_output does: after a
rewind, SND.NXT may lie below what the peer has received, and an ACK numbered there
would fail the peer's acceptability test and be dropped (both ends rewound would then
ignore each other's ACKs forever; the property test found that).
The first two duplicate ACKs each let one new segment out beyond cwnd (Limited
Transmit, RFC 3042), so a small window still collects the three for fast retransmit.
A zero window with data waiting arms the persist timer, whose probes are a bare ACK
with SEQ = SND.UNA - 1 (as Linux's), which makes the peer repeat its window.

Receiving is tcp_input.py (RFC 9293 §3.10.7, "SEGMENT ARRIVES").

Options: MSS and window scale (RFC 7323 §2) on SYNs; scaling is used only if both
SYNs carry it. No timestamps, SACK or urgent data (URG is ignored).
"""

from __future__ import annotations

from weftnet.netstack import events as ev
from weftnet.netstack import tcp_input
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
from weftnet.netstack.tcpstate import (
    DEFAULT_RECEIVE_WINDOW,
    KEEPALIVE_INTERVAL_S,
    KEEPALIVE_PROBES,
    MASK,
    MAX_PERSIST_S,
    MAX_RETRIES,
    MAX_SYN_RETRIES,
    MAX_WINDOW_FIELD,
    SYNCHRONIZED_SENDING,
    TIME_WAIT_S,
    State,
    TcpError,
    window_shift,
)

__all__ = ["DEFAULT_RECEIVE_WINDOW", "TIME_WAIT_S", "State", "TcpConnection", "TcpError"]


class TcpConnection:
    __slots__ = (
        "_builder",
        "_closed_emitted",
        "_events",
        "_out",
        "_persist_backoff",
        "ack_now",
        "announced",
        "buf_seq",
        "cc",
        "delack_at",
        "fin_queued",
        "irs",
        "iss",
        "keepalive_at",
        "keepalive_idle_s",
        "keepalive_probes",
        "local",
        "max_snd_wnd",
        "mss",
        "orphaned",
        "our_mss",
        "peer_fin_seq",
        "persist_at",
        "rcv_adv_edge",
        "rcv_nxt",
        "rcv_wscale",
        "receive_window",
        "receiving_paused",
        "remote",
        "reorder",
        "retries",
        "rto",
        "rto_at",
        "rtt_at",
        "rtt_seq",
        "rx",
        "segs_unacked",
        "snd_buf",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "state",
        "timewait_at",
        "user",
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
        self.keepalive_probes = 0
        self.timewait_at: float | None = None
        self._closed_emitted = False
        self.orphaned = False  # closed with nobody reading: FIN-WAIT-2 times out
        self.announced = False  # the user knows of it (connect, or NewConnection)

    def __repr__(self) -> str:
        return f"<TcpConnection {self.local} -> {self.remote} {self.state.name}>"

    # ---- opening ------------------------------------------------------------------

    def open_active(self, now: float) -> None:
        """Send our SYN (SYN-SENT)."""
        self.state = State.SYN_SENT
        self.announced = True
        self.transmit_syn(now)

    def open_passive(self, seg: TcpSegment, options: TcpOptions, now: float) -> None:
        """Answer a peer's SYN with our SYN-ACK (SYN-RECEIVED)."""
        self.state = State.SYN_RECEIVED
        self.take_syn(seg, options, now)
        self.transmit_syn(now)

    def take_syn(self, seg: TcpSegment, options: TcpOptions, now: float) -> None:
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

    def transmit_syn(self, now: float) -> None:
        passive = self.state == State.SYN_RECEIVED
        wscale = self.rcv_wscale if not passive or self.snd_wscale or self.rcv_wscale else None
        options = TcpOptions(mss=self.our_mss, wscale=wscale).pack()
        self.transmit(self.iss, TCP_SYN | TCP_ACK if passive else TCP_SYN, b"", options)
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

    def close(self, now: float, *, orphan: bool = False) -> None:
        """Send FIN after the buffered data (half close: receiving goes on). ``orphan``:
        the app will not read either (a full close), so FIN-WAIT-2 ends after
        FIN_WAIT_2_TIMEOUT_S even if the peer never sends its FIN."""
        self.orphaned = self.orphaned or orphan
        if self.fin_queued or self.state == State.CLOSED:
            return
        self.fin_queued = True  # in SYN-SENT/RECEIVED: sent once established
        if self.state == State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif self.state == State.CLOSE_WAIT:
            self.state = State.LAST_ACK

    def abort(self) -> None:
        """Send RST and forget the connection."""
        if self.state in SYNCHRONIZED_SENDING or self.state in (
            State.SYN_RECEIVED, State.FIN_WAIT_2
        ):  # fmt: skip
            self.transmit_rst(self.snd_max)
        if self.state != State.CLOSED:
            self.reset(ev.ABORTED)

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
            self.finish()
            return
        if self.rto_at is not None and now >= self.rto_at:
            self._retransmission_timeout(now)
        if self.state == State.CLOSED:
            return
        if self.persist_at is not None and now >= self.persist_at:
            self._persist_backoff += 1
            self.transmit(self.snd_una - 1, TCP_ACK)
            interval = self.rto.rto * (1 << min(self._persist_backoff, 16))
            self.persist_at = now + min(interval, MAX_PERSIST_S)
        if self.keepalive_at is not None and now >= self.keepalive_at:
            if self.keepalive_probes >= KEEPALIVE_PROBES:
                self.reset(ev.TIMED_OUT)
                return
            self.keepalive_probes += 1
            self.transmit(self.snd_una - 1, TCP_ACK)
            self.keepalive_at = now + KEEPALIVE_INTERVAL_S
        if self.delack_at is not None and now >= self.delack_at:
            self.ack_now = True
        self.flush(now)

    def _retransmission_timeout(self, now: float) -> None:
        self.retries += 1
        handshake = self.state in (State.SYN_SENT, State.SYN_RECEIVED)
        if self.retries > (MAX_SYN_RETRIES if handshake else MAX_RETRIES):
            self.reset(ev.TIMED_OUT)
            return
        self.rto.back_off()
        self.rtt_seq = None  # Karn: nothing sent before the timeout is timed
        if handshake:
            self.transmit_syn(now)
            return
        self.cc.on_timeout(self.snd_max - self.snd_una, self.snd_max)
        self.snd_nxt = self.snd_una
        self.rto_at = None
        self.flush(now)
        if self.rto_at is None:  # nothing could be sent (zero window): persist instead
            self.rto_at = now + self.rto.rto if self.snd_max > self.snd_una else None

    # ---- sending ------------------------------------------------------------------

    def window(self) -> int:
        if self.receiving_paused:
            return max(0, self.rcv_adv_edge - self.rcv_nxt)
        return self.receive_window

    def transmit(
        self, seq: int, flags: int, payload: bytes | bytearray = b"", options: bytes = b""
    ) -> None:
        window = self.window()
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

    def transmit_rst(self, seq: int) -> None:
        self._out.append(self._builder.build(seq & MASK, 0, TCP_RST, 0))

    def flush(self, now: float) -> None:
        """Send what the windows allow, then a pending ACK if no segment carried it."""
        if self.state in SYNCHRONIZED_SENDING:
            buf = self.snd_buf
            buf_seq = self.buf_seq
            buf_end = buf_seq + len(buf)
            snd_una = self.snd_una
            wnd_end = snd_una + min(self.snd_wnd, self.cc.send_window())
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
                self.transmit(nxt, flags, buf[off : off + n])
                if self.rtt_seq is None and end > self.snd_max:
                    self.rtt_seq, self.rtt_at = nxt, now
                nxt = end + (flags & TCP_FIN)
            if nxt == buf_end and self.fin_queued:
                self.transmit(nxt, TCP_ACK | TCP_FIN)
                nxt += 1
            self.snd_nxt = nxt
            if nxt > self.snd_max:
                self.snd_max = nxt
            if nxt > snd_una and self.rto_at is None:
                self.rto_at = now + self.rto.rto
            if self.snd_wnd == 0 and nxt == snd_una < buf_end and self.persist_at is None:
                self._persist_backoff = 0
                self.persist_at = now + self.rto.rto
        if self.ack_now and self.state not in (State.CLOSED, State.SYN_SENT):
            self.transmit(self.snd_max, TCP_ACK)

    def retransmit_first(self) -> None:
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
        self.transmit(una, flags, self.snd_buf[off : off + n])
        self.rtt_seq = None

    # ---- receiving: tcp_input.py ------------------------------------------------------

    def segment_received(self, seg: TcpSegment, now: float) -> None:
        """Process one segment of this flow (RFC 9293 §3.10.7, in tcp_input.py)."""
        tcp_input.segment_arrives(self, seg, now)

    # ---- endings ------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        if self.rx:
            self._events.append(ev.DataReceived(self, b"".join(self.rx)))
            self.rx.clear()
        self._events.append(event)

    def enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.rto_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = now + TIME_WAIT_S
        self.emit_closed()

    def emit_closed(self) -> None:
        if not self._closed_emitted and self.announced:
            self._closed_emitted = True
            self.emit(ev.Closed(self))

    def finish(self) -> None:
        self.state = State.CLOSED
        self.rto_at = self.delack_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = None
        self.emit_closed()

    def reset(self, reason: str) -> None:
        self.state = State.CLOSED
        self.rto_at = self.delack_at = self.persist_at = self.keepalive_at = None
        self.timewait_at = None
        self.snd_buf.clear()
        if not self._closed_emitted and self.announced:
            self._closed_emitted = True
            self.emit(ev.Reset(self, reason))
