"""CPU time of a process, from /proc, for lab tests that bound a daemon's CPU use.

``cpu_seconds(pid)`` is user plus system time (``utime + stime`` of /proc/PID/stat, all
threads, not children). ``CpuSampler(pid)`` samples it with the wall clock every
``interval_s`` in a thread, so a test can compute the share of one core a process used
over any window it learns afterwards (``share(start_at, end_at)``, wall-clock seconds)
and the busiest interval within it (``peak_share``).

``session_cpu_seconds(sid)`` adds up a whole session: a process started by
``Host.popen`` leads its own session (through the ``ip netns exec`` and ``sh`` wrappers,
which exec), so this counts the daemon with all its threads, any helper processes it
started and, through the leader's ``cutime + cstime``, the ones it has already reaped.
``cpu_per_gbit(cpu_s, nbytes)`` is the benchmark's cost figure: CPU seconds per gigabit
(1e9 bits) moved.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from types import TracebackType

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str, proc: str = "/proc") -> list[str]:
    """/proc/PID/stat from field 3 (state) on: index i is field i + 3 of proc(5)."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    return stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and ")"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds; raises ProcessLookupError once it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # fields 14 and 15


def session_cpu_seconds(sid: int, proc: str = "/proc") -> float:
    """CPU seconds of every live process in session ``sid`` (utime + stime), plus the
    reaped children of the session leader (its cutime + cstime). 0.0 once all are gone."""
    ticks = 0
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(entry, proc)
        except (ProcessLookupError, PermissionError):
            continue  # exited between listdir and open
        if int(fields[3]) != sid:  # field 6: session
            continue
        ticks += int(fields[11]) + int(fields[12])
        if int(entry) == sid:
            ticks += int(fields[13]) + int(fields[14])  # fields 16 and 17: cutime, cstime
    return ticks / CLOCK_TICKS_PER_S


def sessions_cpu_seconds(sids: Iterable[int], proc: str = "/proc") -> float:
    return sum(session_cpu_seconds(sid, proc) for sid in sids)


def cpu_per_gbit(cpu_s: float, nbytes: int) -> float | None:
    """CPU seconds per gigabit moved; None when nothing was moved."""
    if nbytes <= 0:
        return None
    return cpu_s / (nbytes * 8 / 1e9)


class CpuSampler:
    """``with CpuSampler(pid) as s: ...``: (wall time, CPU seconds) every interval_s."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cpu-{pid}", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.time(), cpu_seconds(self.pid)))
            except ProcessLookupError:
                return
            if self._stop.wait(self.interval_s):
                return

    def _within(self, start_at: float, end_at: float) -> list[tuple[float, float]]:
        inside = [s for s in self.samples if start_at <= s[0] <= end_at]
        if len(inside) < 2:
            raise ValueError(f"fewer than two CPU samples between {start_at} and {end_at}")
        return inside

    def share(self, start_at: float, end_at: float) -> float:
        """CPU seconds per wall second (1.0 = one core busy) between two wall times."""
        inside = self._within(start_at, end_at)
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0)

    def peak_share(self, start_at: float, end_at: float, span_s: float = 1.0) -> float:
        """The highest share over any ``span_s`` stretch of samples within the window."""
        inside = self._within(start_at, end_at)
        best = 0.0
        j = 0
        for i, (t0, c0) in enumerate(inside):
            j = max(j, i + 1)
            while j < len(inside) - 1 and inside[j][0] - t0 < span_s:
                j += 1
            if j < len(inside) and inside[j][0] > t0:
                t1, c1 = inside[j]
                best = max(best, (c1 - c0) / (t1 - t0))
        return best
