"""weftnet.tcplisten: the one HOST:PORT parser and TCP listener behind every server's flag."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.tcplisten import listen_tcp, split_hostport


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:1055", ("localhost", 1055)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:0", ("::", 0)),
        (":8080", ("", 8080)),
        (" 0.0.0.0:65535 ", ("0.0.0.0", 65535)),
    ],
)
def test_split_hostport(text: str, want: tuple[str, int]) -> None:
    assert split_hostport(text) == want


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8080", "no port"),
        ("", "no port"),
        ("::1:8080", r"\[IPV6\]:PORT"),
        ("[::1]8080", r"\[IPV6\]:PORT"),
        ("[::1", r"\[IPV6\]:PORT"),
        ("host:", "0 to 65535"),
        ("host:65536", "0 to 65535"),
        ("host:-1", "0 to 65535"),
        ("host:http", "0 to 65535"),
    ],
)
def test_split_hostport_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_hostport(text)


@given(st.text(max_size=40))
def test_split_hostport_takes_any_text(text: str) -> None:
    """Any text: a (host, port) with a valid port, or ValueError; nothing else."""
    try:
        host, port = split_hostport(text)
    except ValueError:
        return
    assert 0 <= port <= 65535 and isinstance(host, str)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_split_hostport_round_trips_addresses(ip: object, port: int) -> None:
    host = str(ip)
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert split_hostport(text) == (host, port)


def test_listen_tcp_listens_and_a_taken_port_is_an_oserror() -> None:
    sock = listen_tcp("127.0.0.1", 0, backlog=4, user_timeout_s=10)
    try:
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        other = socket.socket()
        try:
            other.bind(("127.0.0.1", 0))
            other.listen()
            with pytest.raises(OSError):
                listen_tcp("127.0.0.1", other.getsockname()[1])
        finally:
            other.close()
    finally:
        sock.close()
