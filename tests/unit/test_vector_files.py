"""The known-answer vector files load and have the shape their users expect.

These check the files only; the code under test is checked against them elsewhere.
"""

from __future__ import annotations

from tests.vectors import load


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def test_noise_ikpsk2_vector_shape() -> None:
    data = load("noise_ikpsk2")
    assert "cacophony" in data["source"]
    (vector,) = data["vectors"]
    assert vector["protocol_name"] == "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    for field in ("init_static", "init_ephemeral", "init_remote_static", "resp_static"):
        assert len(bytes.fromhex(vector[field])) == 32, field
    assert len(bytes.fromhex(vector["resp_ephemeral"])) == 32
    assert [len(bytes.fromhex(p)) for p in vector["init_psks"]] == [32]
    assert vector["init_psks"] == vector["resp_psks"]
    messages = vector["messages"]
    assert len(messages) == 6
    assert all(_is_hex(m["payload"]) and _is_hex(m["ciphertext"]) for m in messages)
    # message 1: e (32) + encrypted s (32 + 16) + encrypted payload (+16)
    first = messages[0]
    assert len(first["ciphertext"]) // 2 == 32 + 48 + len(first["payload"]) // 2 + 16


def test_wg_kdf_vector_shape() -> None:
    data = load("wg_kdf.json")
    assert "wireguard-go" in data["source"]
    vectors = data["vectors"]
    assert len(vectors) == 3
    for v in vectors:
        assert set(v) == {"key", "input", "t0", "t1", "t2"}
        assert all(len(bytes.fromhex(v[t])) == 32 for t in ("t0", "t1", "t2"))
