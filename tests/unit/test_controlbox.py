"""Sealing of control messages, replay protection and the frame parser."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.public import PrivateKey

from weftnet import controlbox
from weftnet.controlbox import FrameReader, ReplayGuard, SealError

SERVER = PrivateKey.generate()
MACHINE = PrivateKey.generate()
OTHER = PrivateKey.generate()


def test_seal_opens_only_with_the_right_pair() -> None:
    sealed = controlbox.seal(bytes(MACHINE), bytes(SERVER.public_key), b"hello", os.urandom(24))
    assert controlbox.open_sealed(bytes(SERVER), bytes(MACHINE.public_key), sealed) == b"hello"
    with pytest.raises(SealError):  # another machine cannot claim to be this one
        controlbox.open_sealed(bytes(SERVER), bytes(OTHER.public_key), sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(SealError):
        controlbox.open_sealed(bytes(SERVER), bytes(MACHINE.public_key), bytes(tampered))


def test_replay_guard_refuses_stale_and_repeated() -> None:
    g = ReplayGuard()
    sealed = os.urandom(24) + b"x" * 20
    g.check(sealed, ts=1000.0, now=1000.5)
    with pytest.raises(SealError, match="replayed"):
        g.check(sealed, ts=1000.0, now=1001.0)
    with pytest.raises(SealError, match="off the server clock"):
        g.check(os.urandom(24) + b"x", ts=1000.0, now=1000.0 + controlbox.MAX_CLOCK_SKEW_S + 1)


def test_key_text_round_trip_and_errors() -> None:
    raw = os.urandom(32)
    assert controlbox.key_from_text("nodekey:", controlbox.key_to_text("nodekey:", raw)) == raw
    for bad in ("nodekey:zz", "mkey:" + "00" * 32, "nodekey:" + "00" * 31, ""):
        with pytest.raises(ValueError):
            controlbox.key_from_text("nodekey:", bad)


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50))
def test_frames_survive_any_chunking(bodies: list[bytes], chunk: int) -> None:
    stream = b"".join(controlbox.frame(b) for b in bodies)
    r = FrameReader()
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got += r.feed(stream[i : i + chunk])
    assert got == bodies


@given(st.binary(max_size=64))
def test_frame_reader_takes_any_bytes(data: bytes) -> None:
    r = FrameReader()
    try:
        r.feed(data)
    except SealError:
        assert int.from_bytes(data[:4], "big") > controlbox.MAX_FRAME
