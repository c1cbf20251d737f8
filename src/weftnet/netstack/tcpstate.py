"""TCP's states, protocol constants and the errors app calls can meet (RFC 9293).

Theory of operation
-------------------
Shared by the connection (tcp.py: app calls, output, timers) and the segment-arrival
processing (tcp_input.py), so that neither imports the other's internals. RFC 9293
§3.3.2 draws the state diagram; LISTEN is not a state of a connection here (the Stack
listens and creates connections in SYN-RECEIVED).
"""

from __future__ import annotations

import enum

MASK = 0xFFFFFFFF  # sequence numbers are 32 bits on the wire
HALF = 1 << 31
DELAYED_ACK_S = 0.04  # RFC 1122 allows up to 500 ms; Linux's minimum is 40 ms
ACK_EVERY_SEGMENTS = 2  # RFC 9293 §3.8.6.3: at least every second full-sized segment
FIN_WAIT_2_TIMEOUT_S = 60.0  # Linux tcp_fin_timeout, for connections the app closed
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
