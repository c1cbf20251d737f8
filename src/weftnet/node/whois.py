"""`weft whois IP`: which node, and whose, holds an overlay address.

Answered from the network map weftd already has (ourselves and our peers), so it works while the coordination server is unreachable. A tagged node
is owned by its tags and has no user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from weftnet import tailcfg


class WhoisError(ValueError):
    """What to tell the user, in one line."""


def _ips(node: tailcfg.Node) -> list[str]:
    return [a.split("/")[0] for a in node.addresses]


def whois(
    self_node: tailcfg.Node | None, peers: Iterable[tailcfg.Node], text: str
) -> dict[str, Any]:
    """The node holding address ``text`` and its owner; WhoisError if none does."""
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        raise WhoisError(f"{text!r} is not an IP address") from None
    peers = list(peers)
    if self_node is None and not peers:
        raise WhoisError("no network map yet: is this node up (`weft up`)?")
    candidates = ([self_node] if self_node is not None else []) + peers
    for node in candidates:
        if any(ipaddress.ip_address(a) == ip for a in _ips(node)):
            user = node.user
            is_self = self_node is not None and node.id == self_node.id
            return {
                "node": {
                    "id": node.id,
                    "name": node.given_name or node.name,
                    "hostname": node.name,
                    "addresses": _ips(node),
                    "os": node.os,
                    "client_version": node.client_version,
                    "tags": list(node.tags),
                    "online": True if is_self else node.online,
                    "self": is_self,
                },
                "user": {"id": user.id, "name": user.name} if user else None,
            }
    raise WhoisError(f"no node in the tailnet has the address {ip}")
