"""The HTTP upgrade heads, relay URLs and the reconnect backoff schedule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.relay.client import backoff_delay
from weftnet.relay.upgrade import (
    SWITCHING_PROTOCOLS,
    RelayAddress,
    build_request,
    check_response,
    error_response,
    parse_head,
    parse_relay_url,
    refusal,
)
from weftnet.wireguard.errors import ProtocolError


def test_request_built_by_the_client_is_accepted_by_the_server() -> None:
    head = parse_head(build_request("relay.example:8080"))
    assert head.start == ("GET", "/relay", "HTTP/1.1")
    assert head.header("HOST") == "relay.example:8080"
    assert refusal(head) is None
    check_response(SWITCHING_PROTOCOLS)


@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"POST /relay HTTP/1.1\r\nUpgrade: weft-relay\r\nConnection: Upgrade\r\n\r\n", 405),
        (b"GET /other HTTP/1.1\r\nUpgrade: weft-relay\r\nConnection: Upgrade\r\n\r\n", 404),
        (b"GET /relay HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (b"GET /relay HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 426),
        (b"GET /relay HTTP/1.1\r\nUpgrade: weft-relay\r\nConnection: close\r\n\r\n", 426),
        (b"GET /relay HTTP/2.0\r\nUpgrade: weft-relay\r\nConnection: Upgrade\r\n\r\n", 505),
    ],
)
def test_server_refusals(request_head: bytes, status: int) -> None:
    refused = refusal(parse_head(request_head))
    assert refused is not None and refused[0] == status
    assert error_response(*refused).startswith(f"HTTP/1.1 {status} ".encode())


def test_header_tokens_are_case_insensitive_and_comma_separated() -> None:
    head = parse_head(
        b"GET /relay?x=1 HTTP/1.1\r\nupgrade: Weft-Relay\r\nconnection: keep-alive, UPGRADE\r\n\r\n"
    )
    assert refusal(head) is None


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        error_response(404, "Not Found").split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    ],
)
def test_client_refuses_anything_but_switching_to_the_relay(response: bytes) -> None:
    with pytest.raises(ProtocolError):
        check_response(response)


@given(st.binary(max_size=300))
def test_any_head_parses_or_raises_protocol_error(data: bytes) -> None:
    for candidate in (data, data + b"\r\n\r\n"):
        try:
            head = parse_head(candidate)
        except ProtocolError:
            continue
        refusal(head)  # never raises on a parsed head


def test_overlong_head_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer"):
        parse_head(b"GET /relay HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")


@pytest.mark.parametrize(
    "url, address",
    [
        ("http://relay.example:8080", RelayAddress("relay.example", 8080, "/relay")),
        ("http://relay.example", RelayAddress("relay.example", 80, "/relay")),
        ("http://10.0.0.1:3340/custom", RelayAddress("10.0.0.1", 3340, "/custom")),
        ("127.0.0.1:3340", RelayAddress("127.0.0.1", 3340, "/relay")),
        ("[::1]:3340", RelayAddress("::1", 3340, "/relay")),
    ],
)
def test_relay_urls(url: str, address: RelayAddress) -> None:
    assert parse_relay_url(url) == address


def test_host_header_brackets_ipv6_and_omits_port_80() -> None:
    assert RelayAddress("::1", 3340).host_header == "[::1]:3340"
    assert RelayAddress("relay.example", 80).host_header == "relay.example"
    assert RelayAddress("relay.example", 443, tls=True).host_header == "relay.example"
    assert RelayAddress("relay.example", 80, tls=True).host_header == "relay.example:80"


def test_https_relay_urls_mean_tls_and_port_443_by_default() -> None:
    assert parse_relay_url("https://relay.example") == RelayAddress(
        "relay.example", 443, "/relay", tls=True
    )
    assert parse_relay_url("https://[::1]:8443/r").tls
    assert not parse_relay_url("http://relay.example").tls
    assert not parse_relay_url("relay.example:8081").tls


@pytest.mark.parametrize(
    "url", ["ftp://relay.example", "relay.example", "http://:80", "http://h:99999", "h:1?q"]
)
def test_bad_relay_urls_say_what_to_give(url: str) -> None:
    with pytest.raises(ValueError, match="relay"):
        parse_relay_url(url)


def test_backoff_starts_at_half_a_second_and_caps_near_five() -> None:
    assert backoff_delay(0, 0.999) == pytest.approx(0.5, abs=0.001)
    assert backoff_delay(0, 0.0) == pytest.approx(0.25)
    assert [backoff_delay(n, 0.999) for n in range(1, 4)] == pytest.approx(
        [1.0, 2.0, 4.0], abs=0.01
    )
    assert all(2.5 <= backoff_delay(n, r) <= 5.0 for n in range(4, 100) for r in (0.0, 0.5, 0.99))
