"""The lab's flooder (weftlab.handshake_flood) speaks WireGuard: its initiations pass
mac1, it opens the cookie replies it gets, and its mac2 then passes too."""

from __future__ import annotations

import pytest

from weftlab.fakes import SeededEntropy
from weftlab.handshake_flood import make_pool, open_cookie_reply, with_mac2
from weftnet.wireguard import crypto
from weftnet.wireguard.cookie import cookie_key
from weftnet.wireguard.device import Device
from weftnet.wireguard.errors import ProtocolError

SRC = ("198.18.0.200", 40000)


def test_pool_messages_get_cookies_that_open_and_then_pass_mac2() -> None:
    e = SeededEntropy("target")
    target = Device(crypto.generate_private_key(e), e, under_load=lambda now: True)
    pool = make_pool(target.identity.public_key, 3)
    assert len(set(pool.valid)) == 3 and len(pool.mac1_by_sender) == 3
    with pytest.raises(ProtocolError, match="bad mac1"):
        target.receive_handshake(pool.bad_mac1[0], SRC, 10.0)
    reply = target.receive_handshake(pool.valid[1], SRC, 10.0)
    key = cookie_key(target.identity.public_key)
    cookie = open_cookie_reply(reply[0].data, pool, key)
    assert cookie is not None
    assert open_cookie_reply(reply[0].data, pool, cookie_key(bytes(32))) is None
    # With mac2 the target does the Curve25519 work, then finds the key unknown.
    with pytest.raises(ProtocolError, match="unknown peer"):
        target.receive_handshake(with_mac2(pool.valid[2], cookie), SRC, 10.0)
