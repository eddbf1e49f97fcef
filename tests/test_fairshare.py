"""core/fairshare.py with core/queue.py (an injected clock, no hub, no cluster): two courses of weights 2 and 1
sharing 3 vGPUs under constant demand get 2:1 of the vGPU-hours; a student with more past use waits behind one
with less; a launch past the bound goes first; use decays by its half-life; the order survives a restart."""

from __future__ import annotations

import asyncio
import random

import pytest

from orion_jupyter.core.fairshare import FairShare
from orion_jupyter.core.ledger import Holding
from orion_jupyter.core.queue import LaunchQueue, Waiting
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from tests.test_queue import Room, settle

HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def waiting(user: str, course: str, since: float, kernel_id: str = "", vgpus: int = 1) -> Waiting:
    holding = Holding(kernel_id or f"k-{user}", user, course, vgpus, vgpus * 1024)
    return Waiting(holding, VGPURequest.parse(vgpus, "1Gi"), lambda line: None, since=since)


class Semester:
    """Courses whose students always want a kernel: each, when their kernel ends, joins the queue again."""

    def __init__(self, fair: FairShare, clock: Clock, students: dict[str, int], vgpus: int, seed: int = 7):
        self.fair, self.clock, self.random = fair, clock, random.Random(seed)
        self.room = Room(vgpus)
        self.queue = LaunchQueue(self.admit, self.room.unreserve, order=fair.order)
        self.running: dict[str, tuple[Holding, float, float]] = {}  # kernel id -> (holding, started, ends)
        fair.running = lambda: [h for h, _, _ in self.running.values()]
        self.hours = dict.fromkeys(students, 0.0)  # vGPU-hours per course since measured_from
        self.measured_from = clock.now
        self.waits: list[float] = []
        self.count = 0
        for course, n in students.items():
            for i in range(n):
                self.join(f"{course}-s{i}", course)

    def join(self, user: str, course: str) -> None:
        self.count += 1
        self.queue.join(waiting(user, course, self.clock.now, f"k{self.count}"))

    async def admit(self, w: Waiting) -> bool:
        if not await self.room.admit(w):
            return False
        lifetime = self.random.uniform(0.3, 1.0) * HOUR
        self.running[w.kernel_id] = (w.holding, self.clock.now, self.clock.now + lifetime)
        self.waits.append(self.clock.now - w.since)
        return True

    async def run(self, hours: float) -> None:
        start = self.clock.now
        self.queue.released()
        await settle()
        while self.clock.now < start + hours * HOUR:
            kernel_id, (holding, started, ends) = min(self.running.items(), key=lambda item: item[1][2])
            self.clock.now = ends
            del self.running[kernel_id]
            self.hours[holding.course] += holding.vgpus * (ends - max(started, self.measured_from)) / HOUR
            self.room.free += holding.vgpus
            self.join(holding.user, holding.course)
            self.queue.released()
            await settle()

    def measure(self) -> None:
        """Count vGPU-hours from now on."""
        self.hours = dict.fromkeys(self.hours, 0.0)
        self.measured_from = self.clock.now


async def test_two_courses_of_weights_2_and_1_get_2_to_1_of_three_vgpus():
    clock = Clock()
    fair = FairShare({"ai101": 2, "phys2": 1}, half_life=6 * HOUR, bound=0, clock=clock)
    semester = Semester(fair, clock, {"ai101": 8, "phys2": 8}, vgpus=3)
    await semester.run(hours=12)  # warm up
    semester.measure()
    await semester.run(hours=200)
    a, b = semester.hours["ai101"], semester.hours["phys2"]
    assert a / b == pytest.approx(2.0, rel=0.10), (a, b)
    assert 0.95 * 3 * 200 <= a + b <= 3 * 200 + 3  # the pool stays busy (fairness wastes no vGPU)


async def test_without_weights_the_courses_share_equally():
    clock = Clock()
    fair = FairShare({}, half_life=6 * HOUR, bound=0, clock=clock)
    semester = Semester(fair, clock, {"ai101": 10, "phys2": 3}, vgpus=3)  # more students do not mean more share
    await semester.run(hours=12)
    semester.measure()
    await semester.run(hours=200)
    assert semester.hours["ai101"] / semester.hours["phys2"] == pytest.approx(1.0, rel=0.10), semester.hours


