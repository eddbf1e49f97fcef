"""vGPU-hour budgets per student and per course, metered live from what the broker itself holds.

A budget is an amount of one unit (``vgpu-hours`` or ``vgpu-memory-gib-hours``) per window: a week
that resets at a weekday and time of the lab's time zone, or a term between two dates. Every
``interval`` seconds :meth:`Budgets.meter` charges each running kernel for the time since it was
last metered (its shape's rate times vGPUs, or GiB), so nobody ends more than one interval over
budget; it answers the warnings newly crossed (e.g. 80 %, 95 %) and the kernels whose budget is
used up, which the broker gives back "for budget". A launch whose budget is gone (or would be at
the first metering) is refused with when the budget resets. Instructors top up a student's window.
No Prometheus on the decision path: use is what this meter counted, and its state (``state()``)
is what the broker keeps in the cluster so a restart continues it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..vgpu import VGPURequestError, parse_memory
from .ledger import Holding
from .warm_config import DAYS, WarmConfig, _clock, check_keys

UNITS = {"vgpu-hours": "vGPU-hours", "vgpu-memory-gib-hours": "vGPU-memory-GiB-hours"}
BUDGET_KEYS = {"unit", "student", "course", "reset", "warn", "rates", "interval"}
COURSE_BUDGET_KEYS = {"student", "course"}
RATE_KEYS = {"vgpus", "memory", "rate"}


MAX_TOPUP_HOURS = 10_000


def topup_hours(body: Mapping[str, Any]) -> float:
    """The hours of a top-up request ``{"hours": N}``, checked (VGPURequestError naming ``hours`` otherwise)."""
    hours = body.get("hours")
    if set(body) != {"hours"} or isinstance(hours, bool) or not isinstance(hours, int | float) \
            or not math.isfinite(hours) or not 0 < hours <= MAX_TOPUP_HOURS:
        raise VGPURequestError("hours", hours if set(body) == {"hours"} else sorted(body),
                               f'send {{"hours": N}} with N more than 0 and at most {MAX_TOPUP_HOURS}')
    return float(hours)


class BudgetExhausted(VGPURequestError):
    """A launch refused because the caller's (or their course's) budget is used up until the window resets."""


def _amount(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise VGPURequestError(where, value, f"{where} must be a number of hours, 0 or more (0: no budget), "
                                             f"not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Reset:
    """When a budget's window starts again: weekly at ``day`` (0 = Monday) and ``at``, or a term's dates."""

    zone: ZoneInfo | None = None
    day: int = 0
    at: Any = None  # datetime.time of the weekly reset
    term: tuple[date, date] | None = None

    @classmethod
    def parse(cls, spec: Any, zone: ZoneInfo | None, where: str) -> Reset:
        if isinstance(spec, Mapping) and set(spec) == {"weekly"} and isinstance(spec["weekly"], str):
            day, _, at = spec["weekly"].strip().partition(" ")
            if day.lower()[:3] not in DAYS or len(day) < 3:
                raise VGPURequestError(f"{where}.weekly", spec["weekly"],
                                       f'{where}.weekly must be a weekday and time like "tue 09:00"')
            return cls(zone, DAYS.index(day.lower()[:3]), _clock(at or "00:00", f"{where}.weekly"))
        if isinstance(spec, Mapping) and set(spec) == {"term"} and isinstance(spec["term"], list | tuple) \
                and len(spec["term"]) == 2:
            try:
                start, end = (date.fromisoformat(str(d)) for d in spec["term"])
            except ValueError:
                start = end = None
            if start is None or end is None or end <= start:
                raise VGPURequestError(f"{where}.term", spec["term"],
                                       f'{where}.term must be two dates, the first before the second, like '
                                       '["2026-09-01", "2026-12-20"]')
            return cls(zone, term=(start, end))
        raise VGPURequestError(where, spec, f'{where} must be {{"weekly": "tue 09:00"}} or '
                                            '{"term": ["2026-09-01", "2026-12-20"]}')

    def window(self, now: float) -> tuple[datetime, datetime]:
        """The window that holds ``now`` (epoch seconds): its start and when it resets."""
        local = datetime.fromtimestamp(now, self.zone) if self.zone else datetime.fromtimestamp(now).astimezone()
        tz = local.tzinfo
        if self.term is not None:
            start = datetime.combine(self.term[0], datetime.min.time(), tz)
            return start, datetime.combine(self.term[1], datetime.min.time(), tz)
        start = datetime.combine(local.date() - timedelta(days=(local.weekday() - self.day) % 7), self.at, tz)
        if start > local:
            start -= timedelta(days=7)
        return start, start + timedelta(days=7)


@dataclass(frozen=True)
class Rate:
    vgpus: int
    memory_mib: int  # per vGPU; 0: any
    rate: float


@dataclass(frozen=True)
class BudgetConfig:
    """``c.Broker.budgets`` with each course's ``budget`` entry, checked."""

    unit: str = "vgpu-hours"
    student: float = 0.0  # per student and window; 0: no budget
    course: float = 0.0  # per course and window (all its students); 0: none
    per_course: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # course -> (student, course)
    reset: Reset = field(default_factory=lambda: Reset(None, 0, _clock("00:00", "reset")))
    warn: tuple[float, ...] = (0.8, 0.95)
    rates: tuple[Rate, ...] = ()
    interval: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.student or self.course or any(s or c for s, c in self.per_course.values()))

    @classmethod
    def parse(cls, budgets: Mapping[str, Any], courses: Mapping[str, Any], lab_timezone: str = "",
              where: str = "c.Broker") -> BudgetConfig:
        check_keys(budgets, BUDGET_KEYS, f"{where}.budgets")
        unit = budgets.get("unit", "vgpu-hours")
        if unit not in UNITS:
            raise VGPURequestError(f"{where}.budgets.unit", unit,
                                   f"{where}.budgets.unit must be one of {', '.join(UNITS)}, not {unit!r}")
        warn = budgets.get("warn", [0.8, 0.95])
        if not isinstance(warn, list | tuple) or not all(
                isinstance(w, int | float) and not isinstance(w, bool) and 0 < w < 1 for w in warn):
            raise VGPURequestError(f"{where}.budgets.warn", warn,
                                   f"{where}.budgets.warn must be fractions between 0 and 1 like [0.8, 0.95]")
        interval = budgets.get("interval", 60)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not 1 <= interval <= 3600:
            raise VGPURequestError(f"{where}.budgets.interval", interval,
                                   f"{where}.budgets.interval must be seconds between 1 and 3600")
        rates = []
        for i, entry in enumerate(budgets.get("rates") or []):
            check_keys(entry, RATE_KEYS, f"{where}.budgets.rates[{i}]")
            vgpus = entry.get("vgpus", 1)
            if isinstance(vgpus, bool) or not isinstance(vgpus, int) or vgpus < 1:
                raise VGPURequestError(f"{where}.budgets.rates[{i}].vgpus", vgpus,
                                       "a rate's vgpus is a count, 1 or more")
            memory = parse_memory(entry["memory"], f"{where}.budgets.rates[{i}].memory") if entry.get("memory") else 0
            rates.append(Rate(vgpus, memory, _amount(entry.get("rate"), f"{where}.budgets.rates[{i}].rate")))
        per_course = {}
        for group, entry in courses.items():
            budget = (entry or {}).get("budget") if isinstance(entry, Mapping) else None
            if budget is None:
                continue
            check_keys(budget, COURSE_BUDGET_KEYS, f"{where}.courses[{group!r}].budget")
            per_course[group] = (_amount(budget.get("student", 0), f"{where}.courses[{group!r}].budget.student"),
                                 _amount(budget.get("course", 0), f"{where}.courses[{group!r}].budget.course"))
        zone = WarmConfig.parse([], {}, "", lab_timezone, where).zone
        return cls(unit, _amount(budgets.get("student", 0), f"{where}.budgets.student"),
                   _amount(budgets.get("course", 0), f"{where}.budgets.course"), per_course,
                   Reset.parse(budgets.get("reset", {"weekly": "mon 00:00"}), zone, f"{where}.budgets.reset"),
                   tuple(sorted(float(w) for w in warn)), tuple(rates), float(interval))

    def limits(self, course: str) -> tuple[float, float]:
        """(per student, per course) of ``course``; 0: none."""
        return self.per_course.get(course, (self.student, self.course))

    def per_hour(self, holding: Holding) -> float:
        """What one hour of ``holding`` costs, in the unit."""
        per_vgpu = holding.memory_mib // max(holding.vgpus, 1)
        rate = next((r.rate for r in self.rates if r.vgpus == holding.vgpus
                     and (not r.memory_mib or r.memory_mib == per_vgpu)), 1.0)
        base = holding.vgpus if self.unit == "vgpu-hours" else holding.memory_mib / 1024
        return base * rate


