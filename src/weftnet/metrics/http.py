"""Serving a registry over plain HTTP on a listener of its own (``--metrics-listen``).

Theory of operation: the listener runs on the process's event loop, so a scrape reads
the counters between two callbacks of the code that changes them and never sees a
half-done update (prometheus_client's own server would collect on a thread of its
own). It answers ``GET /metrics`` (and ``/``) with the text format, one request per
connection; anything else is 404 or 405. A request head must arrive within
``HEAD_TIMEOUT_S`` and fit in ``MAX_HEAD_BYTES``.

Metrics are off by default and never share the API's port: they tell anyone who can
read them how many nodes and streams there are, so the operator chooses where they are
readable (loopback, or a management network Prometheus scrapes from), as with
Tailscale's and headscale's metrics listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from weftnet.tcplisten import listen_tcp, split_hostport

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0  # the request head must be complete this soon after the connection
MAX_HEAD_BYTES = 8 * 1024  # a longer request head is refused
METRICS_PATHS = ("/metrics", "/")


class ListenError(ValueError):
    """A --metrics-listen value that cannot be used; the message says why."""


def parse_listen(text: str, flag: str = "--metrics-listen") -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT; the host is required (there is no "all addresses"
    default for metrics: say 0.0.0.0 to mean it)."""
    try:
        host, port = split_hostport(text)
    except ValueError:
        host, port = "", 0
    if not host or not port:
        raise ListenError(f"invalid {flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    return host, port


def bind(host: str, port: int, flag: str = "--metrics-listen") -> socket.socket:
    """The listening TCP socket (bound now, so a taken port is a clear error at start)."""
    try:
        sock = listen_tcp(host, port, backlog=64)
    except OSError as e:
        raise ListenError(f"cannot listen on {flag} {host}:{port}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def answer(registry: CollectorRegistry, head: bytes) -> bytes:
    """The whole HTTP response to one request head (pure but for the collection)."""
    try:
        method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return _response("400 Bad Request", b"bad request\n")
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET /metrics\n")
    if target.split("?", 1)[0] not in METRICS_PATHS:
        return _response("404 Not Found", b"GET /metrics\n")
    body = generate_latest(registry)  # the classic text format, which every Prometheus reads
    response = _response("200 OK", body, CONTENT_TYPE_PLAIN_0_0_4)
    return response[: len(response) - len(body)] if method == "HEAD" else response


async def serve(registry: CollectorRegistry, sock: socket.socket) -> asyncio.Server:
    """Answer scrapes of ``registry`` on the bound ``sock`` until the server is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(registry, head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(_response("400 Bad Request", b"bad request\n"))
        except (ConnectionError, OSError):
            pass
        except Exception:  # a collector failed: say so, keep serving
            log.exception("metrics: a scrape failed")
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(_response("500 Internal Server Error", b"collection failed\n"))
        finally:
            writer.close()

    return await asyncio.start_server(handle, sock=sock, limit=MAX_HEAD_BYTES)
