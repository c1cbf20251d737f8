"""weftnet: a private mesh VPN."""

__version__ = "0.1.0"
