"""The metrics listener's answers and its --metrics-listen parsing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from weftnet.metrics import http


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("weft_test_things", "Things.", registry=r).inc(3)
    return r


def test_get_metrics_answers_the_text_format(registry: CollectorRegistry) -> None:
    out = http.answer(registry, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"weft_test_things_total 3.0" in body


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
        (b"nonsense\r\n\r\n", b"400"),
        (b"GET /\xff HTTP/1.1\r\n\r\n", b"400"),
    ],
)
def test_anything_else_is_refused(registry: CollectorRegistry, head: bytes, status: bytes) -> None:
    assert http.answer(registry, head).startswith(b"HTTP/1.1 " + status)


def test_head_has_no_body(registry: CollectorRegistry) -> None:
    assert http.answer(registry, b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("[::1]:9100", ("::1", 9100)),
     ("0.0.0.0:1", ("0.0.0.0", 1))],
)  # fmt: skip
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert http.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9100", ":9100", "127.0.0.1:", "127.0.0.1:0", "h:70000", "h:x"])
def test_bad_listen_addresses_say_what_is_expected(text: str) -> None:
    with pytest.raises(http.ListenError, match="expected HOST:PORT"):
        http.parse_listen(text)
