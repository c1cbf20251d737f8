"""Golden tests of rule conditions: time windows (a fake clock) and device postures."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftlab.fakes import FakeClock
from weftnet.control.policy import (
    NodeInfo,
    PolicyError,
    can_reach,
    compile_filter,
    next_edge,
    parse_policy,
    run_tests,
)
from weftnet.control.policy.conditions import parse_condition, version_key

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")

ALICE = NodeInfo("a", "alice@example.com", (), ("100.64.0.1",), os="linux", client_version="0.3.1")
ALICE_MAC = NodeInfo(
    "m", "alice@example.com", (), ("100.64.0.2",), os="macos", client_version="0.1.0"
)
BOB = NodeInfo("b", "bob@example.com", (), ("100.64.0.3",), os="linux", attrs={"managed": True})
DB = NodeInfo("d", None, ("tag:db",), ("100.64.0.10",))
NODES = [ALICE, ALICE_MAC, BOB, DB]

SCHEDULED = """{
  "tagOwners": {"tag:db": []},
  "schedules": {
    // office hours in Berlin, Monday to Friday
    "schedule:work": {"days": ["mon", "tue", "wed", "thu", "fri"],
                      "hours": "09:00-17:00", "timezone": "Europe/Berlin"},
    "schedule:night": {"days": ["Friday"], "hours": "22:00-06:00", "timezone": "UTC"},
  },
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"],
     "schedule": ["schedule:work"]},
    {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:db:22"],
     "schedule": "schedule:night"},
  ],
}"""


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=BERLIN).timestamp()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC).timestamp()


def ports(rules: list) -> set[tuple[str, int]]:
    return {(src, lo) for r in rules for src in r.src_ips for _, lo, _ in r.dst_ports}


# --- time windows ---------------------------------------------------------------------


def test_a_work_hours_rule_opens_and_closes_with_a_fake_clock() -> None:
    policy = parse_policy(SCHEDULED)
    clock = FakeClock(berlin(2026, 11, 23, 8, 59, 59))  # a Monday
    assert compile_filter(policy, DB, NODES, clock()) == []
    assert not can_reach(policy, ALICE, DB, NODES, clock())
    assert next_edge(policy, clock()) == berlin(2026, 11, 23, 9, 0)

    clock.advance(1.0)  # 09:00:00 sharp: open
    assert ports(compile_filter(policy, DB, NODES, clock())) == {
        ("100.64.0.1/32", 5432),
        ("100.64.0.2/32", 5432),
    }
    assert can_reach(policy, ALICE, DB, NODES, clock())
    assert next_edge(policy, clock()) == berlin(2026, 11, 23, 17, 0)

    clock.advance(8 * 3600 - 1)  # 16:59:59 still open
    assert compile_filter(policy, DB, NODES, clock()) != []
    clock.advance(1.0)  # 17:00 closed
    assert compile_filter(policy, DB, NODES, clock()) == []


def test_weekend_is_outside_a_weekday_window() -> None:
    policy = parse_policy(SCHEDULED)
    saturday_noon = berlin(2026, 11, 28, 12, 0)
    assert compile_filter(policy, DB, NODES, saturday_noon) == []
    # The next edge is Monday 09:00 Berlin... unless Bob's night window comes first
    # (it closes Saturday 06:00 UTC, already past at noon).
    assert next_edge(policy, saturday_noon) == berlin(2026, 11, 30, 9, 0)


def test_a_window_past_midnight_belongs_to_the_day_it_opens() -> None:
    policy = parse_policy(SCHEDULED)
    fri_2300 = utc(2026, 11, 27, 23, 0)
    sat_0530 = utc(2026, 11, 28, 5, 30)
    sat_2300 = utc(2026, 11, 28, 23, 0)
    thu_2300 = utc(2026, 11, 26, 23, 0)
    for when, open_ in ((fri_2300, True), (sat_0530, True), (sat_2300, False), (thu_2300, False)):
        assert can_reach(policy, BOB, DB, NODES, when) is open_, when
    assert next_edge(policy, fri_2300) == utc(2026, 11, 28, 6, 0)


def test_windows_follow_daylight_saving_time() -> None:
    policy = parse_policy(SCHEDULED)
    # Berlin leaves summer time on Sunday 2026-10-25: 09:00 is 07:00 UTC before, 08:00 after.
    assert can_reach(policy, ALICE, DB, NODES, utc(2026, 10, 23, 7, 0))  # Fri, CEST
    assert not can_reach(policy, ALICE, DB, NODES, utc(2026, 10, 26, 7, 30))  # Mon, CET
    assert can_reach(policy, ALICE, DB, NODES, utc(2026, 10, 26, 8, 0))


def test_without_a_time_scheduled_rules_are_off() -> None:
    assert compile_filter(parse_policy(SCHEDULED), DB, NODES) == []


def test_unscheduled_policies_have_no_edges() -> None:
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
    assert next_edge(parse_policy(text), utc(2026, 1, 1)) is None
    assert next_edge(None, utc(2026, 1, 1)) is None


def test_policy_tests_may_name_a_time() -> None:
    base = SCHEDULED.rstrip().removesuffix("}").rstrip().rstrip(",")
    good = (
        base
        + """, "tests": [
        {"src": "alice@example.com", "accept": ["tag:db:5432"], "at": "2026-11-23T10:00:00+01:00"},
        {"src": "alice@example.com", "deny": ["tag:db:5432"], "at": "2026-11-23T18:00:00+01:00"},
        {"src": "alice@example.com", "deny": ["tag:db:5432"]},
    ]}"""
    )
    run_tests(parse_policy(good), NODES)
    bad = (
        base
        + """, "tests": [
        {"src": "alice@example.com", "accept": ["tag:db:5432"], "at": "2026-11-22T10:00:00Z"},
    ]}"""
    )
    with pytest.raises(PolicyError, match=r"tests\[1\] expects alice@example.com to reach"):
        run_tests(parse_policy(bad), NODES)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ('{"days": ["mon"], "hours": "9-17"}', "bad hours"),
        ('{"days": ["mon"], "hours": "17:00-17:00"}', "must not be empty"),
        ('{"days": ["funday"]}', "bad day 'funday'"),
        ('{"days": []}', "non-empty list"),
        ('{"timezone": "Mars/Olympus"}', "unknown timezone 'Mars/Olympus'"),
        ('{"weeks": 2}', "unknown key 'weeks'"),
        ('"always"', "expected an object"),
    ],
)
def test_bad_schedules_are_refused_with_a_clear_error(schedule: str, message: str) -> None:
    text = '{"schedules": {"schedule:x": ' + schedule + '}, "acls": []}'
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_a_rule_naming_an_unknown_schedule_is_refused() -> None:
    text = (
        '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "schedule": "schedule:no"}]}'
    )
    with pytest.raises(PolicyError, match=r"acls\[1\] schedule: unknown 'schedule:no'"):
        parse_policy(text)


@given(st.floats(min_value=1.6e9, max_value=2.2e9))
def test_the_filter_only_changes_at_edges(now: float) -> None:
    """Between now and the next edge, the compiled filter stays the same."""
    policy = parse_policy(SCHEDULED)
    edge = next_edge(policy, now)
    assert edge is not None and now < edge <= now + 7 * 86400
    before = compile_filter(policy, DB, NODES, now)
    assert compile_filter(policy, DB, NODES, (now + edge) / 2) == before
    assert compile_filter(policy, DB, NODES, edge - 1e-3) == before


# --- device postures ------------------------------------------------------------------

POSTURES = """{
  "tagOwners": {"tag:db": []},
  "postures": {
    "posture:recent-linux": ["node:os == 'linux'", "node:tsVersion >= '0.2'"],
    "posture:managed": ["custom:managed == true"],
  },
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:db:5432"],
     "srcPosture": ["posture:recent-linux"]},
    {"action": "accept", "src": ["*"], "dst": ["tag:db:22"], "srcPosture": ["posture:managed"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:80"]},
  ],
}"""


def test_postures_pick_the_devices_a_rule_holds_for() -> None:
    rules = compile_filter(parse_policy(POSTURES), DB, NODES)
    assert ports(rules) == {
        ("100.64.0.1/32", 5432),  # alice's linux 0.3.1 (her macOS 0.1.0 is left out)
        ("100.64.0.3/32", 22),  # bob's managed device: "*" narrows to devices
        ("100.64.0.1/32", 80),
        ("100.64.0.2/32", 80),
    }


def test_a_posture_with_no_matching_device_gives_no_rule() -> None:
    text = POSTURES.replace("custom:managed == true", "custom:managed == 'never'")
    rules = compile_filter(parse_policy(text), DB, NODES)
    assert all(lo != 22 for r in rules for _, lo, _ in r.dst_ports)


def test_default_src_posture_applies_to_rules_without_their_own() -> None:
    text = POSTURES.replace('"acls"', '"defaultSrcPosture": ["posture:managed"], "acls"')
    rules = compile_filter(parse_policy(text), DB, NODES)
    assert ports(rules) == {("100.64.0.1/32", 5432), ("100.64.0.3/32", 22)}


def test_policy_tests_see_a_devices_posture_by_its_address() -> None:
    text = (
        POSTURES.rstrip().removesuffix("}").rstrip().rstrip(",")
        + """, "tests": [
        {"src": "100.64.0.1", "accept": ["tag:db:5432"]},
        {"src": "100.64.0.2", "deny": ["tag:db:5432"]},
        {"src": "alice@example.com", "deny": ["tag:db:5432"]},
    ]}"""
    )
    run_tests(parse_policy(text), NODES)


@pytest.mark.parametrize(
    ("condition", "device", "holds"),
    [
        ("node:os == 'linux'", {"node:os": "linux"}, True),
        ("node:os == 'linux'", {"node:os": "Linux"}, True),
        ("node:os != 'windows'", {"node:os": "linux"}, True),
        ("node:os IN ['macos', 'linux']", {"node:os": "linux"}, True),
        ("node:os NOT IN ['macos', 'linux']", {"node:os": "linux"}, False),
        ("node:tsVersion >= '1.40'", {"node:tsVersion": "1.100.0"}, True),
        ("node:tsVersion >= '1.40'", {"node:tsVersion": "1.4.9"}, False),
        ("node:tsVersion < '1.40'", {"node:tsVersion": "1.39.99"}, True),
        ("custom:tier > 2", {"custom:tier": 3}, True),
        ("custom:tier > 2", {"custom:tier": "x"}, False),
        ("custom:managed == true", {"custom:managed": "true"}, True),
        ("custom:managed == true", {}, False),
        ("custom:managed != true", {}, True),
        ("custom:team IN ['infra']", {"custom:team": "infra"}, True),
    ],
)
def test_conditions(condition: str, device: dict, holds: bool) -> None:
    assert parse_condition(condition, "t").holds(device) is holds


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("node:colour == 'red'", "unknown attribute 'node:colour'"),
        ("os == 'linux'", "bad condition"),
        ("node:os == linux", "bad value 'linux'"),
        ("node:os IN 'linux'", "needs a list"),
        ("node:os IN []", "non-empty list"),
    ],
)
def test_bad_conditions_are_refused(condition: str, message: str) -> None:
    text = '{"postures": {"posture:p": ["' + condition + '"]}}'
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_version_order() -> None:
    assert version_key("1.40.2") < version_key("1.100") < version_key("1.100.1")
    assert version_key("v0.2") == version_key("0.2")


@given(st.text(max_size=60))
def test_any_condition_text_parses_or_is_refused(text: str) -> None:
    try:
        cond = parse_condition(text, "t")
    except PolicyError:
        return
    cond.holds({"node:os": "linux", "custom:x": 1})
