"""Port mapping: asking the NAT router to forward a port to us (issue 19).

A node behind a NAT that maps each destination to its own port ("hard" NAT) cannot be
reached through the address STUN reports. Most home routers run a port-mapping service
(miniupnpd and others); with a mapping, the router forwards one public port to our
WireGuard socket, and the hard NAT behaves like a public address. Three protocols,
whichever the gateway answers (after Tailscale's net/portmapper):

- ``pcp``: Port Control Protocol, RFC 6887 (UDP 5351 on the gateway);
- ``natpmp``: NAT-PMP, RFC 6886 (the same port: PCP's predecessor);
- ``upnp``: UPnP IGD, SSDP discovery then SOAP over HTTP (WANIPConnection).

These three modules are pure: bytes in, values out, no I/O, clock or randomness.
``client`` is the I/O shell (sockets, HTTP, the gateway) and ``mapper`` the supervised
task in weftd that keeps one mapping alive and publishes it as an endpoint.
Every parser raises ``weftnet.wireguard.errors.ProtocolError`` (or a subclass) for bad
input, and nothing else.
"""
