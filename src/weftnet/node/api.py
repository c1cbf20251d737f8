"""The local API in tailnet mode: one method per command of ``localapi.COMMANDS``.

Queries are answered here from the daemon's parts; the commands that change state
(up, down, logout) are the daemon's own methods. docs/node.md lists every request and
its answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from weftnet.node import status
from weftnet.node.whois import WhoisError, whois

if TYPE_CHECKING:
    from weftnet.node.daemon import NodeDaemon

Answer = dict[str, Any]


def ok(result: Any) -> Answer:
    return {"ok": True, "result": result}


def error(text: str) -> Answer:
    return {"ok": False, "error": text}


class NodeApi:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon

    async def api_status(self, req: dict[str, Any]) -> Answer:
        return ok(status.node_status(self.d))

    async def api_metrics(self, req: dict[str, Any]) -> Answer:
        return ok(self.d.metrics.text())

    async def api_ip(self, req: dict[str, Any]) -> Answer:
        return ok([str(a.ip) for a in self.d.engine.addresses])

    async def api_up(self, req: dict[str, Any]) -> Answer:
        return await self.d.up(req)

    async def api_set(self, req: dict[str, Any]) -> Answer:
        return await self.d.set(req)

    async def api_exit_node_list(self, req: dict[str, Any]) -> Answer:
        return ok(status.exit_nodes(self.d))

    async def api_down(self, req: dict[str, Any]) -> Answer:
        return await self.d.down()

    async def api_logout(self, req: dict[str, Any]) -> Answer:
        return await self.d.logout()

    async def api_ping(self, req: dict[str, Any]) -> Answer:
        target = str(req.get("target", ""))
        n = status.find_peer(self.d.session.netmap, target)
        if n is None or self.d.magic is None:
            return error(f"no peer {target!r} in the tailnet (see weft status)")
        result = await self.d.magic.ping(n.id, float(req.get("timeout", 2)))
        return ok(status.ping_answer(n, result))

    async def api_netcheck(self, req: dict[str, Any]) -> Answer:
        relays = self.d.session.netmap.relay_map or []
        if self.d.magic is None or not any(r.stun_port for r in relays):
            return error("no STUN servers known yet: is this node up?")
        if self.d.portmap is None:
            return await self.d.magic.netcheck()
        # The gateway's probe runs while STUN and the relays are measured.
        answer, portmap = await asyncio.gather(self.d.magic.netcheck(), self.d.portmap.netcheck())
        if answer.get("ok"):
            answer["result"]["port_mapping"] = portmap
        return answer

    async def api_dns_status(self, req: dict[str, Any]) -> Answer:
        return ok(status.dns_status(self.d))

    async def api_whois(self, req: dict[str, Any]) -> Answer:
        nm = self.d.session.netmap
        try:
            return ok(whois(nm.self_node, nm.peers.values(), str(req.get("ip", ""))))
        except WhoisError as e:
            return error(str(e))
