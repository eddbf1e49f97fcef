"""Fair share with memory: who of those waiting gets the next free vGPU.

Past use is remembered with a half-life: every vGPU-second a kernel holds is charged to its course
and its student, and what was charged decays by half every ``half_life`` seconds. Across courses on
one pool, the course whose decayed use is smallest against its weight goes first (weights 2 and 1:
2:1 of the vGPU-hours under constant demand); within a course, the student with the least decayed
use goes first, first come first served breaking ties. No launch waits forever behind lighter
users: one that waited ``bound`` seconds goes ahead of every fair order (the longest-waiting first).
Use is metered from what the class holds now (the broker's pod cache), lazily at each decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ..vgpu import VGPURequestError
from .ledger import Holding


class InLine(Protocol):
    """What the order reads of a waiting launch (``core.queue.Waiting``)."""

    @property
    def user(self) -> str: ...
    @property
    def course(self) -> str: ...
    since: float


def check_weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise VGPURequestError(where, value, f"{where} must be a number more than 0 (a course's share of the pool), "
                                             f"not {value!r}")
    return float(value)


def check_seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise VGPURequestError(where, value, f"{where} must be seconds, 0 or more, not {value!r}")
    return float(value)


class FairShare:
    """Decayed use per course (``course:<group>``) and student (``user:<name>``), and the order it gives."""

    def __init__(self, weights: Mapping[str, float], half_life: float, bound: float,
                 running: Callable[[], Iterable[Holding]] = list, clock: Callable[[], float] = time.time):
        self.weights = dict(weights)
        self.half_life = half_life
        self.bound = bound  # seconds of waiting after which fairness yields to first come, first served
        self.running = running
        self.clock = clock
        self.use: dict[str, tuple[float, float]] = {}  # account -> (vGPU-seconds, when last decayed)
        self.metered: dict[str, float] = {}  # kernel id -> charged up to

    @classmethod
    def parse(cls, courses: Mapping[str, Any], half_life: Any, bound: Any, where: str = "c.Broker",
              **kwargs: Any) -> FairShare:
        weights = {group: check_weight(entry["weight"], f"{where}.courses[{group!r}].weight")
                   for group, entry in courses.items() if isinstance(entry, Mapping) and "weight" in entry}
        return cls(weights, check_seconds(half_life, f"{where}.fair_share_half_life"),
                   check_seconds(bound, f"{where}.fair_share_max_wait"), **kwargs)

    # -- use -------------------------------------------------------------------------------------
    def decayed(self, account: str, now: float | None = None) -> float:
        value, at = self.use.get(account, (0.0, 0.0))
        now = self.clock() if now is None else now
        if not self.half_life:
            return value
        return value * 0.5 ** (max(now - at, 0.0) / self.half_life)

    def charge(self, account: str, vgpu_seconds: float, now: float) -> None:
        self.use[account] = (self.decayed(account, now) + vgpu_seconds, now)

    def meter(self) -> float:
        """Charge what every running kernel held since it was last metered; now."""
        now = self.clock()
        running = list(self.running())
        for holding in running:
            seconds = max(now - self.metered.get(holding.kernel_id, now), 0.0) * holding.vgpus
            if seconds:
                self.charge(f"user:{holding.user}", seconds, now)
                if holding.course:
                    self.charge(f"course:{holding.course}", seconds, now)
            self.metered[holding.kernel_id] = now
        live = {h.kernel_id for h in running}
        for kernel_id in [k for k in self.metered if k not in live]:
            del self.metered[kernel_id]
        return now

    # -- the order -------------------------------------------------------------------------------
    def key(self, waiting: InLine, now: float) -> tuple:
        """Overdue launches first (longest waiting first), then the least decayed use, then arrival."""
        if self.bound and now - waiting.since >= self.bound:
            return (0, waiting.since, 0.0)
        return (1, self.decayed(f"user:{waiting.user}", now), waiting.since)

    def course_key(self, course: str, head: InLine | None, now: float) -> tuple:
        """A course's claim on the next free vGPU: an overdue head first, else decayed use against weight."""
        if head is not None and self.bound and now - head.since >= self.bound:
            return (0, head.since)
        return (1, self.decayed(f"course:{course}", now) / self.weights.get(course, 1.0))

    def order(self, lines: Mapping[str, list]) -> list[str]:
        """Sort each course's line in place (fairly) and answer the courses in the order they may take a vGPU."""
        now = self.meter()
        for line in lines.values():
            line.sort(key=lambda waiting: self.key(waiting, now))
        return sorted(lines, key=lambda course: self.course_key(course, (lines[course] or [None])[0], now))

    # -- what survives a restart ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"use": {k: list(v) for k, v in self.use.items()}, "metered": dict(self.metered)}

    def restore(self, state: Mapping[str, Any]) -> None:
        try:
            self.use = {str(k): (float(v[0]), float(v[1])) for k, v in dict(state.get("use") or {}).items()}
            self.metered = {str(k): float(v) for k, v in dict(state.get("metered") or {}).items()}
        except (TypeError, ValueError, IndexError):
            return


__all__ = ["FairShare", "check_seconds", "check_weight"]
