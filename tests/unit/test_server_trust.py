"""No trust on first use: the auth key's fingerprint, --server-key, https and pins
(weftnet.serverkey, weftnet.node.trust)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet import controlbox, serverkey, tailcfg
from weftnet.node.trust import (
    ServerTrust,
    TrustError,
    check_login_channel,
    check_offered,
    parse_server_key,
)

REAL = bytes(range(32))
OTHER = bytes(range(1, 33))
LEGACY = "weftkey-0123456789ab-" + "cd" * 24
PLAIN = "http://198.18.0.1:8080"


def test_fingerprint_is_the_first_16_bytes_of_sha256_in_hex() -> None:
    # sha256(00 01 .. 1f) = 630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd
    assert serverkey.fingerprint(REAL) == "630dcd2966c4336691125448bbb25b4f"
    with pytest.raises(ValueError):
        serverkey.fingerprint(b"short")


def test_a_key_with_a_fingerprint_splits_back_into_key_and_fingerprint() -> None:
    full = serverkey.attach(LEGACY, REAL)
    assert full == f"{LEGACY}-{serverkey.fingerprint(REAL)}"
    assert serverkey.split_auth_key(full) == (LEGACY, serverkey.fingerprint(REAL))
    assert serverkey.split_auth_key(f"  {full}\n") == (LEGACY, serverkey.fingerprint(REAL))
    assert serverkey.attach(full, OTHER) == f"{LEGACY}-{serverkey.fingerprint(OTHER)}"


@pytest.mark.parametrize(
    "text",
    [LEGACY, "weftkey-nonsense", "", "a-b", "weftkey-0123456789ab-" + "0" * 32, LEGACY + "-xyz"],
)
def test_keys_without_a_fingerprint_are_left_whole(text: str) -> None:
    assert serverkey.split_auth_key(text) == (text.strip(), None)


@given(st.text(max_size=200))
def test_split_never_raises_and_keeps_every_character(text: str) -> None:
    key, fp = serverkey.split_auth_key(text)
    assert (key if fp is None else f"{key}-{fp}") == text.strip()


def test_nothing_to_verify_with_over_plain_http_refuses_before_any_contact() -> None:
    with pytest.raises(TrustError, match=r"refusing to log in .* over plain http"):
        check_login_channel(PLAIN, ServerTrust(), pinned=None)
    warning = check_login_channel(PLAIN, ServerTrust(allow_insecure_http=True), None)
    assert warning is not None and "--allow-insecure-http" in warning


@pytest.mark.parametrize(
    ("url", "trust", "pinned"),
    [
        ("https://control.example", ServerTrust(), None),
        ("http://127.0.0.1:8080", ServerTrust(), None),
        ("http://localhost:8080", ServerTrust(), None),
        ("http://[::1]:8080", ServerTrust(), None),
        (PLAIN, ServerTrust(server_key=REAL), None),
        (PLAIN, ServerTrust(fingerprint=serverkey.fingerprint(REAL)), None),
        (PLAIN, ServerTrust(), REAL),
    ],
)
def test_any_means_of_verification_lets_a_login_begin(
    url: str, trust: ServerTrust, pinned: bytes | None
) -> None:
    assert check_login_channel(url, trust, pinned) is None


def test_the_offered_key_must_match_what_the_user_gave() -> None:
    check_offered(PLAIN, REAL, ServerTrust(server_key=REAL), None)
    check_offered(PLAIN, REAL, ServerTrust(fingerprint=serverkey.fingerprint(REAL)), None)
    with pytest.raises(TrustError, match=r"not .* given with --server-key"):
        check_offered(PLAIN, OTHER, ServerTrust(server_key=REAL), None)
    with pytest.raises(TrustError, match="auth key was made for"):
        check_offered(PLAIN, OTHER, ServerTrust(fingerprint=serverkey.fingerprint(REAL)), None)
    with pytest.raises(TrustError, match="pinned"):
        check_offered(PLAIN, OTHER, ServerTrust(), pinned=REAL)


def test_an_explicit_key_or_https_outranks_an_old_pin() -> None:
    # A re-keyed server: the admin hands out a new auth key (or the URL is https).
    check_offered(PLAIN, OTHER, ServerTrust(fingerprint=serverkey.fingerprint(OTHER)), REAL)
    check_offered(PLAIN, OTHER, ServerTrust(server_key=OTHER), REAL)
    check_offered("https://control.example", OTHER, ServerTrust(), REAL)


def test_server_key_text_is_checked() -> None:
    text = controlbox.key_to_text(tailcfg.MACHINE_KEY_PREFIX, REAL)
    assert parse_server_key(text) == REAL
    for bad in ("", "mkey:00", "nodekey:" + "00" * 32, REAL.hex()):
        with pytest.raises(ValueError, match="weft-control server-key"):
            parse_server_key(bad)
