"""How long a waiting launch will wait, from what is known: p50 and p80, or honestly "unknown".

The releases ahead come from the kernels that run now. Some ends are foreseen (an idle kernel's cull
time, the moment a budget runs out); the rest are drawn from the lifetimes observed of kernels of the
same course and shape (of the course, or of the class, while too few of that shape ended), given how
long each has run already. A launch needing N vGPUs (its own and those ahead of it, none free now)
waits until N have come free; sampling that many times gives the quantiles. When a release
cannot be foreseen and nothing comparable has been observed, that sample never ends: a quantile that
falls on such samples is ``None`` ("unknown"), never a guess.

What the model cannot see (fair share letting later arrivals with less past use go first, budgets
refusing those ahead, a pool shared with other courses) is learnt afterwards: ``Calibration`` keeps,
per course, the real wait of each launch that started against the p50 it was told when it joined,
and sets p80 from the 80th percentile of those ratios (split conformal prediction), so "80 % within"
holds about 80 % of the time once enough waits were seen.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Running:
    """One running kernel as the estimate sees it."""

    vgpus: int
    age: float  # seconds it has run
    course: str = ""
    shape: str = ""  # e.g. "1x4096" (vGPUs x MiB per vGPU)
    ends_in: float | None = None  # seconds until a foreseen end (cull time, budget out); None: not foreseen


class WaitEstimator:
    """Observed lifetimes per course and shape, and the quantiles of the time until N vGPUs come free."""

    def __init__(self, min_observed: int = 5, samples: int = 200, keep: int = 500, seed: int = 0):
        self.min_observed = min_observed
        self.samples = samples
        self.keep = keep
        self.random = random.Random(seed)
        self.observed: dict[tuple[str, str], deque[float]] = {}

    def observe(self, course: str, shape: str, lifetime: float) -> None:
        """A kernel ended after ``lifetime`` seconds."""
        for key in ((course, shape), (course, ""), ("", "")):
            self.observed.setdefault(key, deque(maxlen=self.keep)).append(lifetime)

    def lifetimes(self, course: str, shape: str) -> list[float] | None:
        for key in ((course, shape), (course, ""), ("", "")):
            seen = self.observed.get(key)
            if seen is not None and len(seen) >= self.min_observed:
                return sorted(seen)
        return None

    def _remaining(self, kernel: Running) -> float:
        lifetimes = self.lifetimes(kernel.course, kernel.shape)
        drawn = math.inf
        if lifetimes is not None:
            longer = lifetimes[bisect.bisect_right(lifetimes, kernel.age):]  # those that outlived this one's age
            if longer:
                drawn = self.random.choice(longer) - kernel.age
        return min(drawn, kernel.ends_in if kernel.ends_in is not None else math.inf)

    def draw(self, running: Iterable[Running]) -> Draws:
        """The releases ahead, drawn ``samples`` times from the kernels running now."""
        running = list(running)
        draws = []
        for _ in range(self.samples if running else 0):
            times, cumulative, total = [], [], 0
            for at, vgpus in sorted((self._remaining(k), k.vgpus) for k in running):
                total += vgpus
                times.append(at)
                cumulative.append(total)
            draws.append((times, cumulative))
        return Draws(draws)


@dataclass(frozen=True)
class Draws:
    """Sampled releases: per sample, the times (seconds from now) and the vGPUs freed by then."""

    samples: list[tuple[list[float], list[int]]]

    def estimate(self, needed: int) -> dict[str, float | None]:
        """p50 and p80 seconds until ``needed`` vGPUs have come free (None: unknown)."""
        if needed <= 0:
            return {"p50": 0.0, "p80": 0.0}
        if not self.samples:
            return {"p50": None, "p80": None}
        waits = sorted(times[i] if (i := bisect.bisect_left(cumulative, needed)) < len(times) else math.inf
                       for times, cumulative in self.samples)
        return {name: (None if math.isinf(w := waits[min(int(q * len(waits)), len(waits) - 1)]) else round(w, 1))
                for name, q in (("p50", 0.5), ("p80", 0.8))}


class Calibration:
    """Per course, real waits over the p50 told when each launch joined (the latest ``keep``); once
    ``min_observed`` waits ended, p80 is that p50 times the ratios' 80th percentile."""

    def __init__(self, min_observed: int = 10, keep: int = 50, floor_seconds: float = 60.0):
        self.min_observed = min_observed
        self.floor_seconds = floor_seconds  # a p50 of seconds would make every ratio huge
        self.ratios: dict[str, deque[float]] = {}
        self.keep = keep

    def observe(self, course: str, told_p50: float | None, real_seconds: float) -> None:
        """A launch that waited ``real_seconds`` started; it was told ``told_p50`` (uncalibrated) when it joined."""
        if told_p50 is None or not math.isfinite(real_seconds) or real_seconds < 0:
            return  # "unknown" was told: nothing to scale
        self.ratios.setdefault(course, deque(maxlen=self.keep)).append(
            real_seconds / max(told_p50, self.floor_seconds))

    def adjust(self, course: str, estimate: dict[str, float | None]) -> dict[str, float | None]:
        """The model's p50, and its p80 widened or narrowed to what ``course``'s waits were like (as the model
        says until enough were seen). The p50 stays the model's: scaled too, it was further off in the
        semester benchmark (median error 15 min against 10 min) while p80 held either way."""
        seen = self.ratios.get(course)
        p50 = estimate.get("p50")
        if p50 is None or estimate.get("p80") is None or seen is None or len(seen) < self.min_observed:
            return estimate
        ratios = sorted(seen)
        ratio = ratios[min(int(0.8 * len(ratios)), len(ratios) - 1)]
        return {"p50": p50, "p80": round(max(p50, max(p50, self.floor_seconds) * ratio), 1)}


def needed(vgpus_ahead: int, weight: float, waiting_weights: Iterable[float]) -> int:
    """vGPUs that must come free before a launch starts, when its course (of ``weight``) gets only its share
    of the pool's releases while other courses (``waiting_weights``, its own included) wait as well."""
    total = sum(waiting_weights) or weight
    return math.ceil(vgpus_ahead * total / weight) if weight > 0 else vgpus_ahead


def wait_text(estimate: dict[str, float | None]) -> str:
    """'about 6 min, 80 % within 11 min' (or what is not known)."""
    def minutes(seconds: float) -> str:
        return "under a minute" if seconds < 60 else f"{round(seconds / 60)} min"

    p50, p80 = estimate.get("p50"), estimate.get("p80")
    if p50 is None:
        return "wait unknown: nothing comparable has ended yet"
    if p80 is None:
        return f"about {minutes(p50)}; how much longer at worst is not known"
    return f"about {minutes(p50)}, 80 % within {minutes(p80)}"


__all__ = ["Calibration", "Draws", "Running", "WaitEstimator", "needed", "wait_text"]
