"""Rule conditions: time windows (schedules) and device postures (pure).

Theory of operation: a rule may hold only at certain times and only for certain
source devices. Both are named once at the top of the policy and referred to from
rules, as Tailscale does with postures:

    "schedules": {
      "schedule:workhours": {"days": ["mon", "tue", "wed", "thu", "fri"],
                             "hours": "09:00-17:00", "timezone": "Europe/Berlin"},
    },
    "postures": {
      "posture:managed": ["node:os IN ['linux', 'macos']", "node:tsVersion >= '0.1'",
                          "custom:managed == true"],
    },
    "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"],
              "schedule": ["schedule:workhours"], "srcPosture": ["posture:managed"]}]

A rule with schedules holds while any of them is open; one with postures holds for
source devices that meet every condition of any of them. A window's days are the days
it opens on: "22:00-06:00" on "fri" runs from Friday 22:00 to Saturday 06:00 in the
schedule's time zone (daylight saving included, through zoneinfo). ``next_edge``
says when the next window opens or closes, so the server can push new filters then.
Time is always passed in (unix seconds); nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from weftnet.control.policy.hujson import PolicyError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_HOURS = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --- schedules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Windows opening on ``days`` (0 = Monday) at ``start`` minutes past midnight and
    lasting until ``end`` minutes (the next day when end <= start), in ``timezone``."""

    name: str
    days: frozenset[int]
    start: int
    end: int
    timezone: str

    def _windows(self, now: float) -> Iterator[tuple[float, float]]:
        """(open, close) unix times of the windows around ``now`` (a week either side)."""
        tz = zoneinfo.ZoneInfo(self.timezone)
        today = dt.datetime.fromtimestamp(now, tz).date()
        for offset in range(-8, 9):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = _local(day, self.start, tz)
            close_day = day if self.end > self.start else day + dt.timedelta(days=1)
            closes = _local(close_day, self.end, tz)
            yield opens, closes

    def is_open(self, now: float) -> bool:
        return any(opens <= now < closes for opens, closes in self._windows(now))

    def next_edge(self, now: float) -> float | None:
        """The first time after ``now`` at which a window opens or closes."""
        edges = [t for w in self._windows(now) for t in w if t > now]
        return min(edges, default=None)


def _local(day: dt.date, minutes: int, tz: zoneinfo.ZoneInfo) -> float:
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    # Wall-clock minutes past midnight; a time skipped or doubled by a daylight saving
    # change resolves as zoneinfo does (fold=0).
    wall = midnight.replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    return wall.replace(tzinfo=tz).timestamp()


_DAY_NAMES = {
    **{d: i for i, d in enumerate(DAYS)},
    **{
        d: i
        for i, d in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
}


def _parse_day(text: Any, where: str) -> int:
    day = _DAY_NAMES.get(text.lower()) if isinstance(text, str) else None
    if day is None:
        raise PolicyError(f"{where}: bad day {text!r}; write mon, tue, ... sun")
    return day


def parse_schedules(raw: Any) -> dict[str, Schedule]:
    if not isinstance(raw, dict):
        raise PolicyError("schedules: expected an object")
    schedules: dict[str, Schedule] = {}
    for name, body in raw.items():
        if not name.startswith("schedule:") or not _NAME.match(name.removeprefix("schedule:")):
            raise PolicyError(f"schedules: bad schedule name {name!r}; write schedule:NAME")
        where = f"schedules: {name}"
        if not isinstance(body, dict):
            raise PolicyError(f"{where}: expected an object with days, hours and timezone")
        unknown = set(body) - {"days", "hours", "timezone"}
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        days_raw = body.get("days", list(DAYS))
        if not isinstance(days_raw, list) or not days_raw:
            raise PolicyError(f'{where}: days must be a non-empty list like ["mon", "fri"]')
        days = frozenset(_parse_day(d, where) for d in days_raw)
        hours = body.get("hours", "00:00-24:00")
        m = _HOURS.match(hours) if isinstance(hours, str) else None
        if m is None:
            raise PolicyError(f"{where}: bad hours {hours!r}; write HH:MM-HH:MM, e.g. 09:00-17:00")
        start = int(m[1]) * 60 + int(m[2])
        end = int(m[3]) * 60 + int(m[4])
        if start > 24 * 60 or end > 24 * 60 or start == end or start == 24 * 60:
            raise PolicyError(f"{where}: bad hours {hours!r}; the window must not be empty")
        tz_name = body.get("timezone", "UTC")
        try:
            if not isinstance(tz_name, str):
                raise ValueError(tz_name)
            zoneinfo.ZoneInfo(tz_name)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise PolicyError(
                f"{where}: unknown timezone {tz_name!r}; use an IANA name like Europe/Berlin"
            ) from None
        schedules[name] = Schedule(name, days, start, end, tz_name)
    return schedules


def any_open(schedules: Iterable[Schedule], now: float) -> bool:
    return any(s.is_open(now) for s in schedules)


# --- postures -------------------------------------------------------------------------

# Device attributes a condition may test. node:* come from the device itself; custom:*
# are set by the admin (`weft-control nodes attr`).
NODE_ATTRS = {
    "node:os": "os",
    "node:tsVersion": "client_version",
    "node:version": "client_version",
    "node:hostname": "hostname",
}
_CONDITION = re.compile(
    r"^\s*((?:node|custom):[A-Za-z][A-Za-z0-9_.-]*)\s*"
    r"(==|!=|<=|>=|<|>|NOT IN|IN)\s*(.+?)\s*$",
    re.IGNORECASE,
)
Value = str | float | bool


@dataclass(frozen=True, slots=True)
class Condition:
    attr: str  # "node:os", "custom:managed"
    op: str  # ==, !=, <, <=, >, >=, IN, NOT IN
    value: Value | tuple[Value, ...]

    def holds(self, device: Mapping[str, Any]) -> bool:
        have = device.get(self.attr)
        if have is None:
            return self.op in ("!=", "NOT IN")
        if self.op == "IN":
            assert isinstance(self.value, tuple)
            return any(_equal(have, v) for v in self.value)
        if self.op == "NOT IN":
            assert isinstance(self.value, tuple)
            return not any(_equal(have, v) for v in self.value)
        assert not isinstance(self.value, tuple)
        if self.op == "==":
            return _equal(have, self.value)
        if self.op == "!=":
            return not _equal(have, self.value)
        a, b = _ordered(have, self.value, version=self.attr in ("node:tsVersion", "node:version"))
        if a is None or b is None:
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]


