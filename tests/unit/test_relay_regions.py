"""A node keeps one relay connection per region: the relays of a mesh are one region,
tried in the node's own order, and a relay leaving the map moves the node at once."""

from __future__ import annotations

import asyncio

from weftnet import controlbox, tailcfg
from weftnet.magicsock.relays import Relays

KEY = controlbox.key_to_text(tailcfg.RELAY_KEY_PREFIX, bytes(range(32)))


def entry(name: str, port: int, mesh: str | None = "eu") -> tailcfg.RelayRegion:
    return tailcfg.RelayRegion(name=name, url=f"http://127.0.0.1:{port}", public_key=KEY, mesh=mesh)


def test_the_relays_of_a_mesh_are_one_region_with_one_connection() -> None:
    async def scenario() -> None:
        r = Relays(bytes(range(1, 33)), on_packet=None)
        try:
            await r.update([entry("eu-1", 9), entry("eu-2", 10), entry("asia", 11, None)])
            assert sorted(r.clients) == ["asia", "eu"]
            first = r.servers()["eu"]
            assert first in ("eu-1", "eu-2") and r.servers()["asia"] == "asia"
            client = r.clients["eu"]
            await r.update([entry("eu-1", 9), entry("eu-2", 10), entry("eu-3", 12)])
            assert r.clients["eu"] is client  # a relay joining the region moves nobody
            assert r.servers() == {"eu": first} and "asia" not in r.clients
            others = [n for n in ("eu-1", "eu-2", "eu-3") if n != first]
            await r.update([entry(n, 20 + i) for i, n in enumerate(others)])
            assert r.clients["eu"] is client and r.servers()["eu"] in others  # moved at once
        finally:
            await r.close()

    asyncio.run(scenario())


def test_every_node_has_its_own_order_but_the_same_for_the_same_relays() -> None:
    async def order(node_private: bytes, names: list[str]) -> str:
        r = Relays(node_private, on_packet=None)
        try:
            await r.update([entry(n, 9 + i) for i, n in enumerate(names)])
            return r.servers()["eu"]
        finally:
            await r.close()

    async def scenario() -> None:
        names = [f"eu-{i}" for i in range(4)]
        picks = {await order(bytes([i]) * 32, names) for i in range(1, 40)}
        assert len(picks) > 1  # the nodes spread over the region's relays
        node = bytes([7]) * 32
        assert await order(node, names) == await order(node, list(reversed(names)))

    asyncio.run(scenario())
