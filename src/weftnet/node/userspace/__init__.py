"""weftd without a TUN device: the netstack adapter (net.py), proxies as they come."""
