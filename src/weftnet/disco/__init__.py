"""Disco: path discovery between peers, after Tailscale's disco protocol.

Theory of operation: every weftd start makes a fresh disco key pair (X25519) and
reports the public half in the map, next to its node key and endpoints. Peers then talk
about paths with small boxed messages, sent on the WireGuard UDP socket (and through
the relay when no direct path works yet):

- ``Ping(txid, node_key)`` to a candidate endpoint; answered with
- ``Pong(txid, src)`` sent back to where the ping came from. A pong proves the path
  works both ways and measures its latency; ``src`` tells the pinger its own address as
  the peer saw it.
- ``CallMeMaybe(endpoints)`` through the relay: "I am pinging you now; ping me at
  these". Both sides send at once, so each side's outbound ping opens its own NAT for
  the other side's ping (UDP hole punching, RFC 5128 section 3.3).

The path finder (weftnet.magicsock.pathfinder) decides whom to ping when and which path to use.
Packets are told apart from WireGuard and STUN on the shared socket by their 6-byte
``MAGIC`` (see packet.py). Wire format: packet.py (frame and box), messages.py (bodies).
Nothing here does I/O, reads a clock or draws random numbers: nonces and txids are
passed in.
"""

from weftnet.disco.messages import (
    CALL_ME_MAYBE,
    DISCO_VERSION,
    ENDPOINT_SIZE,
    MAX_CALL_ME_MAYBE_ENDPOINTS,
    PING,
    PONG,
    TXID_SIZE,
    CallMeMaybe,
    Endpoint,
    Message,
    Ping,
    Pong,
    canonical_endpoint,
    pack_endpoint,
    unpack_endpoint,
    unpack_message,
)
from weftnet.disco.packet import (
    KEY_SIZE,
    MAGIC,
    MIN_PACKET_SIZE,
    NONCE_SIZE,
    PACKET_HEADER_SIZE,
    Packet,
    is_disco,
    open_packet,
    public_key,
    seal,
)

__all__ = [
    "CALL_ME_MAYBE",
    "DISCO_VERSION",
    "ENDPOINT_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "MAX_CALL_ME_MAYBE_ENDPOINTS",
    "MIN_PACKET_SIZE",
    "NONCE_SIZE",
    "PACKET_HEADER_SIZE",
    "PING",
    "PONG",
    "TXID_SIZE",
    "CallMeMaybe",
    "Endpoint",
    "Message",
    "Packet",
    "Ping",
    "Pong",
    "canonical_endpoint",
    "is_disco",
    "open_packet",
    "pack_endpoint",
    "public_key",
    "seal",
    "unpack_endpoint",
    "unpack_message",
]
