"""The packet marks weftd uses (docs/routes.md). Pure constants, shared by the socket
side (weftnet.sockmark) and the routing plan (weftnet.node.routeplan)."""

from __future__ import annotations

BYPASS_MARK = 0x80000  # on weftd's own sockets: the main table, never table 52 (as Tailscale's)
FORWARD_MARK = 0x40000  # on packets a router or exit node forwards from weft0: masqueraded
MARK_MASK = 0xFF0000  # the bits of the packet mark weftd owns (the rest is others')