async def test_nobody_waits_past_the_bound_by_more_than_a_kernel_lifetime():
    clock = Clock()
    fair = FairShare({"ai101": 4, "phys2": 1}, half_life=24 * HOUR, bound=3 * HOUR, clock=clock)
    semester = Semester(fair, clock, {"ai101": 6, "phys2": 6}, vgpus=3)
    await semester.run(hours=100)
    assert max(semester.waits) <= 3 * HOUR + HOUR, max(semester.waits) / HOUR  # the bound, then the next release
    unbounded = Clock()
    fair = FairShare({"ai101": 4, "phys2": 1}, half_life=24 * HOUR, bound=0, clock=unbounded)
    semester = Semester(fair, unbounded, {"ai101": 6, "phys2": 6}, vgpus=3)
    await semester.run(hours=100)
    assert max(semester.waits) > 4 * HOUR  # without the bound someone does wait longer: the bound is what holds


async def test_a_student_with_more_past_use_waits_behind_one_with_less():
    clock = Clock()
    fair = FairShare({}, half_life=HOUR, bound=2 * HOUR, clock=clock)
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve, order=fair.order)
    fair.charge("user:heavy", 5 * HOUR, clock.now)
    fair.charge("user:medium", 1 * HOUR, clock.now)
    heavy, medium = waiting("heavy", "ai101", clock.now), waiting("medium", "ai101", clock.now + 1)
    light, light2 = waiting("light", "ai101", clock.now + 2), waiting("light2", "ai101", clock.now + 3)
    for w in (heavy, medium, light, light2):
        queue.join(w)
    assert [queue.position(w) for w in (light, light2, medium, heavy)] == [1, 2, 3, 4]  # FCFS breaks the tie
    room.free = 1
    queue.released()
    await settle()
    assert room.admitted == ["k-light"]
    clock.now += 2 * HOUR  # heavy has waited past the bound: first, whatever its use
    room.free = 1
    queue.released()
    await settle()
    assert room.admitted == ["k-light", "k-heavy"]


async def test_use_decays_by_the_half_life_and_a_restart_keeps_the_order():
    clock = Clock()
    running = [Holding("k1", "ann", "ai101", 2, 2048)]
    fair = FairShare({"ai101": 2}, half_life=HOUR, bound=0, running=lambda: running, clock=clock)
    fair.meter()
    clock.now += HOUR
    fair.meter()
    assert fair.decayed("user:ann") == pytest.approx(2 * HOUR) and fair.decayed("course:ai101") == pytest.approx(
        2 * HOUR)
    running.clear()
    clock.now += HOUR
    assert fair.decayed("user:ann") == pytest.approx(HOUR)  # half of it an hour later
    lines = {"ai101": [waiting("ann", "ai101", 1.0), waiting("bob", "ai101", 2.0)],
             "phys2": [waiting("cid", "phys2", 0.5)]}
    assert fair.order(lines) == ["phys2", "ai101"] and [w.user for w in lines["ai101"]] == ["bob", "ann"]
    again = FairShare({"ai101": 2}, half_life=HOUR, bound=0, clock=clock)
    again.restore(fair.state())
    lines = {"ai101": [waiting("ann", "ai101", 1.0), waiting("bob", "ai101", 2.0)],
             "phys2": [waiting("cid", "phys2", 0.5)]}
    assert again.order(lines) == ["phys2", "ai101"] and [w.user for w in lines["ai101"]] == ["bob", "ann"]


@pytest.mark.parametrize(("courses", "half_life", "bound", "field"), [
    ({"ai101": {"weight": 0}}, 3600, 0, "c.Broker.courses['ai101'].weight"),
    ({"ai101": {"weight": "big"}}, 3600, 0, "c.Broker.courses['ai101'].weight"),
    ({}, -1, 0, "c.Broker.fair_share_half_life"),
    ({}, 3600, float("nan"), "c.Broker.fair_share_max_wait"),
])
def test_bad_fair_share_settings_are_named(courses, half_life, bound, field):
    with pytest.raises(VGPURequestError) as err:
        FairShare.parse(courses, half_life, bound)
    assert err.value.field == field


async def test_the_queue_without_an_order_stays_first_come_first_served():
    room = Room(0)
    queue = LaunchQueue(room.admit, room.unreserve)
    a, b = waiting("a", "ai101", 1.0), waiting("b", "ai101", 0.0)  # b's since is earlier, but a came first
    queue.join(a)
    queue.join(b)
    room.free = 1
    queue.released()
    await asyncio.sleep(0)
    await settle()
    assert room.admitted == ["k-a"]
