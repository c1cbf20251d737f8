"""Reading wg-quick style configuration files (wg-quick(8), wg(8) "CONFIGURATION FILE FORMAT").

A file is an ``[Interface]`` section and any number of ``[Peer]`` sections of
``Key = Value`` lines. As in wg and wg-quick, section names and keys are case-insensitive,
``#`` starts a comment anywhere on a line, and blank lines are skipped.

[Interface]
    PrivateKey (required), Address (comma-separated, may repeat), ListenPort, MTU.
    DNS, Table and SaveConfig are accepted and ignored: weftd manages neither resolvers
    nor routing tables from this file. PreUp/PostUp/PreDown/PostDown are refused, because
    weftd does not run shell commands from a configuration file.
[Peer]
    PublicKey (required), PresharedKey, Endpoint (IP literal only: 192.0.2.1:51820 or
    [2001:db8::1]:51820), AllowedIPs (comma-separated, may repeat), PersistentKeepalive
    (seconds, 0 to 65535, or "off").

Keys are 32 bytes in base64 (44 characters, canonical, as ``wg genkey`` prints them).
Every mistake raises ConfigError naming the line, for example::

    line 7: "ListenPort = abc": ListenPort must be a number from 0 to 65535

Values of PrivateKey and PresharedKey lines are never echoed into error messages.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "ConfigError",
    "InterfaceConfig",
    "PeerConfig",
    "WgConfig",
    "load_wg_config",
    "parse_wg_config",
]

Interface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

KEY_LEN = 32  # bytes in a Curve25519 key or a preshared key
MIN_MTU = 68  # the smallest MTU IPv4 allows (RFC 791); Linux refuses less
MAX_MTU = 65535  # largest value of the 16-bit IP total-length field
MAX_PORT = 65535  # largest UDP port
MAX_KEEPALIVE_S = 65535  # wg(8) stores PersistentKeepalive in 16 bits
_SHOWN_LINE_CHARS = 80  # longer lines are cut short in error messages

# 43 base64 characters then "=", the last one carrying only 4 bits (so its low 2 bits
# are zero): exactly the strings wg's key_from_base64 accepts.
_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_SECRET_KEYS = frozenset({"privatekey", "presharedkey"})
_HOOKS = frozenset({"preup", "postup", "predown", "postdown"})
_IGNORED_INTERFACE_KEYS = frozenset({"dns", "table", "saveconfig"})


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the line and says why."""

    def __init__(
        self,
        reason: str,
        *,
        lineno: int | None = None,
        line: str | None = None,
        path: str | None = None,
    ) -> None:
        self.reason = reason
        self.lineno = lineno
        self.line = line
        self.path = path
        parts = [path] if path else []
        if lineno is not None:
            parts.append(f"line {lineno}")
        if line is not None:
            parts.append(f'"{line}"')
        parts.append(reason)
        super().__init__(": ".join(parts))


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    private_key: bytes = field(repr=False)
    addresses: tuple[Interface, ...] = ()
    listen_port: int | None = None  # None: let the system pick
    mtu: int | None = None  # None: the daemon's default


@dataclass(frozen=True, slots=True)
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    endpoint: tuple[str, int] | None = None  # (IP address, UDP port)
    allowed_ips: tuple[Network, ...] = ()
    persistent_keepalive_s: int = 0  # 0: off


@dataclass(frozen=True, slots=True)
class WgConfig:
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()


def parse_wg_config(text: str) -> WgConfig:
    """Parse the text of a wg-quick configuration file; raises ConfigError."""
    return _Parser(path=None).parse(text)


