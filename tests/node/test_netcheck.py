"""`weft netcheck` re-asks the STUN servers without dropping what they said before, so
behind a hard NAT it neither changes our published endpoints nor restarts the map
stream (defect D13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.node.support import SERVER, FakeServer, make_daemon, node
from weftnet import stun, tailcfg
from weftnet.magicsock.conn import MagicSock
from weftnet.node.api import NodeApi
from weftnet.node.daemon import NodeDaemon

ME = node(1, "me", ["100.64.0.1"])
UP = {"login_server": SERVER, "auth_key": "weftkey-test", "hostname": "me"}
# A hard NAT: each STUN server sees us on another port.
MAPPED = {("127.0.0.1", 3478): ("198.18.0.9", 1000), ("127.0.0.2", 3478): ("198.18.0.9", 2000)}


async def answer_stun(magic: MagicSock) -> None:
    """Answer every pending binding request as the hard NAT would, one at a time."""
    while True:
        for txid, (server, _) in list(magic._stun_pending.items()):
            magic._stun_response(stun.binding_response(txid, MAPPED[server]))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.01)


def test_netcheck_keeps_the_endpoints_and_the_map_stream(tmp_path: Path) -> None:
    server = FakeServer(ME, [])

    async def scenario() -> tuple[int, int, dict[str, object], bool]:
        d: NodeDaemon = make_daemon(tmp_path, server)
        await d.start()
        try:
            await d.up(UP)
            magic = d.magic
            assert magic is not None
            regions = [
                tailcfg.RelayRegion(name=f"r{i}", url=f"http://{host}:1",
                                    public_key="relaykey:", stun_port=port)
                for i, (host, port) in enumerate(MAPPED)
            ]  # fmt: skip
            # As a map would bring them, without connecting to the relays themselves.
            d.session.apply(tailcfg.MapResponse(relay_map=regions))
            magic.relays.regions = {r.name: r for r in regions}
            responder = asyncio.create_task(answer_stun(magic))
            first = (await NodeApi(d).api_netcheck({}))["result"]
            await asyncio.sleep(0.3)  # the map stream restarts once for the new endpoints
            before = len(server.streams)
            magic.endpoints_changed.clear()
            again = (await NodeApi(d).api_netcheck({}))["result"]
            await asyncio.sleep(0.3)
            responder.cancel()
            assert again == first
            return before, len(server.streams), again, magic.endpoints_changed.is_set()
        finally:
            await d.close()

    before, after, report, changed = asyncio.run(scenario())
    assert report["mapping_varies_by_destination"] is True
    assert report["stun_servers"] == {"127.0.0.1:3478": "198.18.0.9:1000",
                                      "127.0.0.2:3478": "198.18.0.9:2000"}  # fmt: skip
    assert not changed and after == before
