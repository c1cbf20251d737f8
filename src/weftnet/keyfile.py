"""Private key files: ``privkey:<64 hex>`` on one line, mode 0600, made on first use; and
the one atomic owner-only write every private file goes through (node state too).

The coordination server keeps its server key (``server.key``) and its relay's key
(``relay.key``) this way; a standalone relay keeps its key in its own data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.public import PrivateKey

from weftnet import controlbox

PRIVATE_KEY_PREFIX = "privkey:"


class KeyFileError(Exception):
    """The key file exists but cannot be read; the message names it."""


def write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` atomically, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its old mode through O_CREAT
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create(path: Path) -> tuple[bytes, bool]:
    """The X25519 private key in ``path`` (made if missing), and whether it was made."""
    created = False
    if not path.exists():
        private = bytes(PrivateKey.generate())
        write_private(path, controlbox.key_to_text(PRIVATE_KEY_PREFIX, private) + "\n")
        created = True
    try:
        private = controlbox.key_from_text(PRIVATE_KEY_PREFIX, path.read_text().strip())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the key file {path}: {e}") from None
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return private, created


def public_of(private: bytes) -> bytes:
    return bytes(PrivateKey(private).public_key)
