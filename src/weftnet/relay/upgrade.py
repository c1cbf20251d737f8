"""The HTTP/1.1 upgrade that opens a relay connection (RFC 9110 section 7.8).

Theory of operation: a relay is entered like a WebSocket, so it passes wherever plain
HTTP does. The client sends

    GET /relay HTTP/1.1 / Host: ... / Upgrade: weft-relay / Connection: Upgrade

and the server answers ``101 Switching Protocols`` with the same Upgrade token; from the
byte after the answer's blank line the stream carries relay frames (protocol.py), server
first. Anything else gets an ordinary HTTP error answer and the connection is closed:
405 for a method other than GET, 404 for another path, 426 without the upgrade token.

Only the request and response heads are handled here, as bytes in and bytes out; no
I/O. A head is at most MAX_HEAD_LEN bytes and ends with an empty line.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from weftnet.wireguard.errors import ProtocolError

UPGRADE_TOKEN = "weft-relay"  # the Upgrade header value both sides send
RELAY_PATH = "/relay"  # where the coordination server (and serve_tcp) enters the relay
MAX_HEAD_LEN = 8192  # a request or response head longer than this is refused
HEAD_END = b"\r\n\r\n"  # the empty line that ends an HTTP head

SWITCHING_PROTOCOLS = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: weft-relay\r\nConnection: Upgrade\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed HTTP head: the start line's three parts and lower-cased header names."""

    start: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def tokens(self, name: str) -> set[str]:
        """The comma-separated, lower-cased tokens of every ``name`` header."""
        name = name.lower()
        out: set[str] = set()
        for key, value in self.headers:
            if key == name:
                out.update(t.strip().lower() for t in value.split(",") if t.strip())
        return out


def parse_head(data: bytes) -> Head:
    """One HTTP head, ending with its empty line (HEAD_END), or ProtocolError."""
    if len(data) > MAX_HEAD_LEN:
        raise ProtocolError(f"HTTP head longer than {MAX_HEAD_LEN} bytes")
    if not data.endswith(HEAD_END):
        raise ProtocolError("HTTP head does not end with an empty line")
    lines = data[: -len(HEAD_END)].decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) != 3 or not all(start):
        raise ProtocolError(f"malformed HTTP start line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise ProtocolError(f"malformed HTTP header line {line[:80]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    return Head((start[0], start[1], start[2]), tuple(headers))


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where a relay listens: TCP host and port, the path of the upgrade, and whether
    the connection is TLS first (https://)."""

    host: str
    port: int
    path: str = RELAY_PATH
    tls: bool = False

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


def parse_relay_url(url: str) -> RelayAddress:
    """``http(s)://host[:port][/path]``, ``host:port`` or ``[v6addr]:port``; ValueError if
    not."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    if parts.scheme not in ("", "http", "https"):
        raise ValueError(f"relay URL {url!r}: expected http:// or https://")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"relay URL {url!r}: bad port") from e
    if not parts.hostname:
        raise ValueError(f"relay URL {url!r}: expected http://HOST:PORT or HOST:PORT")
    if port is None:
        if not parts.scheme:
            raise ValueError(f"relay address {url!r}: give a port, as HOST:PORT")
        port = 443 if parts.scheme == "https" else 80
    if parts.query or parts.fragment:
        raise ValueError(f"relay URL {url!r}: no query or fragment allowed")
    path = parts.path if parts.path not in ("", "/") else RELAY_PATH
    return RelayAddress(parts.hostname, port, path, tls=parts.scheme == "https")


def build_request(host: str, path: str = RELAY_PATH) -> bytes:
    """The client's upgrade request for ``host`` (with ``:port`` when not the default)."""
    for part in (host, path):
        if any(c in part for c in "\r\n ") or not part:
            raise ProtocolError(f"{part!r} cannot go into an HTTP request line or header")
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"Upgrade: {UPGRADE_TOKEN}\r\n"
        "Connection: Upgrade\r\n"
        "\r\n"
    ).encode("latin-1")


def refusal(request: Head, path: str = RELAY_PATH) -> tuple[int, str] | None:
    """Why the server must refuse this request head, as (status, reason), or None."""
    method, target, version = request.start
    if not (len(version) == 8 and version.startswith("HTTP/") and version[6] == "."):
        return 400, "Bad Request"
    if not version.startswith("HTTP/1."):
        return 505, "HTTP Version Not Supported"
    if method != "GET":
        return 405, "Method Not Allowed"
    if target.split("?", 1)[0] != path:
        return 404, "Not Found"
    if UPGRADE_TOKEN not in request.tokens("upgrade") or "upgrade" not in request.tokens(
        "connection"
    ):
        return 426, "Upgrade Required"
    return None


def error_response(status: int, reason: str) -> bytes:
    """A complete, closing HTTP answer for a refused request."""
    body = f"{status} {reason}: this is a weft relay; connect with Upgrade: {UPGRADE_TOKEN}\n"
    upgrade = f"Upgrade: {UPGRADE_TOKEN}\r\n" if status == 426 else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"{upgrade}"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def check_response(data: bytes) -> None:
    """Accept the server's answer head only if it switched to the relay protocol."""
    head = parse_head(data)
    version, status, reason = head.start
    if not version.startswith("HTTP/1.") or status != "101":
        raise ProtocolError(f"relay refused the upgrade: {status} {reason}")
    if UPGRADE_TOKEN not in head.tokens("upgrade"):
        raise ProtocolError(f"relay switched to {head.header('upgrade')!r}, not {UPGRADE_TOKEN}")
