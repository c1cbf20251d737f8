"""The coordination server's own relay: a RelayServer on the server's HTTP port.

Theory of operation: ``weft-control serve`` runs one ``RelayServer`` inside uvicorn
(``relay.mount.uvicorn_protocol``: ``GET /relay`` with ``Upgrade: weft-relay`` is handed
to the relay, every other request goes to the app). Its key is ``DATA_DIR/relay.key``.

Admission asks the map hub (``Hub.admits``): the node must exist and its key must not
have expired, as of a network map read after the relay asked. Revocation rides on the
map hub too: after every rebuild (every deletion, expiry, re-login with a new key) the
hub calls ``cut_revoked`` with the new map, which disconnects every connected client
whose key it no longer admits - within milliseconds of the change, on the hub's loop,
which is also the relay's.

Each node reaches the server by some URL; that URL, as the node used it, is where it
finds this relay too, so ``region(url)`` builds the relay map entry per map stream.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from weftnet import controlbox, tailcfg
from weftnet.control.domain.netmap import NetMap
from weftnet.control.domain.relays import relay_key_text
from weftnet.control.server.hub import Hub
from weftnet.relay.server import RelayServer

log = logging.getLogger(__name__)

DEFAULT_REGION = "default"  # the region name of the server's own relay
DEFAULT_RELAY_RATE = 200_000_000  # bytes/s a client may send; does not throttle a benchmark
REVOKED = "node key revoked"


def node_key_text(key: bytes) -> str:
    return controlbox.key_to_text(tailcfg.NODE_KEY_PREFIX, key)


class EmbeddedRelay:
    def __init__(
        self,
        private_key: bytes,
        hub: Hub,
        *,
        region_name: str = DEFAULT_REGION,
        stun_port: int | None = None,
        rate_bytes_per_s: int = DEFAULT_RELAY_RATE,
    ) -> None:
        self.hub = hub
        self.region_name = region_name
        self.stun_port = stun_port
        self.server = RelayServer(private_key, self._admit, rate_bytes_per_s=rate_bytes_per_s)
        self.public_key = relay_key_text(self.server.public_key)
        hub.watch(self.cut_revoked)

    async def _admit(self, key: bytes) -> bool:
        return await self.hub.admits(node_key_text(key))

    def region(self, server_url: str) -> tailcfg.RelayRegion:
        """This relay's relay map entry, for a node that reaches the server at ``server_url``
        (the relay is on the server's root: ``<scheme>://<host:port>/relay``)."""
        parts = urlsplit(server_url)
        return tailcfg.RelayRegion(
            name=self.region_name,
            url=f"{parts.scheme}://{parts.netloc}" if parts.netloc else server_url.rstrip("/"),
            public_key=self.public_key,
            stun_port=self.stun_port,
        )

    def cut_revoked(self, netmap: NetMap) -> None:
        """Disconnect every client whose node key ``netmap`` no longer admits."""
        now = self.hub.clock()
        for client in self.server.clients():
            if not netmap.admits(node_key_text(client.node_key), now):
                log.info("relay: cutting off %s: not admitted any more", client.node_key.hex()[:16])
                self.server.disconnect(client.node_key, REVOKED)

    async def close(self) -> None:
        await self.server.close()
