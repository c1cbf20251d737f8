"""MagicDNS and custom DNS on the node (docs/dns.md).

The node's resolver ("quad-100") listens on SERVICE_V4 and SERVICE_V6, port 53, UDP and
TCP, addresses of the TUN device itself; it answers only this host's own programs. The
pure parts live in this package (the name table, the resolver's decisions, the OS
configuration to write); the I/O shells in weftnet.node (dnsserver: the sockets and the
upstream queries; osdns: /etc/resolv.conf or systemd-resolved).
"""

from __future__ import annotations

SERVICE_V4 = "100.100.100.100"
SERVICE_V6 = "fd7a:115c:a1e0::53"
SERVICE_ADDRESSES = (SERVICE_V4, SERVICE_V6)
DNS_PORT = 53
