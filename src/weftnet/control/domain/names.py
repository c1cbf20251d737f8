"""Names and durations as people type them: given names, tags, user names, "90d".

A given name is one DNS label (RFC 1035 section 2.3.1, lowercased, at most 63 octets)
derived from the hostname the device reports, unique in the tailnet: on a collision it
gets "-1", "-2", ... appended.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

MAX_HOSTNAME = 255  # characters of a reported hostname kept (tailcfg.MAX_HOSTNAME)
MAX_LABEL = 63  # octets in one DNS label (RFC 1035 section 2.3.4)
MAX_USER_NAME = 128
DEFAULT_NAME = "node"  # for a device that reported no usable hostname

_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_TAG = re.compile(r"^tag:[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def clean_hostname(hostname: str) -> str:
    """A reported hostname as stored and shown: without control, format (bidi overrides)
    or other non-printable characters, so it can never drive a terminal; trimmed and
    bounded. It stays the device's own spelling; ``dns_label`` makes the given name."""
    printable = "".join(c if c.isprintable() else " " for c in hostname)
    return " ".join(printable.split())[:MAX_HOSTNAME]


def dns_label(hostname: str, max_len: int = MAX_LABEL) -> str:
    label = _INVALID.sub("-", hostname.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:max_len].strip("-")
    return label or DEFAULT_NAME


def unique_given_name(hostname: str, taken: Callable[[str], bool]) -> str:
    base = dns_label(hostname)
    if not taken(base):
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        candidate = dns_label(base, MAX_LABEL - len(suffix)) + suffix
        if not taken(candidate):
            return candidate
        n += 1


def check_given_name(name: str) -> str:
    if not _LABEL.match(name):
        raise ValueError(
            f"invalid name {name!r}: use lowercase letters, digits and '-',"
            f" at most {MAX_LABEL} characters, not starting or ending with '-'"
        )
    return name


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if not _TAG.match(tag):
            raise ValueError(
                f"invalid tag {tag!r}: tags look like tag:name (lowercase letters, digits, '-')"
            )
        if tag not in out:
            out.append(tag)
    return tuple(sorted(out))


def check_user_name(name: str) -> str:
    name = name.strip()
    if (
        not name
        or len(name) > MAX_USER_NAME
        or any(c.isspace() or not c.isprintable() or c in "/?#%" for c in name)
    ):
        raise ValueError(
            f"invalid user name {name!r}: 1 to {MAX_USER_NAME} printable characters, no spaces or / ? # %"
        )
    if "@" in name:
        local, _, domain = name.partition("@")
        if not local or "@" in domain or "." not in domain.strip("."):
            raise ValueError(f"invalid email address {name!r}")
    return name


def parse_duration(text: str) -> float:
    """Seconds in "90d", "1h30m", "45s", "2w"; ValueError for anything else."""
    text = text.strip().lower()
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += int(m[1]) * _UNIT_S[m[2]]
        pos = m.end()
    if not text or pos != len(text) or total <= 0:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30m, 1h, 7d, 90d")
    return float(total)


def format_duration(seconds: float) -> str:
    s = int(seconds)
    for unit in ("w", "d", "h", "m"):
        if s and s % _UNIT_S[unit] == 0:
            return f"{s // _UNIT_S[unit]}{unit}"
    return f"{s}s"
