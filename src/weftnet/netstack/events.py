"""What the stack tells its user: events returned by ``Stack.next_event()``.

Theory of operation
-------------------
Like h11 and aioquic, the stack never calls back into its user: ``receive``, the app
calls and ``on_timer`` queue events, and the user drains them. Data for one connection
that arrives in one batch of ``receive`` calls comes out as one ``DataReceived`` (the
stack joins it when the events are drained), always before that connection's
``StreamEnded``, ``Closed`` or ``Reset``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weftnet.netstack.tcp import TcpConnection

Address = tuple[str, int]  # (IP address as text, port)


@dataclass(frozen=True, slots=True)
class NewConnection:
    """A peer's connection to a listening port completed its handshake."""

    conn: TcpConnection


@dataclass(frozen=True, slots=True)
class ConnectionRequest:
    """A peer's SYN to a listening port, waiting (with ``Stack(decide_accept=True)``) for
    ``Stack.accept_request(id)`` or ``refuse_request(id)``; undecided, it is refused
    after ``ACCEPT_DECISION_S``."""

    id: int
    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection opened with ``Stack.connect`` completed its handshake."""

    conn: TcpConnection


@dataclass(frozen=True, slots=True)
class DataReceived:
    conn: TcpConnection
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent FIN: no more data will arrive (we may still send)."""

    conn: TcpConnection


@dataclass(frozen=True, slots=True)
class Closed:
    """Both directions are finished; the connection is gone for its user."""

    conn: TcpConnection


RESET_BY_PEER = "reset"  # the peer sent RST on an established connection
REFUSED = "refused"  # the peer answered our SYN with RST
TIMED_OUT = "timeout"  # retransmissions or keepalives went unanswered
ABORTED = "aborted"  # our own abort()


@dataclass(frozen=True, slots=True)
class Reset:
    conn: TcpConnection
    reason: str  # one of the constants above


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    payload: bytes
    src: Address
    dst: Address


@dataclass(frozen=True, slots=True)
class UdpUnreachable:
    """An ICMP/ICMPv6 port unreachable for a datagram we sent from ``src`` to ``dst``."""

    src: Address
    dst: Address


@dataclass(frozen=True, slots=True)
class EchoReply:
    """An answer to ``Stack.ping``."""

    src: str
    ident: int
    seq: int
    payload: bytes


Event = (
    NewConnection
    | ConnectionRequest
    | Connected
    | DataReceived
    | StreamEnded
    | Closed
    | Reset
    | UdpDatagram
    | UdpUnreachable
    | EchoReply
)
