"""TCP's sender-side estimators: retransmission timeout and NewReno congestion control.

Theory of operation
-------------------
``RtoEstimator`` is RFC 6298: the first RTT sample R sets SRTT = R, RTTVAR = R/2; later
ones RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, SRTT = 7/8 SRTT + 1/8 R; RTO = SRTT +
max(G, 4 RTTVAR), clamped to [MIN_RTO_S, MAX_RTO_S]. Samples come only from segments
never retransmitted (Karn's algorithm, §3; the connection enforces it). Each expiry of
the timer doubles the RTO (``back_off``, §5.5) until a new sample arrives.

Deviation: RFC 6298 (2.4) asks for a 1 s minimum; like Linux we use 200 ms, because the
tunnel's RTTs are LAN-like and a 1 s floor makes every tail loss cost a second.

``NewReno`` is RFC 5681 slow start and congestion avoidance with RFC 6582's fast
recovery (no SACK): the third duplicate ACK halves the window (ssthresh = max(flight/2,
2 SMSS)), retransmits the first unacknowledged segment and inflates cwnd by 3 SMSS;
each further duplicate inflates it by one SMSS; a partial ACK (below ``recover``)
retransmits the next hole and deflates; the ACK covering ``recover`` ends recovery at
cwnd = ssthresh. A timeout collapses cwnd to one SMSS (the loss window). Byte counting
(RFC 3465, L = 2 SMSS) keeps slow start correct with delayed ACKs. The methods return
whether the connection must retransmit its first unacknowledged segment; the connection
does the sending.
"""

from __future__ import annotations

MIN_RTO_S = 0.2  # Linux's TCP_RTO_MIN (see the deviation above)
MAX_RTO_S = 60.0  # RFC 6298 (2.5) allows a maximum of at least 60 s
INITIAL_RTO_S = 1.0  # RFC 6298 (2.1)
CLOCK_GRANULARITY_S = 0.001  # G: the clock is monotonic float seconds
INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
DUPACK_THRESHOLD = 3  # RFC 5681 §3.2
ABC_LIMIT_SEGMENTS = 2  # RFC 3465 L: at most 2 SMSS of growth per ACK in slow start


class RtoEstimator:
    __slots__ = ("rto", "rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO_S

    def sample(self, rtt: float) -> None:
        """A round trip measured on a segment that was sent once (Karn)."""
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(CLOCK_GRANULARITY_S, 4 * self.rttvar)
        self.rto = min(max(rto, MIN_RTO_S), MAX_RTO_S)

    def back_off(self) -> None:
        """The retransmission timer expired (RFC 6298 (5.5))."""
        self.rto = min(self.rto * 2, MAX_RTO_S)


class NewReno:
    __slots__ = ("_ca_bytes", "cwnd", "dupacks", "in_recovery", "mss", "recover", "ssthresh")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = INITIAL_WINDOW_SEGMENTS * mss
        self.ssthresh = 1 << 30  # "arbitrarily high" (RFC 5681 §3.1)
        self.dupacks = 0
        self.in_recovery = False
        self.recover = -1  # highest sequence sent when recovery began (RFC 6582)
        self._ca_bytes = 0

    def send_window(self) -> int:
        """cwnd, plus one SMSS per duplicate ACK before the third (RFC 3042 Limited
        Transmit: new data keeps the ACK clock going when the window is small)."""
        if 0 < self.dupacks < DUPACK_THRESHOLD and not self.in_recovery:
            return self.cwnd + self.dupacks * self.mss
        return self.cwnd

    def on_ack(self, acked: int, ack: int, flight_before: int) -> bool:
        """``acked`` new bytes were acknowledged, up to ``ack``; True: retransmit the
        next hole (a partial ACK during fast recovery)."""
        self.dupacks = 0
        if self.in_recovery:
            if ack >= self.recover:  # full acknowledgment (RFC 6582 §3.2 step 3)
                self.in_recovery = False
                self.cwnd = max(min(self.ssthresh, flight_before - acked + self.mss), self.mss)
                return False
            # partial acknowledgment: deflate by the amount acked, add back one SMSS
            self.cwnd = max(self.cwnd - acked + self.mss, self.mss)
            return True
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, ABC_LIMIT_SEGMENTS * self.mss)
        else:
            self._ca_bytes += acked
            if self._ca_bytes >= self.cwnd:
                self._ca_bytes -= self.cwnd
                self.cwnd += self.mss
        return False

    def on_duplicate_ack(self, flight: int, snd_max: int) -> bool:
        """A duplicate ACK (RFC 5681 §2 definition); True: fast retransmit now."""
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += self.mss
            return False
        if self.dupacks == DUPACK_THRESHOLD:
            if snd_max - 1 <= self.recover:
                return False  # a loss from before the last recovery (RFC 6582 §3.2 step 2)
            self.ssthresh = max(flight // 2, 2 * self.mss)
            self.cwnd = self.ssthresh + DUPACK_THRESHOLD * self.mss
            self.recover = snd_max
            self.in_recovery = True
            return True
        return False

    def on_timeout(self, flight: int, snd_max: int) -> None:
        """The retransmission timer expired (RFC 5681 (4), RFC 6582 §3.2 step 4)."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.dupacks = 0
        self.in_recovery = False
        self.recover = snd_max
        self._ca_bytes = 0