@dataclass(frozen=True)
class Crossed:
    """A warning level newly crossed by an account (``user`` or ``course:<group>``)."""

    account: str
    level: float
    left: float


def student(user: str) -> str:
    return f"user:{user}"


def course_account(course: str) -> str:
    return f"course:{course}"


class Budgets:
    """The meter: use per account in the current window, top-ups, warnings given, kernels last metered."""

    def __init__(self, config: BudgetConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.window = config.reset.window(clock())[0]
        self.used: dict[str, float] = {}
        self.topups: dict[str, float] = {}
        self.warned: dict[str, float] = {}
        self.metered: dict[str, float] = {}  # kernel id -> epoch seconds it was charged up to
        self.courses: dict[str, str] = {}  # user -> the course their kernels were charged to

    # -- the window ---------------------------------------------------------------------------
    def _roll(self, now: float) -> None:
        start = self.config.reset.window(now)[0]
        if start != self.window:  # a new week (or term): everyone starts again
            self.window = start
            self.used.clear()
            self.topups.clear()
            self.warned.clear()

    def resets(self) -> datetime:
        return self.config.reset.window(self.clock())[1]

    def resets_text(self) -> str:
        return f"{self.resets():%a %H:%M}" if self.config.reset.term is None else f"{self.resets():%a %d %b}"

    # -- accounts -------------------------------------------------------------------------------
    def limit(self, account: str, course: str) -> float:
        per_student, per_course = self.config.limits(course)
        base = per_course if account.startswith("course:") else per_student
        return base + self.topups.get(account, 0.0) if base else 0.0

    def left(self, account: str, course: str) -> float | None:
        """What ``account`` has left this window (None: no budget)."""
        limit = self.limit(account, course)
        return None if not limit else limit - self.used.get(account, 0.0)

    def accounts(self, holding: Holding) -> list[str]:
        return [student(holding.user)] + ([course_account(holding.course)] if holding.course else [])

    # -- metering -------------------------------------------------------------------------------
    def meter(self, running: Iterable[Holding]) -> tuple[list[Crossed], list[Holding]]:
        """Charge every running kernel up to now; the warnings newly crossed and the kernels out of budget."""
        now = self.clock()
        self._roll(now)
        running = list(running)
        for holding in running:
            since = max(self.metered.get(holding.kernel_id, now), self.window.timestamp())
            cost = self.config.per_hour(holding) * max(now - since, 0.0) / 3600
            for account in self.accounts(holding):
                self.used[account] = self.used.get(account, 0.0) + cost
            self.metered[holding.kernel_id] = now
            self.courses[holding.user] = holding.course
        live = {h.kernel_id for h in running}
        for kernel_id in [k for k in self.metered if k not in live]:
            del self.metered[kernel_id]
        crossed, out = [], []
        for holding in running:
            for account in self.accounts(holding):
                limit = self.limit(account, holding.course)
                if not limit:
                    continue
                fraction = self.used.get(account, 0.0) / limit
                level = max((w for w in self.config.warn if fraction >= w), default=0.0)
                if level > self.warned.get(account, 0.0) and fraction < 1:
                    self.warned[account] = level
                    crossed.append(Crossed(account, level, limit - self.used[account]))
                if fraction >= 1 and holding not in out:
                    out.append(holding)
        return crossed, out

    def refusal(self, holding: Holding) -> BudgetExhausted | None:
        """Why ``holding`` may not start (its budget is gone, or would be at the first metering); None: it may."""
        self._roll(self.clock())
        first = self.config.per_hour(holding) * self.config.interval / 3600
        for account in self.accounts(holding):
            left = self.left(account, holding.course)
            if left is not None and left < first:
                whose = "your" if account.startswith("user:") else f"course {holding.course}'s"
                return BudgetExhausted(
                    "budget", round(left, 3),
                    f"{whose} budget of {self.limit(account, holding.course):g} {UNITS[self.config.unit]} is used up "
                    f"({max(left, 0):.2f} left, {first:.3f} needed to start); it resets {self.resets_text()}")
        return None

    def runs_out_in(self, holding: Holding) -> float | None:
        """Seconds until ``holding``'s budget (its student's or course's) is used up at its rate; None: never."""
        per_hour = self.config.per_hour(holding)
        left = [x for a in self.accounts(holding) if (x := self.left(a, holding.course)) is not None]
        return max(min(left), 0.0) / per_hour * 3600 if left and per_hour else None

    def warning(self, account: str) -> dict[str, Any] | None:
        """The last warning level ``account`` crossed in this window (a top-up or a new window takes it back)."""
        level = self.warned.get(account)
        return {"level": level, "message": f"{level:.0%} of your budget is used"} if level else None

    def topup(self, user: str, amount: float) -> float:
        """Add ``amount`` to ``user``'s budget for this window; what they have now."""
        self._roll(self.clock())
        account = student(user)
        self.topups[account] = self.topups.get(account, 0.0) + amount
        self.warned.pop(account, None)
        return self.topups[account]

    # -- what people see ----------------------------------------------------------------------
    def summary(self, user: str, course: str) -> dict[str, Any]:
        """The caller's budget: "2.5 of 10 vGPU-hours left this week · resets Tue 09:00"."""
        self._roll(self.clock())
        account = student(user)
        limit, used = self.limit(account, course), self.used.get(account, 0.0)
        unit = UNITS[self.config.unit]
        period = "this term" if self.config.reset.term else "this week"
        if not limit:
            return {"budget": None, "used": round(used, 3), "unit": unit, "text": f"no {unit} budget"}
        left = max(limit - used, 0.0)
        return {"budget": round(limit, 3), "used": round(used, 3), "left": round(left, 3), "unit": unit,
                "course": course, "resets": self.resets().isoformat(), "resets_text": self.resets_text(),
                "period": "term" if self.config.reset.term else "week",
                "text": f"{left:.1f} of {limit:g} {unit} left {period} · resets {self.resets_text()}",
                "warning": self.warning(account)}

    def rows(self, running: Iterable[Holding]) -> list[dict[str, Any]]:
        """Use and what is left per student with use, a top-up or a kernel (``running``) this window: the
        class view's rows."""
        courses = {**self.courses, **{h.user: h.course for h in running}}
        users = {a.removeprefix("user:") for a in [*self.used, *self.topups] if a.startswith("user:")}
        return [{"user": user, **self.summary(user, courses.get(user, ""))} for user in sorted(users | set(courses))]

    # -- what survives a restart --------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"window": self.window.isoformat(), "used": dict(self.used), "topups": dict(self.topups),
                "warned": dict(self.warned), "metered": dict(self.metered), "courses": dict(self.courses)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state()`` of an earlier broker (ignored when its window is over)."""
        try:
            window = datetime.fromisoformat(state["window"])
            parts = [{str(k): float(v) for k, v in dict(state.get(key) or {}).items()}
                     for key in ("used", "topups", "warned", "metered")]
        except (KeyError, TypeError, ValueError):
            return
        if window != self.window:
            return
        self.used, self.topups, self.warned, self.metered = parts
        self.courses = {str(k): str(v) for k, v in dict(state.get("courses") or {}).items()}


__all__ = ["BudgetConfig", "BudgetExhausted", "Budgets", "Crossed", "Reset", "topup_hours"]
