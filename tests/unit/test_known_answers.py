"""Known-answer tests: WireGuard's KDF vectors and cacophony's IKpsk2 vector."""

from __future__ import annotations

import pytest
from tests.vectors import load

from weftnet.wireguard import crypto, noise

KDF = load("wg_kdf")["vectors"]
IK = load("noise_ikpsk2")["vectors"][0]


@pytest.mark.parametrize("v", KDF, ids=range(len(KDF)))
def test_wireguard_kdf_vectors(v: dict[str, str]) -> None:
    key, data = bytes.fromhex(v["key"]), bytes.fromhex(v["input"])
    t0, t1, t2 = (bytes.fromhex(v[k]) for k in ("t0", "t1", "t2"))
    assert crypto.kdf1(key, data) == t0
    assert crypto.kdf2(key, data) == (t0, t1)
    assert crypto.kdf3(key, data) == (t0, t1, t2)


def test_cacophony_ikpsk2_handshake_and_transport() -> None:
    h = bytes.fromhex
    assert IK["protocol_name"].encode() == noise.PROTOCOL_NAME
    psk = h(IK["init_psks"][0])
    i_static, i_eph = h(IK["init_static"]), h(IK["init_ephemeral"])
    r_static, r_eph = h(IK["resp_static"]), h(IK["resp_ephemeral"])
    r_pub = crypto.public_key(r_static)
    assert r_pub == h(IK["init_remote_static"])
    msgs = [(h(m["payload"]), h(m["ciphertext"])) for m in IK["messages"]]

    init = noise.initialize(r_pub, h(IK["init_prologue"]))
    resp = noise.initialize(r_pub, h(IK["resp_prologue"]))

    m1 = noise.write_message_1(
        init, i_static, crypto.public_key(i_static), i_eph, r_pub, msgs[0][0]
    )
    assert m1.pack() == msgs[0][1]
    rs, payload, _ = noise.read_message_1(resp, r_static, noise.Message1.unpack(msgs[0][1]))
    assert rs == crypto.public_key(i_static) and payload == msgs[0][0]

    m2 = noise.write_message_2(resp, r_eph, m1.ephemeral, rs, psk, msgs[1][0])
    assert m2.pack() == msgs[1][1]
    got = noise.read_message_2(init, i_eph, i_static, psk, noise.Message2.unpack(msgs[1][1]))
    assert got == msgs[1][0]
    assert init.h == resp.h

    i_send, i_recv = init.split()
    r_recv, r_send = resp.split()
    assert (i_send, i_recv) == (r_recv, r_send)
    counters = {True: 0, False: 0}
    for n, (payload, ct) in enumerate(msgs[2:]):
        from_initiator = n % 2 == 0
        key = i_send if from_initiator else r_send
        c = counters[from_initiator]
        assert crypto.aead_encrypt(key, c, payload, b"") == ct
        assert crypto.aead_decrypt(key, c, ct, b"") == payload
        counters[from_initiator] += 1


def test_low_order_point_is_refused() -> None:
    from weftnet.wireguard.errors import ProtocolError

    with pytest.raises(ProtocolError):
        crypto.dh(crypto.clamp(bytes(range(32))), bytes(32))
