"""wg-quick configuration files: what parses, and what every mistake says."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.node.wgconfig import (
    ConfigError,
    InterfaceConfig,
    PeerConfig,
    WgConfig,
    load_wg_config,
    parse_wg_config,
)


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


PRIV, PUB1, PUB2, PSK = key(1), key(2), key(3), key(4)


def test_full_config() -> None:
    text = f"""
# weftd test config
[Interface]
PrivateKey = {PRIV}
Address = 10.0.0.1/24, fd00::1/64   # two at once
address = 10.0.1.1
ListenPort = 51820
MTU = 1420
DNS = 1.1.1.1
Table = off
SaveConfig = true

[peer]
PublicKey = {PUB1}
PresharedKey = {PSK}
Endpoint = 192.0.2.1:51820
AllowedIPs = 10.0.0.2/32, 10.1.0.0/16
AllowedIPs = fd00::2/128
PersistentKeepalive = 25

[Peer]
PUBLICKEY={PUB2}
endpoint = [2001:db8::1]:4500
allowedips = 0.0.0.0/0, ::/0
persistentkeepalive = off
"""
    assert parse_wg_config(text) == WgConfig(
        interface=InterfaceConfig(
            private_key=bytes([1]) * 32,
            addresses=(
                ipaddress.ip_interface("10.0.0.1/24"),
                ipaddress.ip_interface("fd00::1/64"),
                ipaddress.ip_interface("10.0.1.1/32"),
            ),
            listen_port=51820,
            mtu=1420,
        ),
        peers=(
            PeerConfig(
                public_key=bytes([2]) * 32,
                preshared_key=bytes([4]) * 32,
                endpoint=("192.0.2.1", 51820),
                allowed_ips=(
                    ipaddress.ip_network("10.0.0.2/32"),
                    ipaddress.ip_network("10.1.0.0/16"),
                    ipaddress.ip_network("fd00::2/128"),
                ),
                persistent_keepalive_s=25,
            ),
            PeerConfig(
                public_key=bytes([3]) * 32,
                endpoint=("2001:db8::1", 4500),
                allowed_ips=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
            ),
        ),
    )


def test_minimal_config_has_defaults() -> None:
    config = parse_wg_config(f"[Interface]\nPrivateKey = {PRIV}\n")
    assert config == WgConfig(InterfaceConfig(private_key=bytes([1]) * 32))
    assert config.interface.listen_port is None
    assert config.interface.mtu is None
    assert config.peers == ()


def test_crlf_bom_and_no_final_newline() -> None:
    text = f"\ufeff[Interface]\r\nPrivateKey = {PRIV}\r\n[Peer]\r\nPublicKey = {PUB1}"
    config = parse_wg_config(text)
    assert config.peers[0].public_key == bytes([2]) * 32


def test_allowed_ips_host_bits_are_masked_and_empty_list_allowed() -> None:
    text = f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nAllowedIPs = 10.1.2.3/8\nAllowedIPs =\n"
    assert parse_wg_config(text).peers[0].allowed_ips == (ipaddress.ip_network("10.0.0.0/8"),)


def test_ipv6_endpoint_with_scope() -> None:
    text = f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nEndpoint = [fe80::1%eth0]:51820\n"
    assert parse_wg_config(text).peers[0].endpoint == ("fe80::1%eth0", 51820)


def test_keepalive_zero_is_off() -> None:
    text = (
        f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nPersistentKeepalive = 0\n"
    )
    assert parse_wg_config(text).peers[0].persistent_keepalive_s == 0


def test_repr_hides_secrets() -> None:
    text = f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB1}\nPresharedKey = {PSK}\n"
    shown = repr(parse_wg_config(text))
    assert "private_key" not in shown
    assert "preshared_key" not in shown
    assert repr(bytes([1]) * 32) not in shown


def test_the_documented_example_message() -> None:
    text = f"[Interface]\nPrivateKey = {PRIV}\nListenPort = abc\n"
    with pytest.raises(ConfigError) as info:
        parse_wg_config(text)
    assert str(info.value) == (
        'line 3: "ListenPort = abc": ListenPort must be a number from 0 to 65535'
    )
    assert info.value.lineno == 3


HEAD = f"[Interface]\nPrivateKey = {PRIV}\n"  # lines 1-2
PEER = f"[Peer]\nPublicKey = {PUB1}\n"  # appended after HEAD: lines 3-4

BAD = [
    # (text, line number named, words the message must contain)
    (HEAD + "ListenPort = 65536\n", 3, "ListenPort must be a number from 0 to 65535"),
    (HEAD + "ListenPort = -1\n", 3, "ListenPort must be a number"),
    (HEAD + "ListenPort = 1\nListenPort = 2\n", 4, "already set in this [Interface] on line 3"),
    (HEAD + "MTU = 10\n", 3, "MTU must be a number from 68 to 65535"),
    (HEAD + "MTU = 1420.5\n", 3, "MTU must be a number"),
    ("[Interface]\nPrivateKey = abc\n", 2, "PrivateKey must be a 32-byte key in base64"),
    (f"[Interface]\nPrivateKey = {PRIV[:42]}B=\n", 2, "PrivateKey must be"),  # non-canonical
    (f"[Interface]\nPrivateKey = {PRIV[:-1]}\n", 2, "44 characters"),
    (HEAD + f"PrivateKey = {PRIV}\n", 3, "PrivateKey is already set"),
    (HEAD + "Address = 10.0.0.300/24\n", 3, "Address entry '10.0.0.300/24'"),
    (HEAD + "Address = 10.0.0.1/33\n", 3, "is not an IP address"),
    (HEAD + "PostUp = iptables -A FORWARD -j ACCEPT\n", 3, "does not run shell hooks (PostUp)"),
    (HEAD + "preup = true\n", 3, "does not run shell hooks"),
    (HEAD + "PreDown = x\n", 3, "shell hooks"),
    (HEAD + "PostDown = x\n", 3, "shell hooks"),
    (HEAD + "FwMark = 0x1\n", 3, "unknown key FwMark in [Interface]"),
    (HEAD + "PublicKey = " + PUB1 + "\n", 3, "unknown key PublicKey in [Interface]"),
    ("PrivateKey = " + PRIV + "\n[Interface]\n", 1, "comes before any section"),
    (HEAD + "ListenPort 51820\n", 3, '"Key = Value"'),
    (HEAD + "= 5\n", 3, '"Key = Value"'),
    (HEAD + "[Interfaces]\n", 3, "unknown section; expected [Interface] or [Peer]"),
    (HEAD + "[Peer\n", 3, "must end with ]"),
    (HEAD + "[Interface]\n", 3, "a second [Interface] section; the first is on line 1"),
    (HEAD + PEER + "Endpoint = vpn.example.com:51820\n", 5, "does not look up host names"),
    (HEAD + PEER + "Endpoint = 2001:db8::1:51820\n", 5, "IPv6 Endpoint needs brackets"),
    (HEAD + PEER + "Endpoint = 192.0.2.1\n", 5, "needs an address and a port"),
    (HEAD + PEER + "Endpoint = :51820\n", 5, "needs an address and a port"),
    (HEAD + PEER + "Endpoint = 192.0.2.1:0\n", 5, "port must be a number from 1 to 65535"),
    (HEAD + PEER + "Endpoint = 192.0.2.1:65536\n", 5, "port must be a number"),
    (HEAD + PEER + "Endpoint = 192.0.2.1:https\n", 5, "port must be a number"),
    (HEAD + PEER + "Endpoint = [10.0.0.1]:51820\n", 5, "is not an IPv6 address"),
    (HEAD + PEER + "Endpoint = [2001:db8::1]51820\n", 5, "Endpoint must look like"),
    (HEAD + PEER + "Endpoint = [2001:db8::1\n", 5, "Endpoint must look like"),
    (HEAD + PEER + "Endpoint = 192.0.2.1:1\nEndpoint = 192.0.2.2:1\n", 6, "already set"),
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/8, bogus\n", 5, "AllowedIPs entry 'bogus'"),
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/8,\n", 5, "empty entry"),
    (HEAD + PEER + "AllowedIPs = 10.0.0.0/8 10.1.0.0/16\n", 5, "is not a network"),
    (HEAD + PEER + "PersistentKeepalive = 65536\n", 5, 'from 0 to 65535 or "off"'),
    (HEAD + PEER + "PersistentKeepalive = soon\n", 5, "PersistentKeepalive must be"),
    (HEAD + PEER + "PresharedKey = nope\n", 5, "PresharedKey must be a 32-byte key"),
    (HEAD + PEER + "DNS = 1.1.1.1\n", 5, "unknown key DNS in [Peer]"),
    (HEAD + PEER + f"PublicKey = {PUB2}\n", 5, "PublicKey is already set in this [Peer]"),
    (HEAD + PEER + PEER, 6, "this PublicKey is already used by the [Peer] on line 3"),
    (HEAD + "[Peer]\nEndpoint = 192.0.2.1:1\n", 3, "[Peer] has no PublicKey"),
    ("[Interface]\nListenPort = 1\n", 1, "[Interface] has no PrivateKey"),
    (
        PEER.replace("[Peer]", "[Interface]\nPrivateKey = " + PRIV + "\n[Peer]") + "[Peer]\n",
        5,
        "no PublicKey",
    ),
]


@pytest.mark.parametrize(("text", "lineno", "words"), BAD)
def test_bad_line_is_named(text: str, lineno: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_wg_config(text)
    message = str(info.value)
    assert message.startswith(f"line {lineno}: "), message
    assert info.value.lineno == lineno
    shown_line = text.split("\n")[lineno - 1].strip()
    if not shown_line.lower().startswith(("privatekey", "presharedkey")):
        assert f'"{shown_line}"' in message, message
    assert words in message, message
    assert "\n" not in message


def test_no_interface_section() -> None:
    with pytest.raises(ConfigError, match="there is no \\[Interface\\] section"):
        parse_wg_config(PEER)
    with pytest.raises(ConfigError, match="no \\[Interface\\]"):
        parse_wg_config("# nothing here\n\n")


@pytest.mark.parametrize("name", ["PrivateKey", "PresharedKey"])
def test_secret_values_are_not_echoed(name: str) -> None:
    secret = PRIV[:30] + "!!"
    text = (
        f"[Interface]\n{name} = {secret}\n"
        if name == "PrivateKey"
        else (HEAD + PEER + f"{name} = {secret}\n")
    )
    with pytest.raises(ConfigError) as info:
        parse_wg_config(text)
    assert secret not in str(info.value)
    assert f'"{name} = (hidden)"' in str(info.value)


def test_long_and_unprintable_lines_are_shown_on_one_short_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_wg_config(HEAD + "Bogus\x07\x1b = " + "x" * 500 + "\n")
    message = str(info.value)
    assert message.isprintable()
    assert len(message) < 400
    assert "\\x07" in message


def test_load_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wg0.conf"
    path.write_text(HEAD + PEER)
    assert load_wg_config(path).peers[0].public_key == bytes([2]) * 32
    path.write_text(HEAD + "MTU = x\n")
    with pytest.raises(ConfigError) as info:
        load_wg_config(str(path))
    assert str(info.value).startswith(f'{path}: line 3: "MTU = x": MTU must be')
    assert info.value.path == str(path)


def test_load_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_wg_config(tmp_path / "missing.conf")
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"[Interface]\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_wg_config(binary)


# Fuzzing: anything at all either parses or raises ConfigError.


@given(st.text())
def test_arbitrary_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_wg_config(text)
    except ConfigError as e:
        assert "\n" not in str(e)


_keys = st.sampled_from(
    [
        "PrivateKey", "Address", "ListenPort", "MTU", "DNS", "Table", "SaveConfig", "PostUp",
        "PublicKey", "PresharedKey", "Endpoint", "AllowedIPs", "PersistentKeepalive", "Bogus",
        "privatekey", "ENDPOINT",
    ]
)  # fmt: skip
_values = st.one_of(
    st.sampled_from(
        [
            PRIV, PUB1, PUB2, PSK, "", "0", "51820", "65536", "off", "1420", "10.0.0.1/24",
            "fd00::1/64", "10.0.0.0/8, ::/0", "192.0.2.1:51820", "[2001:db8::1]:51820",
            "[::1]", "host:1", "a,,b", "=", "#", "[Peer]", "1e3", "\x00", "٣",
        ]
    ),
    st.text(max_size=30),
)  # fmt: skip
_lines = st.one_of(
    st.sampled_from(["[Interface]", "[Peer]", "[peer]", "[Nope]", "", "# comment", "["]),
    st.builds(lambda k, v: f"{k} = {v}", _keys, _values),
)


@given(st.lists(_lines, max_size=25))
def test_config_shaped_text_parses_or_raises_config_error(lines: list[str]) -> None:
    text = "\n".join(lines)
    try:
        config = parse_wg_config(text)
    except ConfigError as e:
        assert "\n" not in str(e)
        assert e.lineno is None or 1 <= e.lineno <= len(lines)
    else:
        assert len(config.interface.private_key) == 32
        assert all(len(peer.public_key) == 32 for peer in config.peers)
