"""semester: a compressed semester through the broker's own decision code (no cluster, no hub).

Three courses (weights 3, 2 and 1) of 100, 60 and 40 students share one pool of 16 vGPUs for 12
weeks (1 with ``--quick``). A seeded random trace gives each student sessions during the day
(08:00-22:00), three times as many in the deadline weeks 4, 8 and 12: each session a 1-vGPU kernel
that works for a while, then idles until the idle rule stops it 30 minutes later. Every launch goes
through ``core.admission.Admission`` (budgets of 8 vGPU-hours per student and week, reset Monday
00:00; the fair queue with a 3-day half-life and a 2-hour bound), is metered each simulated minute
(``core.budgets``: a kernel out of budget is stopped), and gets a wait estimate when it joins the
queue (``core.estimates``: cull times of idle kernels, budgets running out, observed lifetimes, scaled by
how the course's earlier waits compared with what they were told).
Simulated time runs on an injected clock. Reported:

* Jain's fairness index of vGPU-hours per student within each course (1: all equal; students'
  demand differs, so it is below 1 even when the broker is fair);
* each course's share of the vGPU-hours in contended minutes (someone waiting) against its weight;
* the wait estimate: median absolute error of p50, how often the real wait exceeded p80, and how
  many estimates said "unknown";
* budget overshoot: the most any student used beyond their budget (at most one metering minute);
* nothing left: after the last arrivals every launch started or was refused, nothing waits or
  stays reserved.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from orion_jupyter.core.admission import Admission, Launch, Queued, Refused
from orion_jupyter.core.budgets import BudgetConfig, Budgets
from orion_jupyter.core.estimates import Calibration, Running, WaitEstimator, needed
from orion_jupyter.core.fairshare import FairShare
from orion_jupyter.core.ledger import Holding, Ledger, Quota
from orion_jupyter.vgpu import VGPURequest

from .common import Section

ZONE = ZoneInfo("Europe/Berlin")
START = datetime(2026, 9, 7, tzinfo=ZONE).timestamp()  # a Monday
COURSES = {"ai101": (3, 100), "ml202": (2, 60), "phys2": (1, 40)}  # weight, students
VGPUS, BUDGET, IDLE_CULL, TICK = 16, 8.0, 1800.0, 60.0
ONE = VGPURequest.parse(1, "4Gi")


class Pool:
    """The AdmissionHost: a pool of VGPUS, the kernels that run (holding, started, works until, ends)."""

    def __init__(self) -> None:
        self.running: dict[str, tuple[Holding, float, float, float]] = {}
        self.ledger: Ledger | None = None

    def holdings(self) -> list[Holding]:
        return [r[0] for r in self.running.values()]

    def kernel_exists(self, kernel_id: str) -> bool:
        return kernel_id in self.running

    def stopped_by(self, kernel_id: str) -> str | None:
        return None

    async def has_room(self, request: VGPURequest, kernel_id: str = "", held_back: int = 0) -> bool:
        pending = sum(h.vgpus for k, h in self.ledger.pending.items() if k != kernel_id and k not in self.running)
        return VGPUS - len(self.running) - pending - held_back >= request.count

    async def largest_node(self) -> int | None:
        return VGPUS

    async def shortage(self, request: VGPURequest) -> str:
        return "the pool is full"

    def nodes(self) -> None:  # one pool, no nodes: the count decides (and no booking holds room)
        return None


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 1.0


async def simulate(weeks: int, seed: int = 42) -> dict:
    rng = random.Random(seed)
    now = [START]
    clock = lambda: now[0]  # noqa: E731 - the simulated time
    pool = Pool()
    ledger = pool.ledger = Ledger(Quota(), {})
    budgets = Budgets(BudgetConfig.parse({"student": BUDGET, "reset": {"weekly": "mon 00:00"}, "interval": TICK},
                                         {}, "Europe/Berlin"), clock)
    fair = FairShare({c: w for c, (w, _) in COURSES.items()}, 3 * 86400, 7200, running=pool.holdings, clock=clock)
    admission = Admission(pool, ledger, list(COURSES), budgets=budgets, fair=fair)
    estimator = WaitEstimator(seed=seed)
    calibration = Calibration()
    students = [(f"{c}-{i:03d}", c) for c, (_, n) in COURSES.items() for i in range(n)]
    hours = {user: 0.0 for user, _ in students}
    contended = dict.fromkeys(COURSES, 0.0)
    # kernel id -> (decision, joined, the model's estimate, the estimate told, works)
    waiting: dict[str, tuple[Queued, float, dict, dict, float]] = {}
    busy: set[str] = set()
    errors, over_p80, unknown, refused, started, count, overshoot = [], 0, 0, 0, 0, 0, 0.0
    end = START + weeks * 7 * 86400

    def start(holding: Holding, works: float) -> None:
        nonlocal started
        pool.running[holding.kernel_id] = (holding, now[0], now[0] + works, now[0] + works + IDLE_CULL)
        admission.release(holding.kernel_id)
        started += 1

    while now[0] < end or waiting:
        now[0] += TICK
        local = datetime.fromtimestamp(now[0], ZONE)
        week = int((now[0] - START) // (7 * 86400)) + 1
        day = 8 <= local.hour < 22 and now[0] < end
        rate = (3 if week % 4 == 0 else 1) * 3 / (5 * 14 * 60) if day else 0.0  # sessions per student and minute
        for user, course in students if rate else ():
            if user in busy or rng.random() >= rate:
                continue
            count += 1
            # on the minute, as everything here: a kernel ends exactly when the simulation looks
            kernel_id, works = f"k{count}", TICK * max(1, round(rng.expovariate(1 / 3600) / TICK))
            decision = await admission.decide(Launch(kernel_id, user, (course,), ONE, "img"), lambda line: None)
            if isinstance(decision, Refused):
                refused += 1
                continue
            busy.add(user)
            if isinstance(decision, Queued):
                ahead = needed(admission.queue.position(decision.waiting), COURSES[course][0],
                               [COURSES[c][0] for c in admission.queue.lines])
                draws = estimator.draw([Running(r[0].vgpus, now[0] - r[1], r[0].course, "1x4096",
                                                r[3] - now[0] if now[0] >= r[2] else None)
                                        for r in pool.running.values()])
                model = draws.estimate(ahead)
                waiting[kernel_id] = (decision, now[0], model, calibration.adjust(course, model), works)
            else:
                start(decision.holding, works)
        if waiting:
            for holding, *_ in pool.running.values():
                contended[holding.course] += TICK / 3600
        _, out = budgets.meter(pool.holdings())
        for holding in pool.holdings():  # before a reset clears it: the most a student went over
            overshoot = max(overshoot, budgets.used.get(f"user:{holding.user}", 0.0) - BUDGET)
        gone = [k for k, r in pool.running.items() if r[3] <= now[0]] + [h.kernel_id for h in out]
        for kernel_id in dict.fromkeys(gone):
            holding, began, _, _ = pool.running.pop(kernel_id)
            hours[holding.user] += (now[0] - began) / 3600
            estimator.observe(holding.course, "1x4096", now[0] - began)
            busy.discard(holding.user)
        if gone:
            admission.queue.released()
        for _ in range(10):  # the queue's pump runs before the next arrivals, as on the broker's loop
            await asyncio.sleep(0)
        for kernel_id, (decision, joined, model, estimate, works) in list(waiting.items()):
            if decision.waiting.turn.done():
                del waiting[kernel_id]
                real = now[0] - joined
                calibration.observe(decision.waiting.course, model["p50"], real)
                if estimate["p50"] is None:
                    unknown += 1
                else:
                    errors.append(abs(real - estimate["p50"]))
                    over_p80 += estimate["p80"] is not None and real > estimate["p80"]
                start(decision.waiting.holding, works)
    total = sum(contended.values()) or 1.0
    weights = sum(w for w, _ in COURSES.values())
    return {
        "weeks": weeks, "students": len(students), "vgpus": VGPUS, "launches": count, "started": started,
        "refused_budget": refused,
        "jain": {c: round(jain([hours[u] for u, course in students if course == c]), 3) for c in COURSES},
        "share_contended": {c: round(contended[c] / total, 3) for c in COURSES},
        "share_weight": {c: round(w / weights, 3) for c, (w, _) in COURSES.items()},
        "estimate_p50_mae_min": round(statistics.median(errors) / 60, 1) if errors else None,
        "estimate_over_p80": round(over_p80 / len(errors), 3) if errors else None,
        "estimate_unknown": unknown, "estimated": len(errors),
        "budget_overshoot_vgpu_h": round(overshoot, 4), "one_tick_vgpu_h": round(TICK / 3600, 4),
        "left_waiting": len(admission.queue.waiting()), "left_reserved": len(ledger.pending),
    }


def run(quick: bool = False) -> Section:
    section = Section("semester")
    wall = time.perf_counter()
    data = asyncio.run(simulate(1 if quick else 12))
    section.data.update(data, sim_wall_s=round(time.perf_counter() - wall, 1))
    section.row("launches (started / refused for budget)", f"{data['launches']} ({data['started']} / "
                f"{data['refused_budget']})")
    for course in COURSES:
        section.row(f"  {course}: Jain index of vGPU-hours per student", f"{data['jain'][course]:.3f}")
        share, weight = data["share_contended"][course], data["share_weight"][course]
        section.row(f"  {course}: share of contended vGPU-hours vs weight", f"{share:.3f} vs {weight:.3f}",
                    "within 10 % of the weight", abs(share - weight) <= 0.1 * weight)
    section.row("wait estimate: median |real - p50|", f"{data['estimate_p50_mae_min']} min "
                f"({data['estimated']} estimated, {data['estimate_unknown']} unknown)")
    if data["estimate_over_p80"] is not None:
        section.row("wait estimate: real wait over p80", f"{data['estimate_over_p80']:.0%}", "about 20 %",
                    data["estimate_over_p80"] <= 0.3)
    section.row("budget overshoot (most over budget)", f"{data['budget_overshoot_vgpu_h']} vGPU-h",
                f"<= one metering interval ({data['one_tick_vgpu_h']})",
                data["budget_overshoot_vgpu_h"] <= data["one_tick_vgpu_h"] + 1e-9, check=True)
    section.row("nothing left waiting or reserved", f"{data['left_waiting']} / {data['left_reserved']}", "0 / 0",
                data["left_waiting"] == 0 and data["left_reserved"] == 0, check=True)
    return section


__all__ = ["run", "simulate"]