def load_wg_config(path: str | os.PathLike[str]) -> WgConfig:
    """Read and parse a wg-quick configuration file; raises ConfigError naming the file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror or e}", path=name) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("the file is not UTF-8 text", path=name) from e
    return _Parser(path=name).parse(text)


class _Section:
    """A section being read: where it started and which single-valued keys it has seen."""

    def __init__(self, name: str, lineno: int, line: str) -> None:
        self.name = name
        self.lineno = lineno
        self.line = line
        self.seen: dict[str, int] = {}  # lower-case key -> line number


class _InterfaceSection(_Section):
    def __init__(self, lineno: int, line: str) -> None:
        super().__init__("[Interface]", lineno, line)
        self.private_key: bytes | None = None
        self.addresses: list[Interface] = []
        self.listen_port: int | None = None
        self.mtu: int | None = None

    def build(self) -> InterfaceConfig:
        assert self.private_key is not None
        return InterfaceConfig(
            private_key=self.private_key,
            addresses=tuple(self.addresses),
            listen_port=self.listen_port,
            mtu=self.mtu,
        )


class _PeerSection(_Section):
    def __init__(self, lineno: int, line: str) -> None:
        super().__init__("[Peer]", lineno, line)
        self.public_key: bytes | None = None
        self.preshared_key: bytes | None = None
        self.endpoint: tuple[str, int] | None = None
        self.allowed_ips: list[Network] = []
        self.persistent_keepalive_s = 0

    def build(self) -> PeerConfig:
        assert self.public_key is not None
        return PeerConfig(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(self.allowed_ips),
            persistent_keepalive_s=self.persistent_keepalive_s,
        )


class _LineError(Exception):
    """Raised by value parsers; the parser adds the line number and text."""


class _Parser:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.interface: _InterfaceSection | None = None
        self.peers: list[_PeerSection] = []
        self.section: _Section | None = None
        self.public_keys: dict[bytes, int] = {}  # peer public key -> line number

    def parse(self, text: str) -> WgConfig:
        text = text.removeprefix("\ufeff")
        # split on "\n" only, so line numbers agree with editors (str.splitlines would
        # also break at form feeds, U+2028 and others)
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                self._line(lineno, line)
            except _LineError as e:
                raise self._error(str(e), lineno, raw) from None
        return self._finish()

    def _error(self, reason: str, lineno: int, raw: str) -> ConfigError:
        return ConfigError(reason, lineno=lineno, line=_shown(raw), path=self.path)

    def _line(self, lineno: int, line: str) -> None:
        if line.startswith("["):
            self._header(lineno, line)
            return
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise _LineError('expected a section header such as [Peer] or a "Key = Value" line')
        section = self.section
        if section is None:
            raise _LineError(
                f"{_printable(key)} comes before any section; start the file with [Interface]"
            )
        lower = key.lower()
        if isinstance(section, _InterfaceSection):
            self._interface_key(section, lower, key, value, lineno)
        else:
            assert isinstance(section, _PeerSection)
            self._peer_key(section, lower, key, value, lineno)

    def _header(self, lineno: int, line: str) -> None:
        if not line.endswith("]"):
            raise _LineError("a section header must end with ]")
        name = line[1:-1].strip().lower()
        if name == "interface":
            if self.interface is not None:
                raise _LineError(
                    f"a second [Interface] section; the first is on line {self.interface.lineno}"
                )
            self.interface = _InterfaceSection(lineno, line)
            self.section = self.interface
        elif name == "peer":
            peer = _PeerSection(lineno, line)
            self.peers.append(peer)
            self.section = peer
        else:
            raise _LineError("unknown section; expected [Interface] or [Peer]")

    def _once(self, section: _Section, lower: str, key: str, lineno: int) -> None:
        first = section.seen.get(lower)
        if first is not None:
            raise _LineError(f"{key} is already set in this {section.name} on line {first}")
        section.seen[lower] = lineno

    def _interface_key(
        self, section: _InterfaceSection, lower: str, key: str, value: str, lineno: int
    ) -> None:
        if lower == "privatekey":
            self._once(section, lower, "PrivateKey", lineno)
            section.private_key = _key(value, "PrivateKey")
        elif lower == "address":
            section.addresses.extend(_addresses(value))
        elif lower == "listenport":
            self._once(section, lower, "ListenPort", lineno)
            section.listen_port = _number(value, "ListenPort", 0, MAX_PORT)
        elif lower == "mtu":
            self._once(section, lower, "MTU", lineno)
            section.mtu = _number(value, "MTU", MIN_MTU, MAX_MTU)
        elif lower in _IGNORED_INTERFACE_KEYS:
            pass
        elif lower in _HOOKS:
            raise _LineError(
                f"weftd does not run shell hooks ({key}); remove the line and run the "
                "command another way"
            )
        else:
            raise _LineError(
                f"unknown key {_printable(key)} in [Interface]; expected PrivateKey, Address, ListenPort "
                "or MTU (DNS, Table and SaveConfig are accepted and ignored)"
            )

    def _peer_key(
        self, section: _PeerSection, lower: str, key: str, value: str, lineno: int
    ) -> None:
        if lower == "publickey":
            self._once(section, lower, "PublicKey", lineno)
            public_key = _key(value, "PublicKey")
            other = self.public_keys.get(public_key)
            if other is not None:
                raise _LineError(f"this PublicKey is already used by the [Peer] on line {other}")
            self.public_keys[public_key] = section.lineno
            section.public_key = public_key
        elif lower == "presharedkey":
            self._once(section, lower, "PresharedKey", lineno)
            section.preshared_key = _key(value, "PresharedKey")
        elif lower == "endpoint":
            self._once(section, lower, "Endpoint", lineno)
            section.endpoint = _endpoint(value)
        elif lower == "allowedips":
            section.allowed_ips.extend(_allowed_ips(value))
        elif lower == "persistentkeepalive":
            self._once(section, lower, "PersistentKeepalive", lineno)
            section.persistent_keepalive_s = (
                0
                if value.lower() == "off"
                else _number(value, "PersistentKeepalive", 0, MAX_KEEPALIVE_S, extra=' or "off"')
            )
        else:
            raise _LineError(
                f"unknown key {_printable(key)} in [Peer]; expected PublicKey, PresharedKey, Endpoint, "
                "AllowedIPs or PersistentKeepalive"
            )

    def _finish(self) -> WgConfig:
        interface = self.interface
        if interface is None:
            raise ConfigError("there is no [Interface] section", path=self.path)
        if interface.private_key is None:
            raise ConfigError(
                "[Interface] has no PrivateKey",
                lineno=interface.lineno,
                line=interface.line,
                path=self.path,
            )
        for peer in self.peers:
            if peer.public_key is None:
                raise ConfigError(
                    "[Peer] has no PublicKey", lineno=peer.lineno, line=peer.line, path=self.path
                )
        return WgConfig(
            interface=interface.build(), peers=tuple(peer.build() for peer in self.peers)
        )


def _shown(raw: str) -> str:
    """The line as an error message shows it: trimmed, secrets hidden, one printable line."""
    line = raw.strip()
    key, sep, _ = line.partition("=")
    if sep and key.strip().lower() in _SECRET_KEYS:
        line = f"{key.strip()} = (hidden)"
    return _printable(line)


def _printable(text: str) -> str:
    """``text`` cut to a readable length, with control characters escaped."""
    if len(text) > _SHOWN_LINE_CHARS:
        text = text[: _SHOWN_LINE_CHARS - 3] + "..."
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def _key(value: str, name: str) -> bytes:
    if not _KEY_RE.fullmatch(value):
        raise _LineError(
            f"{name} must be a 32-byte key in base64: 44 characters ending in =, "
            "as wg genkey, wg pubkey and wg genpsk print them"
        )
    return base64.b64decode(value)


def _number(value: str, name: str, low: int, high: int, extra: str = "") -> int:
    if _DIGITS_RE.fullmatch(value):
        number = int(value)
        if low <= number <= high:
            return number
    raise _LineError(f"{name} must be a number from {low} to {high}{extra}")


def _items(value: str, name: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if value and not all(items):
        raise _LineError(f"{name} has an empty entry; remove the stray comma")
    return items if value else []


def _addresses(value: str) -> list[Interface]:
    # wg-quick splits Address at commas and at spaces
    result = []
    for item in value.replace(",", " ").split():
        try:
            result.append(ipaddress.ip_interface(item))
        except ValueError:
            raise _LineError(
                f"Address entry {item!r} is not an IP address with an optional /prefix, "
                "such as 10.0.0.1/24 or fd00::1/64"
            ) from None
    return result


def _allowed_ips(value: str) -> list[Network]:
    result = []
    for item in _items(value, "AllowedIPs"):
        try:
            # host bits are masked off, as wg does
            result.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _LineError(
                f"AllowedIPs entry {item!r} is not a network such as 10.0.0.0/24, "
                "fd00::/64 or 0.0.0.0/0"
            ) from None
    return result


_ENDPOINT_FORMS = "192.0.2.1:51820 or [2001:db8::1]:51820"


def _endpoint(value: str) -> tuple[str, int]:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if value.startswith("["):
        host, close, port = value[1:].partition("]")
        if not close or not port.startswith(":"):
            raise _LineError(f"Endpoint must look like {_ENDPOINT_FORMS}")
        port = port[1:]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise _LineError(
                f"Endpoint {host!r} in brackets is not an IPv6 address; write {_ENDPOINT_FORMS}"
            ) from None
    else:
        host, colon, port = value.rpartition(":")
        if not colon or not host:
            raise _LineError(f"Endpoint needs an address and a port, like {_ENDPOINT_FORMS}")
        if ":" in host:
            raise _LineError(f"an IPv6 Endpoint needs brackets, like {_ENDPOINT_FORMS}")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise _LineError(
                f"Endpoint host {host!r} is not an IP address; weftd does not look up "
                "host names here, so write the address itself"
            ) from None
    return str(ip), _number(port, "the Endpoint port", 1, MAX_PORT)
