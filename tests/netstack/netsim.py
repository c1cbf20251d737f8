"""A simulated network between two pure ``Stack``s, with a fake clock: seeded loss,
duplication, delay and reordering (jitter), for the netstack's tests."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from weftnet.netstack import events as ev
from weftnet.netstack.stack import Stack


@dataclass
class Link:
    loss: float = 0.0
    duplicate: float = 0.0
    delay_s: float = 0.005
    jitter_s: float = 0.0  # uniform extra delay: packets overtake each other


@dataclass
class SimNet:
    a: Stack
    b: Stack
    link: Link
    seed: int = 0
    now: float = 0.0
    events: dict[str, list[ev.Event]] = field(default_factory=lambda: {"a": [], "b": []})
    sent: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._wire: list[tuple[float, int, str, bytes]] = []
        self._n = 0

    def _transmit(self, to: str, packets: list[bytes]) -> None:
        for p in packets:
            self.sent += 1
            copies = 2 if self._rng.random() < self.link.duplicate else 1
            for _ in range(copies):
                if self._rng.random() < self.link.loss:
                    continue
                at = self.now + self.link.delay_s + self._rng.random() * self.link.jitter_s
                self._n += 1
                heapq.heappush(self._wire, (at, self._n, to, p))

    def pump(self) -> None:
        """Move what both stacks want to send onto the wire; collect their events."""
        for stack, other in ((self.a, "b"), (self.b, "a")):
            self._transmit(other, stack.packets_to_send(self.now))
        for name, stack in (("a", self.a), ("b", self.b)):
            while (e := stack.next_event()) is not None:
                self.events[name].append(e)
                self.on_event(name, e)
        for stack, other in ((self.a, "b"), (self.b, "a")):
            self._transmit(other, stack.packets_to_send(self.now))  # what the apps answered

    def on_event(self, name: str, event: ev.Event) -> None:
        """Overridden by tests (or replaced) to react like an app."""

    def tick(self) -> None:
        """Called at every step of ``run``, before ``pump``: tests act like an app here."""

    def run(self, until: Callable[[], bool], max_time_s: float = 600.0) -> None:
        self.pump()
        while not until():
            timers = [t for t in (self.a.next_timer_at(), self.b.next_timer_at()) if t is not None]
            wire_at = self._wire[0][0] if self._wire else None
            candidates = [*timers, *([wire_at] if wire_at is not None else [])]
            if not candidates:
                return
            self.now = max(self.now, min(candidates))
            if self.now > max_time_s:
                raise AssertionError(f"still running after {max_time_s} simulated seconds")
            while self._wire and self._wire[0][0] <= self.now:
                _, _, to, p = heapq.heappop(self._wire)
                (self.a if to == "a" else self.b).receive(p, self.now)
            self.a.on_timer(self.now)
            self.b.on_timer(self.now)
            self.tick()
            self.pump()


def counter_random(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)
