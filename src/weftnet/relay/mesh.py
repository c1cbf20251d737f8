"""A relay's mesh: the other relays of its region, and which node keys each one holds.

Theory of operation (docs/relay-protocol.md, "Mesh"; the same plan as Tailscale's DERP
mesh): every relay of a region holds the same mesh secret and keeps one connection to
every other relay of the region, as a client of it (``RelayClient`` with the secret:
both ends prove the secret, meshauth.py). Over that connection the peer tells which node
keys are connected to it - PEER_PRESENT for each at once and for every newcomer,
PEER_GONE(disconnected) when one leaves - and this relay sends it, as FORWARD_PACKET or
FORWARD_PACKET_BATCH, the datagrams its own clients address to those keys. The peer
delivers them to its client as RECV_PACKET(_BATCH) from the original sender. So a node
connected to any relay of the region reaches every node connected to any other.

``Mesh`` is that outgoing side plus the check of an incoming peer's proof (the incoming
connections themselves are the RelayServer's). ``set_peers`` gives the peers (from the
relay map, or configured URLs); a peer that leaves is disconnected and forgotten with
everything it held. What a peer told is trusted only while its connection is up: when
it drops, every key it held is forgotten at once, and packets for them are dropped as
for any absent key until the node reconnects somewhere. A key held by several peers
(a node moving between relays) goes to the one that announced it last.
"""

from __future__ import annotations

import logging
import ssl
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey

from weftnet.relay import meshauth
from weftnet.relay import protocol as p
from weftnet.relay.client import RelayClient, RelayTarget

log = logging.getLogger(__name__)

Spawn = Callable[[str, Callable[[], Awaitable[None]]], None]
MESH_QUEUE_PACKETS = 4096  # datagrams waiting for one peer's connection before drops


def load_secret(path: Path) -> bytes:
    """The mesh secret in ``path``; MeshSecretError if it is unreadable, readable by
    others than its owner (it must be mode 0600) or not a secret. Never says what it holds."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise meshauth.MeshSecretError(
                f"the mesh secret {path} is open to others (mode {stat.S_IMODE(mode):o}):"
                f" chmod 600 {path}"
            )
        raw = path.read_bytes()
    except OSError as e:
        raise meshauth.MeshSecretError(
            f"cannot read the mesh secret {path}: {e.strerror or e}"
        ) from None
    return meshauth.parse_secret(raw)


@dataclass(frozen=True, slots=True)
class MeshPeerStats:
    name: str
    url: str
    connected: bool
    keys: int  # node keys it holds, as it told us
    forwarded: int  # datagrams handed to it for its clients
    drops: int  # datagrams for it dropped: its queue was full
    last_error: str | None  # why its connection last ended or failed


class _Peer:
    __slots__ = ("client", "forwarded", "keys", "target")

    def __init__(self, target: RelayTarget, client: RelayClient) -> None:
        self.target = target
        self.client = client
        self.keys: set[bytes] = set()
        self.forwarded = 0


class Mesh:
    """The relays of this relay's region, each watched over one RelayClient."""

    def __init__(
        self,
        secret: bytes,
        private_key: bytes,
        *,
        tls_context: ssl.SSLContext | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self._secret = secret
        self._private_key = private_key
        self.public_key = bytes(PrivateKey(private_key).public_key)
        self._tls = tls_context
        self._spawn = spawn
        self._peers: dict[str, _Peer] = {}  # by URL
        self._where: dict[bytes, _Peer] = {}  # node key -> the peer that holds it

    # -- incoming: a peer connecting to this relay --------------------------------------

    def answer(self, hello: p.ClientHello, client_key: bytes) -> bytes | None:
        """Our proof for SERVER_INFO if ``hello`` proves the mesh secret, else None."""
        expected = meshauth.client_proof(self._secret, hello.challenge, client_key, self.public_key)
        if not meshauth.proof_matches(expected, hello.mesh):
            return None
        return meshauth.server_proof(self._secret, hello.challenge, client_key, self.public_key)

    # -- outgoing: watching the peers ---------------------------------------------------

    async def set_peers(self, targets: Sequence[RelayTarget]) -> None:
        """Watch exactly these relays (ourselves excluded by the caller)."""
        wanted = {t.url: t for t in targets}
        for url in [u for u, peer in self._peers.items() if wanted.get(u) != peer.target]:
            peer = self._peers.pop(url)
            self._forget(peer)
            await peer.client.close()
            log.info("mesh: no longer watching %s", peer.target.name)
        for url, target in wanted.items():
            if url not in self._peers:
                self._peers[url] = self._watch(target)
                log.info("mesh: watching %s at %s", target.name, url)

    def _watch(self, target: RelayTarget) -> _Peer:
        client = RelayClient(
            target.url,
            self._private_key,
            _no_packets,
            server_key=target.server_key,
            tls_context=self._tls,
            mesh_secret=self._secret,
            queue_packets=MESH_QUEUE_PACKETS,
        )
        peer = _Peer(target, client)
        client.on_peer_present = lambda key: self._present(peer, key)
        client.on_peer_gone = lambda key, reason: self._gone(peer, key)
        client.on_state = lambda up: None if up else self._forget(peer)
        client.start(self._spawn, f"mesh {target.name}")
        return peer

    def _present(self, peer: _Peer, key: bytes) -> None:
        peer.keys.add(key)
        self._where[key] = peer

    def _gone(self, peer: _Peer, key: bytes) -> None:
        peer.keys.discard(key)
        if self._where.get(key) is peer:
            del self._where[key]
            other = next((o for o in self._peers.values() if key in o.keys), None)
            if other is not None:
                self._where[key] = other

    def _forget(self, peer: _Peer) -> None:
        for key in list(peer.keys):
            self._gone(peer, key)

    def holds(self, key: bytes) -> bool:
        return key in self._where

    def forward(self, src: bytes, dst: bytes, data: bytes, seg: int) -> bool:
        """Hand datagrams for ``dst`` to the peer that holds it; False if none does or
        its queue is full."""
        peer = self._where.get(dst)
        if peer is None:
            return False
        if not peer.client.send_forward(src, dst, data, seg):
            return False
        peer.forwarded += p.batch_segments(len(data), seg) if seg else 1
        return True

    def peers(self) -> list[MeshPeerStats]:
        return [
            MeshPeerStats(
                peer.target.name,
                url,
                peer.client.connected,
                len(peer.keys),
                peer.forwarded,
                peer.client.drops,
                peer.client.last_error,
            )
            for url, peer in sorted(self._peers.items())
        ]

    async def close(self) -> None:
        await self.set_peers([])


def _no_packets(src: bytes, data: bytes) -> None:
    """A mesh peer never sends us RECV_PACKET: we are no node of it."""
    log.warning("mesh: a peer sent a packet from %s to this relay; dropped", src.hex()[:16])
