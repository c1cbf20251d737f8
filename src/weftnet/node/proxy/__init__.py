"""Userspace networking's doors (docs/userspace.md): the SOCKS5 and HTTP proxies that
take this host's programs into the tailnet, and the forwarder that takes peers'
connections to services on 127.0.0.1. All of them speak to the in-process TCP/IP stack
(weftnet.node.userspace.net.UserspaceNet) and resolve names from the node's own
MagicDNS table."""
