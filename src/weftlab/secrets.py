"""Secrets the lab has handled, and a scan of log files for any of them.

No secret may reach a log: auth keys (``weftkey-<prefix>-<secret>``), admin API keys
(``weftapi-...``) and private keys (the server's, the relays', each node's machine and
node key, and TLS keys in PEM files named ``*.key``). The lab helpers ``remember`` the secrets they see (the admin CLI's output,
admin.json); the private keys are read from their files when a scan runs
(``key_files_in``). ``scan(log_files, secrets)`` looks for each secret's full text and
for its secret part on its own (the 48 hex digits of a key; a private key's hex and
base64), and for any well-formed auth or API key, seen by the lab or not.

A ``Finding`` names the file, the line and what was found, never the secret itself:
keys show their prefix (an identifier, listed by ``keys list``), private keys the file
they came from.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_RE = re.compile(r"\b(weftkey|weftapi)-([0-9a-f]{12})-([0-9a-f]{48})\b")
# An auth key as handed out ends with the server key's fingerprint (public, not scanned).
FINGERPRINT_RE = re.compile(r"-[0-9a-f]{32}")
KEY_FILE_NAMES = ("machine.key", "node.key", "server.key", "relay.key")
ADMIN_FILE = "admin.json"
HEX_KEY_RE = re.compile(r"^(?:privkey:)?([0-9a-f]{64})$")
LOG_SUFFIX = ".log"

_KIND_LABEL = {"weftkey": "auth key", "weftapi": "admin API key"}


@dataclass(frozen=True, slots=True)
class Secret:
    label: str  # what it is, safe to print (no secret digits)
    forms: tuple[str, ...]  # the texts a log must not contain


@dataclass(frozen=True, slots=True)
class Finding:
    path: Path
    line: int  # 1-based
    label: str
    form: str  # "full text" or "secret part"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.label} ({self.form})"


_remembered: dict[str, Secret] = {}


def key_secret(text: str) -> Secret | None:
    """The Secret of an auth or API key's text, or None if it is not one."""
    text = text.strip()
    match = KEY_RE.match(text)
    if match is None or not (
        match.end() == len(text) or FINGERPRINT_RE.fullmatch(text, match.end())
    ):
        return None
    kind, prefix, secret = match.groups()
    label = f"{_KIND_LABEL[kind]} {kind}-{prefix}-<secret>"
    return Secret(label, (match.group(0), secret))


def private_key_secret(hex_key: str, where: str) -> Secret:
    raw = bytes.fromhex(hex_key)
    return Secret(f"private key in {where}", (hex_key, base64.b64encode(raw).decode()))


def remember(secret: str) -> None:
    """Remember an auth or API key (its text), or a private key (64 hex digits)."""
    found = key_secret(secret)
    if found is None and HEX_KEY_RE.fullmatch(secret.strip()):
        found = private_key_secret(secret.strip().removeprefix("privkey:"), "a remembered key")
    if found is None:
        raise ValueError("not an auth key, API key or private key")
    _remembered[found.forms[0]] = found


def remember_in(text: str) -> None:
    """Remember every auth or API key in ``text`` (e.g. the admin CLI's output)."""
    for match in KEY_RE.finditer(text):
        remember(match.group(0))


def remembered() -> list[Secret]:
    return list(_remembered.values())


def forget() -> None:
    _remembered.clear()


def key_files_in(root: Path) -> list[Secret]:
    """The private keys in key files, and the API key in each admin.json, under ``root``."""
    found: list[Secret] = []
    for name in KEY_FILE_NAMES:
        for path in root.rglob(name):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                match = HEX_KEY_RE.fullmatch(path.read_text().strip())
                if match is not None:
                    found.append(private_key_secret(match.group(1), str(path.relative_to(root))))
    for path in root.rglob("*.key"):  # TLS keys (PEM): each line of the body
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines = path.read_text().splitlines()
            if lines and "PRIVATE KEY-----" in lines[0]:
                body = tuple(line for line in lines[1:] if len(line) >= 40)
                found.append(Secret(f"TLS private key in {path.relative_to(root)}", body))
    for path in root.rglob(ADMIN_FILE):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            secret = key_secret(str(json.loads(path.read_text()).get("api_key", "")))
            if secret is not None:
                found.append(secret)
    return found


def log_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{LOG_SUFFIX}") if p.is_file())


def read_logs(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(path, text) of each file that can be read (to scan after the files are gone)."""
    logs = []
    for path in paths:
        with contextlib.suppress(OSError):
            logs.append((path, path.read_text(errors="replace")))
    return logs


def scan(paths: Iterable[Path], secrets: Iterable[Secret] | None = None) -> list[Finding]:
    """Every line of ``paths`` holding a secret (``secrets``, default: those remembered)
    or any well-formed auth or API key."""
    return scan_texts(read_logs(paths), secrets)


def scan_texts(
    logs: Iterable[tuple[Path, str]], secrets: Iterable[Secret] | None = None
) -> list[Finding]:
    """``scan`` of texts read before (``read_logs``)."""
    secrets = list(remembered() if secrets is None else secrets)
    findings: list[Finding] = []
    for path, text in logs:
        for number, line in enumerate(text.splitlines(), 1):
            seen: set[str] = set()
            for secret in secrets:
                for i, form in enumerate(secret.forms):
                    if form in line:
                        seen.add(secret.forms[0])
                        findings.append(
                            Finding(
                                path, number, secret.label, "full text" if i == 0 else "secret part"
                            )
                        )
                        break
            for match in KEY_RE.finditer(line):
                if match.group(0) not in seen:
                    found = key_secret(match.group(0))
                    assert found is not None
                    findings.append(Finding(path, number, found.label, "full text"))
    return findings


def scan_tree(
    roots: Iterable[Path],
    more_logs: Iterable[tuple[Path, str]] = (),
    more_secrets: Iterable[Secret] = (),
) -> list[Finding]:
    """The log files under ``roots`` (and ``more_logs``) against the remembered
    secrets, the key files and admin.json files under ``roots``, and ``more_secrets``."""
    roots = [r for r in roots if r.is_dir()]
    secrets = [*remembered(), *more_secrets, *(s for r in roots for s in key_files_in(r))]
    logs = [*read_logs(p for r in roots for p in log_files(r)), *more_logs]
    return scan_texts(logs, secrets)
