"""A relay's counters summed over its clients, those gone included (so they only grow)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weftnet.relay.server import ClientStats


@dataclass(slots=True)
class RelayTotals:
    packets_in: int = 0  # datagrams accepted from clients (within their rate limits)
    bytes_in: int = 0
    packets_out: int = 0  # datagrams queued to the clients they were for
    bytes_out: int = 0
    drops_rate: int = 0  # over a sender's rate limit
    drops_queue: int = 0  # the destination's queue (or all queues together) was full
    drops_no_peer: int = 0  # to a key not connected here
    drops_self: int = 0  # addressed to the sender's own key

    def add(self, c: ClientStats) -> None:
        self.packets_in += c.packets_in
        self.bytes_in += c.bytes_in
        self.packets_out += c.packets_out
        self.bytes_out += c.bytes_out
        self.drops_rate += c.drops_rate
        self.drops_queue += c.drops_queue
        self.drops_no_peer += c.drops_no_peer
        self.drops_self += c.drops_self

    def plus(self, clients: list[ClientStats]) -> RelayTotals:
        """These totals with ``clients`` (the connected ones) added; self is unchanged."""
        out = replace(self)
        for c in clients:
            out.add(c)
        return out