def _equal(have: Any, want: Value) -> bool:
    if isinstance(want, bool) or isinstance(have, bool):
        return have is want or str(have).lower() == str(want).lower()
    if isinstance(want, float):
        try:
            return float(have) == want
        except (TypeError, ValueError):
            return False
    return str(have).lower() == want.lower() if isinstance(have, str) else str(have) == want


def version_key(text: str) -> tuple[tuple[int, str], ...]:
    """ "1.40.2" < "1.100" < "1.100.1": numeric parts compare as numbers."""
    parts = re.split(r"[.+-]", text.strip().lstrip("vV"))
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in parts)


def _ordered(have: Any, want: Value, version: bool) -> tuple[Any, Any]:
    if version:
        return version_key(str(have)), version_key(str(want))
    try:
        return float(have), float(want)
    except (TypeError, ValueError):
        return None, None


def _parse_value(text: str, where: str) -> Value:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        raise PolicyError(f"{where}: bad value {text!r}; quote strings: 'linux'") from None


def parse_condition(text: Any, where: str) -> Condition:
    m = _CONDITION.match(text) if isinstance(text, str) else None
    if m is None:
        raise PolicyError(
            f"{where}: bad condition {text!r}; write e.g. \"node:os == 'linux'\", "
            "\"node:tsVersion >= '1.2'\" or \"custom:managed IN ['yes', 'true']\""
        )
    attr, op, value_text = m[1], m[2].upper(), m[3]
    if attr.startswith("node:") and attr not in NODE_ATTRS:
        known = ", ".join(sorted(NODE_ATTRS))
        raise PolicyError(f"{where}: unknown attribute {attr!r}; use {known} or custom:NAME")
    value: Value | tuple[Value, ...]
    if op in ("IN", "NOT IN"):
        if not (value_text.startswith("[") and value_text.endswith("]")):
            raise PolicyError(f"{where}: {op} needs a list: ['a', 'b']")
        items = [v.strip() for v in value_text[1:-1].split(",") if v.strip()]
        if not items:
            raise PolicyError(f"{where}: {op} needs a non-empty list")
        value = tuple(_parse_value(v, where) for v in items)
    else:
        value = _parse_value(value_text, where)
    return Condition(attr, op, value)


@dataclass(frozen=True, slots=True)
class Posture:
    name: str
    conditions: tuple[Condition, ...]

    def holds(self, device: Mapping[str, Any]) -> bool:
        return all(c.holds(device) for c in self.conditions)


def parse_postures(raw: Any) -> dict[str, Posture]:
    if not isinstance(raw, dict):
        raise PolicyError("postures: expected an object")
    postures: dict[str, Posture] = {}
    for name, conds in raw.items():
        if not name.startswith("posture:") or not _NAME.match(name.removeprefix("posture:")):
            raise PolicyError(f"postures: bad posture name {name!r}; write posture:NAME")
        where = f"postures: {name}"
        if not isinstance(conds, list) or not conds:
            raise PolicyError(f"{where}: expected a non-empty list of conditions")
        postures[name] = Posture(name, tuple(parse_condition(c, where) for c in conds))
    return postures


def device_attrs(
    os: str, client_version: str, hostname: str, custom: Mapping[str, Any]
) -> dict[str, Any]:
    """The attributes conditions test, from what a node reported and the admin set."""
    attrs: dict[str, Any] = {f"custom:{k.removeprefix('custom:')}": v for k, v in custom.items()}
    attrs["node:os"] = os
    attrs["node:hostname"] = hostname
    if client_version:
        attrs["node:tsVersion"] = attrs["node:version"] = client_version
    return attrs
