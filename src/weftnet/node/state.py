"""What a node keeps across restarts, in its state directory (mode 0700, files 0600).

    machine.key   the machine key (X25519, hex): proves this device to the server
    node.key      the WireGuard key (hex): rotates on every new login
    prefs.json    login server, hostname, whether the user wants it running, accept_dns,
                  the route flags (docs/routes.md)
    server.json   the coordination server's key, pinned at first contact
    netmap.json   the last network map, so the data plane comes back without the server

Every write goes to a temporary file first and is renamed into place, so a crash never
leaves half a key behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacl.public import PrivateKey

from weftnet import keyfile
from weftnet.wireguard import crypto

KEY_LEN = 32


@dataclass
class Prefs:
    login_server: str | None = None
    hostname: str | None = None
    want_running: bool = False
    registered: bool = False  # the server accepted our current node key
    accept_dns: bool = True  # configure the OS to use the tailnet's DNS (docs/dns.md)
    # Routes (docs/routes.md; checked by node.routeprefs before they get here):
    advertise_routes: list[str] = field(default_factory=list)  # canonical CIDRs
    advertise_exit_node: bool = False
    accept_routes: bool = False
    exit_node: str = ""  # the chosen exit node's overlay IP (or name as given); "": none
    exit_node_allow_lan_access: bool = False
    snat_subnet_routes: bool = True


@dataclass
class Pin:
    login_server: str
    server_key: str  # "mkey:<hex>"


@dataclass
class NodeState:
    directory: Path
    machine_private: bytes = b""
    node_private: bytes = b""
    prefs: Prefs = field(default_factory=Prefs)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeState:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        st = cls(d)
        st.machine_private = st._load_key("machine.key") or st._new_key("machine.key")
        st.node_private = st._load_key("node.key") or st._new_key("node.key")
        raw = st._read_json("prefs.json")
        if raw:
            st.prefs = Prefs(**{k: v for k, v in raw.items() if k in Prefs.__dataclass_fields__})
        return st

    # -- keys -------------------------------------------------------------------------

    def _load_key(self, name: str) -> bytes | None:
        try:
            text = (self.directory / name).read_text().strip()
        except FileNotFoundError:
            return None
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(
                f"{self.directory / name} is corrupt: remove it to start over"
            ) from None
        if len(raw) != KEY_LEN:
            raise ValueError(f"{self.directory / name} is corrupt: remove it to start over")
        return raw

    def _new_key(self, name: str) -> bytes:
        raw = bytes(PrivateKey.generate())
        if name == "node.key":
            raw = crypto.clamp(raw)
        self._write(name, raw.hex() + "\n")
        return raw

    def rotate_node_key(self) -> bytes:
        self.node_private = self._new_key("node.key")
        self.prefs.registered = False
        self.save_prefs()
        return self.node_private

    @property
    def machine_public(self) -> bytes:
        return bytes(PrivateKey(self.machine_private).public_key)

    @property
    def node_public(self) -> bytes:
        return crypto.public_key(self.node_private)

    # -- small JSON files -------------------------------------------------------------

    def save_prefs(self) -> None:
        self._write("prefs.json", json.dumps(asdict(self.prefs), indent=1))

    def pin(self) -> Pin | None:
        raw = self._read_json("server.json")
        return Pin(**raw) if raw else None

    def save_pin(self, pin: Pin) -> None:
        self._write("server.json", json.dumps(asdict(pin)))

    def load_netmap(self) -> dict[str, Any] | None:
        return self._read_json("netmap.json")

    def save_netmap(self, netmap: dict[str, Any] | None) -> None:
        if netmap is None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "netmap.json").unlink()
            return
        self._write("netmap.json", json.dumps(netmap))

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.directory / name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a damaged cache is as good as none
        return data if isinstance(data, dict) else None

    def _write(self, name: str, text: str) -> None:
        keyfile.write_private(self.directory / name, text)
