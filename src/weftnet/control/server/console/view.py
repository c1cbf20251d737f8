"""How the console shows things: times, key expiry, a machine's row; machine filters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from weftnet.control.domain import names
from weftnet.control.domain.records import Node, User

SOON_S = 7 * 86400.0  # key expiry closer than this is flagged
STATUS_FILTERS = ("online", "offline", "expired", "needs-approval")


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    delta = now - ts
    if delta < 60:
        return "just now"
    return f"{human(delta)} ago"


def iso(ts: float) -> str:
    """A time as UTC ISO 8601, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def until(ts: float, now: float) -> str:
    return "now" if ts <= now else f"in {human(ts - now)}"


def human(seconds: float) -> str:
    """In the largest whole unit: 3 days, 5 hours, 12 minutes."""
    for unit, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= unit:
            n = int(seconds // unit)
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{int(seconds)} seconds"


@dataclass(frozen=True)
class MachineRow:
    node: Node
    owner: str | None  # user name; None for tagged nodes
    online: bool
    now: float

    @property
    def hostname(self) -> str:
        return names.clean_hostname(self.node.hostname)

    @property
    def expired(self) -> bool:
        return not self.node.key_expiry_disabled and self.node.expired_at(self.now)

    @property
    def needs_approval(self) -> bool:
        return self.node.authorized_at is None

    @property
    def status(self) -> str:
        return "online" if self.online else "offline"

    @property
    def last_seen(self) -> str:
        return "connected" if self.online else ago(self.node.last_seen, self.now)

    @property
    def expiry(self) -> str:
        node = self.node
        if node.key_expiry_disabled:
            return "expiry disabled"
        if node.key_expiry is None:
            return "no expiry"
        if self.expired:
            return "expired"
        return f"expires {until(node.key_expiry, self.now)}"

    @property
    def expiry_soon(self) -> bool:
        expiry = self.node.key_expiry
        return not self.expired and expiry is not None and expiry - self.now < SOON_S

    @property
    def pending_routes(self) -> list[str]:
        return [r for r in self.node.announced_routes if r not in self.node.approved_routes]

    def status_json(self) -> dict[str, Any]:
        return {
            "id": self.node.id,
            "status": self.status,
            "last_seen": self.last_seen,
            "expiry": self.expiry,
            "needs_approval": self.needs_approval,
        }

    def matches(self, q: str, status: str, user: str, tag: str) -> bool:
        node = self.node
        if q:
            text = " ".join(
                [
                    node.given_name,
                    self.hostname,
                    node.ipv4,
                    node.ipv6,
                    node.os,
                    node.client_version,
                    self.owner or "",
                    *node.tags,
                ]
            ).lower()
            if q.lower() not in text:
                return False
        if status == "online" and not self.online:
            return False
        if status == "offline" and self.online:
            return False
        if status == "expired" and not self.expired:
            return False
        if status == "needs-approval" and not self.needs_approval:
            return False
        if user and self.owner != user:
            return False
        return not tag or tag in node.tags or f"tag:{tag}" in node.tags


def machine_rows(
    nodes: list[tuple[Node, User | None]], online: set[int], now: float
) -> list[MachineRow]:
    rows = [MachineRow(n, u.name if u else None, n.id in online, now) for n, u in nodes]
    return sorted(rows, key=lambda r: r.node.given_name)
