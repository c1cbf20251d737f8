"""The replay window against the Linux kernel's selftest and a reference model.

The first part is drivers/net/wireguard/selftest/counter.c, case for case: ``T(n, v)``
there is ``check(n, v)`` here, and ``T_INIT`` is a fresh window.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weftnet.wireguard.replay import COUNTER_WINDOW_SIZE, REJECT_AFTER_MESSAGES, ReplayWindow

T_LIM = COUNTER_WINDOW_SIZE + 1


def test_constants_match_the_kernel() -> None:
    assert COUNTER_WINDOW_SIZE == 8192 - 64
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1


class Checker:
    """Runs ``T(n, v)`` steps and collects failures with their kernel test numbers."""

    def __init__(self) -> None:
        self.window = ReplayWindow()
        self.test_num = 0
        self.failures: list[tuple[int, int, bool]] = []

    def init(self) -> None:
        self.window = ReplayWindow()

    def __call__(self, n: int, v: bool) -> None:
        self.test_num += 1
        if self.window.check_and_update(n) != v:
            self.failures.append((self.test_num, n, v))


def test_kernel_selftest_numbered_cases() -> None:
    t = Checker()
    t.init()
    t(0, True)  # 1
    t(1, True)  # 2
    t(1, False)  # 3
    t(9, True)  # 4
    t(8, True)  # 5
    t(7, True)  # 6
    t(7, False)  # 7
    t(T_LIM, True)  # 8
    t(T_LIM - 1, True)  # 9
    t(T_LIM - 1, False)  # 10
    t(T_LIM - 2, True)  # 11
    t(2, True)  # 12
    t(2, False)  # 13
    t(T_LIM + 16, True)  # 14
    t(3, False)  # 15
    t(T_LIM + 16, False)  # 16
    t(T_LIM * 4, True)  # 17
    t(T_LIM * 4 - (T_LIM - 1), True)  # 18
    t(10, False)  # 19
    t(T_LIM * 4 - T_LIM, False)  # 20
    t(T_LIM * 4 - (T_LIM + 1), False)  # 21
    t(T_LIM * 4 - (T_LIM - 2), True)  # 22
    t(T_LIM * 4 + 1 - T_LIM, False)  # 23
    t(0, False)  # 24
    t(REJECT_AFTER_MESSAGES, False)  # 25
    t(REJECT_AFTER_MESSAGES - 1, True)  # 26
    t(REJECT_AFTER_MESSAGES, False)  # 27
    t(REJECT_AFTER_MESSAGES - 1, False)  # 28
    t(REJECT_AFTER_MESSAGES - 2, True)  # 29
    t(REJECT_AFTER_MESSAGES + 1, False)  # 30
    t(REJECT_AFTER_MESSAGES + 2, False)  # 31
    t(REJECT_AFTER_MESSAGES - 2, False)  # 32
    t(REJECT_AFTER_MESSAGES - 3, True)  # 33
    t(0, False)  # 34
    assert t.failures == []
    assert t.test_num == 34


def test_kernel_selftest_window_loops() -> None:
    t = Checker()

    t.init()
    for i in range(1, COUNTER_WINDOW_SIZE + 1):
        t(i, True)
    t(0, True)
    t(0, False)

    t.init()
    for i in range(2, COUNTER_WINDOW_SIZE + 2):
        t(i, True)
    t(1, True)
    t(0, False)

    t.init()
    # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 0;)
    for i in range(COUNTER_WINDOW_SIZE, -1, -1):
        t(i, True)

    t.init()
    # for (i = COUNTER_WINDOW_SIZE + 2; i-- > 1;)
    for i in range(COUNTER_WINDOW_SIZE + 1, 0, -1):
        t(i, True)
    t(0, False)

    t.init()
    # for (i = COUNTER_WINDOW_SIZE + 1; i-- > 1;)
    for i in range(COUNTER_WINDOW_SIZE, 0, -1):
        t(i, True)
    t(COUNTER_WINDOW_SIZE + 1, True)
    t(0, False)

    t.init()
    for i in range(COUNTER_WINDOW_SIZE, 0, -1):
        t(i, True)
    t(0, True)
    t(COUNTER_WINDOW_SIZE + 1, True)

    assert t.failures == []
    # 34 numbered cases come before these in the kernel; this test counts its own.
    w = COUNTER_WINDOW_SIZE
    assert t.test_num == (w + 2) + (w + 2) + (w + 1) + (w + 2) + (w + 2) + (w + 2)


def test_reset_forgets_everything() -> None:
    window = ReplayWindow()
    for n in (0, 1, 5000, 20000):
        assert window.check_and_update(n)
    window.reset()
    for n in (0, 1, 5000, 20000):
        assert window.check_and_update(n)


def test_negative_counters_are_refused() -> None:
    assert not ReplayWindow().check_and_update(-1)


class Reference:
    """The window's meaning, spelled out: a set of seen counters and the maximum."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.max = -1

    def check_and_update(self, n: int) -> bool:
        if not 0 <= n < REJECT_AFTER_MESSAGES:
            return False
        if n in self.seen or n + COUNTER_WINDOW_SIZE < self.max:
            return False
        self.seen.add(n)
        self.max = max(self.max, n)
        return True


# Counters clustered so that sequences hit the window edges, word boundaries and the limit.
_near = st.integers(min_value=-70, max_value=70)
_bases = st.sampled_from(
    [0, 63, 64, COUNTER_WINDOW_SIZE, 8192, 3 * 8192, 2**32, REJECT_AFTER_MESSAGES - 8192]
)
_counters = st.one_of(
    st.integers(min_value=0, max_value=4 * 8192),
    st.builds(lambda base, off: max(0, base + off), _bases, _near),
    st.builds(lambda off: REJECT_AFTER_MESSAGES + off, _near),
    st.integers(min_value=0, max_value=2**64 - 1),
)


@pytest.mark.parametrize("jump_words", [1, 2, 63, 64, 126, 127, 128, 129, 130, 255, 256, 257])
@pytest.mark.parametrize("bit", [0, 1, 62, 63])
def test_moving_the_window_clears_exactly_the_words_it_passes(jump_words: int, bit: int) -> None:
    # Fill the whole ring, jump ahead, then probe every counter around the new window:
    # stale bits left in a word the window moved over would refuse a fresh counter, and
    # words cleared too eagerly would accept a replay.
    window, reference = ReplayWindow(), Reference()
    for n in range(8192):
        assert window.check_and_update(n) == reference.check_and_update(n), n
    top = 8191 + jump_words * 64 + bit
    assert window.check_and_update(top) == reference.check_and_update(top)
    for n in range(top - COUNTER_WINDOW_SIZE - 66, top + 2):
        assert window.check_and_update(n) == reference.check_and_update(n), n


@given(st.lists(_counters, max_size=300))
def test_matches_reference_model(counters: list[int]) -> None:
    window, reference = ReplayWindow(), Reference()
    for n in counters:
        assert window.check_and_update(n) == reference.check_and_update(n), n


@given(st.integers(min_value=0, max_value=2**40), st.lists(st.integers(0, 9000), max_size=200))
def test_matches_reference_model_relative_to_a_moving_top(base: int, offsets: list[int]) -> None:
    window, reference = ReplayWindow(), Reference()
    top = base
    for off in offsets:
        # alternate between pushing the top and probing below it
        n = top + off if off % 3 == 0 else max(0, top - off)
        top = max(top, n)
        assert window.check_and_update(n) == reference.check_and_update(n), n
