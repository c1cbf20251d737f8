"""How the relays of one mesh prove to each other that they hold the mesh secret (pure).

Theory of operation: every relay of a mesh is given the same secret (a file, mode 0600).
A relay that connects to a mesh peer goes through the ordinary relay handshake with its
own relay key as the "node key" (CLIENT_INFO's box proves it holds that key) and puts
``client_proof`` in the boxed hello: an HMAC-SHA256 under the secret of the connection's
fresh challenge and both keys. The peer checks it (``proof_matches``: constant time) and
answers with ``server_proof`` in SERVER_INFO's box, which the connecting relay checks the
same way. The secret itself never crosses the wire, so a relay that is not what it claims
(an attacker in the middle presenting its own key) learns nothing it can replay: each
proof binds one challenge and one pair of keys. A node does not hold the secret, so it
can neither join as a mesh peer nor send the mesh's frames.

No I/O: the secret comes in as bytes (``parse_secret`` checks a file's contents).
"""

from __future__ import annotations

import hashlib
import hmac

from weftnet.relay.protocol import CHALLENGE_LEN, KEY_LEN, MESH_PROOF_LEN

MIN_SECRET_LEN = 32  # bytes of secret text at least (e.g. `openssl rand -hex 32`: 64)
MAX_SECRET_LEN = 4096  # a longer file is not a mesh secret
_CLIENT_LABEL = b"weft relay mesh v1: client"  # domain separation: a client's proof ...
_SERVER_LABEL = b"weft relay mesh v1: server"  # ... can never pass as a server's


class MeshSecretError(ValueError):
    """The mesh secret is unusable; the message says why (never what it holds)."""


def parse_secret(raw: bytes) -> bytes:
    """The secret held in a mesh secret file's contents (surrounding whitespace ignored)."""
    secret = raw.strip()
    if not MIN_SECRET_LEN <= len(secret) <= MAX_SECRET_LEN:
        raise MeshSecretError(
            f"a mesh secret is {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes of text"
            " (make one with `openssl rand -hex 32`)"
        )
    return secret


def _proof(label: bytes, secret: bytes, challenge: bytes, client: bytes, server: bytes) -> bytes:
    if len(challenge) != CHALLENGE_LEN or len(client) != KEY_LEN or len(server) != KEY_LEN:
        raise ValueError("a mesh proof binds a 24-byte challenge and two 32-byte keys")
    proof = hmac.new(secret, label + challenge + client + server, hashlib.sha256).digest()
    assert len(proof) == MESH_PROOF_LEN
    return proof


def client_proof(secret: bytes, challenge: bytes, client_key: bytes, server_key: bytes) -> bytes:
    """What the connecting relay puts in CLIENT_INFO's hello."""
    return _proof(_CLIENT_LABEL, secret, challenge, client_key, server_key)


def server_proof(secret: bytes, challenge: bytes, client_key: bytes, server_key: bytes) -> bytes:
    """What the relay connected to answers in SERVER_INFO's hello."""
    return _proof(_SERVER_LABEL, secret, challenge, client_key, server_key)


def proof_matches(expected: bytes, got: bytes | None) -> bool:
    """Constant time in the proof's contents."""
    return got is not None and hmac.compare_digest(expected, got)
