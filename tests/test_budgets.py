"""core/budgets.py on its own (an injected clock, no hub, no cluster): a budget warned, exhausted (never over
by more than one metering interval), refused with the reset time, topped up, reset at the window; the state
a restarted broker continues; bad settings named."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from orion_jupyter.broker.budgets import STOPPED_FOR_BUDGET, BudgetMeter
from orion_jupyter.core.admission import Admission, Admitted, Launch, Refused
from orion_jupyter.core.budgets import BudgetConfig, BudgetExhausted, Budgets
from orion_jupyter.core.ledger import Holding, Ledger, Quota
from orion_jupyter.names import LABEL_KERNEL_ID
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from tests.test_admission import FakeClass

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_NOON = datetime(2026, 12, 7, 12, 0, tzinfo=BERLIN).timestamp()  # a Monday


class Clock:
    def __init__(self, now: float = MONDAY_NOON):
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(**budgets) -> BudgetConfig:
    return BudgetConfig.parse({"student": 10, "reset": {"weekly": "tue 09:00"}, "interval": 60, **budgets},
                              {"ai101": {"vgpus": 8}}, "Europe/Berlin")


def kernel(user: str = "ann", vgpus: int = 1, kernel_id: str = "k1", course: str = "ai101") -> Holding:
    return Holding(kernel_id, user, course, vgpus, vgpus * 4096)


def test_warned_at_each_level_then_exhausted_within_one_interval():
    clock = Clock()
    budgets = Budgets(config(), clock)
    running = [kernel(vgpus=2)]  # 2 vGPU-hours per hour against 10
    warnings, stopped_at = [], None
    for _ in range(6 * 60):  # six hours, metered each minute
        clock.now += 60
        crossed, out = budgets.meter(running)
        warnings += [(c.account, c.level) for c in crossed]
        if out:
            stopped_at = budgets.used["user:ann"]
            running = []  # the broker gives it back
            break
    assert warnings == [("user:ann", 0.8), ("user:ann", 0.95)]
    assert stopped_at is not None and 10 <= stopped_at <= 10 + 2 * 60 / 3600  # at most one interval over
    assert budgets.summary("ann", "ai101")["left"] == 0


def test_a_launch_refused_with_the_reset_time_then_topped_up():
    clock = Clock()
    budgets = Budgets(config(), clock)
    budgets.used["user:ann"] = 9.99  # less than one interval of a 1-vGPU kernel left
    refusal = budgets.refusal(kernel())
    assert isinstance(refusal, BudgetExhausted) and refusal.field == "budget"
    assert "your budget of 10 vGPU-hours is used up" in str(refusal) and "resets Tue 09:00" in str(refusal)
    assert budgets.refusal(kernel(user="bob")) is None  # another student's budget is their own
    budgets.topup("ann", 2)
    assert budgets.refusal(kernel()) is None
    assert budgets.summary("ann", "ai101")["text"] == "2.0 of 12 vGPU-hours left this week · resets Tue 09:00"


def test_the_window_resets_at_the_weekday_and_time_in_the_lab_time_zone():
    clock = Clock()
    budgets = Budgets(config(), clock)
    budgets.used["user:ann"] = 11
    budgets.topup("ann", 1)
    assert budgets.resets() == datetime(2026, 12, 8, 9, 0, tzinfo=BERLIN)
    clock.now = datetime(2026, 12, 8, 8, 59, tzinfo=BERLIN).timestamp()
    assert budgets.refusal(kernel()) is not None  # one minute before the reset: still 11 used of 11
    clock.now = datetime(2026, 12, 8, 9, 0, tzinfo=BERLIN).timestamp()
    assert budgets.refusal(kernel()) is None
    assert budgets.summary("ann", "ai101")["left"] == 10  # the top-up was for the past week


def test_a_kernel_running_across_the_reset_is_charged_only_from_the_new_window():
    clock = Clock(datetime(2026, 12, 8, 8, 0, tzinfo=BERLIN).timestamp())
    budgets = Budgets(config(), clock)
    budgets.meter([kernel()])
    clock.now += 2 * 3600  # 08:00 -> 10:00: one hour in each week
    budgets.meter([kernel()])
    assert budgets.used["user:ann"] == pytest.approx(1.0)


def test_course_budget_and_memory_unit_with_rates():
    clock = Clock()
    cfg = BudgetConfig.parse({"unit": "vgpu-memory-gib-hours", "reset": {"term": ["2026-09-01", "2026-12-20"]},
                              "rates": [{"vgpus": 1, "memory": "4Gi", "rate": 0.5}]},
                             {"ai101": {"budget": {"student": 0, "course": 4}}})
    budgets = Budgets(cfg, clock)
    assert cfg.per_hour(kernel()) == 2.0  # 4 GiB at half rate
    assert cfg.per_hour(kernel(vgpus=2)) == 8.0  # 8 GiB at the default rate
    clock.now += 3600
    budgets.meter([kernel("ann", kernel_id="a"), kernel("bob", kernel_id="b")])
    clock.now += 3600
    _, out = budgets.meter([kernel("ann", kernel_id="a"), kernel("bob", kernel_id="b")])
    assert [h.user for h in out] == ["ann", "bob"]  # the course's 4 GiB-hours are gone: both stop
    refusal = budgets.refusal(kernel("cid"))
    assert "course ai101's budget of 4 vGPU-memory-GiB-hours" in str(refusal) and "resets Sun 20 Dec" in str(refusal)


def test_a_restarted_broker_continues_use_and_top_ups():
    clock = Clock()
    budgets = Budgets(config(), clock)
    budgets.meter([kernel()])
    clock.now += 1800
    budgets.meter([kernel()])
    budgets.topup("ann", 3)
    again = Budgets(config(), clock)
    again.restore(budgets.state())
    clock.now += 1800
    again.meter([kernel()])  # charged from where the old broker stopped, not from its first sight
    assert again.used["user:ann"] == pytest.approx(1.0) and again.limit("user:ann", "ai101") == 13
    stale = Budgets(config(), Clock(MONDAY_NOON + 7 * 86400))
    stale.restore(budgets.state())  # last week's state: not this week's
    assert stale.used == {}


@pytest.mark.parametrize(("budgets", "courses", "field"), [
    ({"student": -1}, {}, "c.Broker.budgets.student"),
    ({"unit": "hours"}, {}, "c.Broker.budgets.unit"),
    ({"reset": {"weekly": "someday 9:00"}}, {}, "c.Broker.budgets.reset.weekly"),
    ({"reset": {"weekly": "tue 25:00"}}, {}, "c.Broker.budgets.reset.weekly"),
    ({"reset": {"term": ["2026-12-20", "2026-09-01"]}}, {}, "c.Broker.budgets.reset.term"),
    ({"reset": "weekly"}, {}, "c.Broker.budgets.reset"),
    ({"warn": [80]}, {}, "c.Broker.budgets.warn"),
    ({"interval": 0}, {}, "c.Broker.budgets.interval"),
    ({"rates": [{"vgpus": 1, "rate": "cheap"}]}, {}, "c.Broker.budgets.rates[0].rate"),
    ({"studnet": 10}, {}, "c.Broker.budgets"),
    ({}, {"ai101": {"budget": {"students": 3}}}, "c.Broker.courses['ai101'].budget"),
    ({}, {"ai101": {"budget": {"student": "lots"}}}, "c.Broker.courses['ai101'].budget.student"),
])
def test_bad_settings_are_named(budgets, courses, field):
    with pytest.raises(VGPURequestError) as err:
        BudgetConfig.parse(budgets, courses)
    assert err.value.field == field


async def test_admission_refuses_a_launch_out_of_budget_before_the_pool():
    host = FakeClass(free=8)
    ledger = Ledger(Quota(), {"ai101": Quota(8)})
    host.ledger = ledger
    clock = Clock()
    budgets = Budgets(config(), clock)
    admission = Admission(host, ledger, ["ai101"], budgets=budgets)
    budgets.used["user:ann"] = 10
    one = VGPURequest.parse(1, "4Gi")
    decision = await admission.decide(Launch("k-ann", "ann", ("ai101",), one, "img"), lambda line: None)
    assert isinstance(decision, Refused) and isinstance(decision.error, BudgetExhausted)
    assert "k-ann" not in ledger.pending and not admission.queue.waiting()  # neither reserved nor queued
    decision = await admission.decide(Launch("k-bob", "bob", ("ai101",), one, "img"), lambda line: None)
    assert isinstance(decision, Admitted)
    await asyncio.sleep(0)


class FakePods:
    """What BudgetMeter reads of ClassPods: holdings, the pod cache, and the site that stops pods."""

    def __init__(self, running: list[Holding]):
        self.running = running
        self.stopped: list[tuple[str, str]] = []
        self.cluster = self
        self.site = self

    def holdings(self) -> list[Holding]:
        return list(self.running)

    def kernel_pods(self) -> list[dict]:
        return [{"metadata": {"name": f"pod-{h.kernel_id}", "labels": {LABEL_KERNEL_ID: h.kernel_id}}}
                for h in self.running]

    async def stop(self, pod_name: str, stopped_by: str) -> None:
        self.stopped.append((pod_name, stopped_by))
        self.running = [h for h in self.running if f"pod-{h.kernel_id}" != pod_name]


class MemoryStore:
    def __init__(self):
        self.saved = None

    async def load(self):
        return self.saved

    async def save(self, state):
        self.saved = state


async def test_the_broker_meter_stops_the_kernel_out_of_budget_with_the_reason_and_keeps_its_state():
    clock = Clock()
    pods = FakePods([kernel("ann", 2, "k-ann"), kernel("bob", 1, "k-bob")])
    store = MemoryStore()
    meter = BudgetMeter(Budgets(config(), clock), pods, store)
    await meter.start()
    for _ in range(9 * 60 + 36):  # 9.6 hours
        clock.now += 60
        await meter.meter()
    assert pods.stopped == [("pod-k-ann", STOPPED_FOR_BUDGET)]  # ann's 2 vGPUs ran out after 5 h; bob's 1 did not
    assert meter.warning("user:bob") == {"level": 0.95, "message": "95% of your budget is used"}
    assert [r["user"] for r in meter.rows()] == ["ann", "bob"] and meter.rows()[0]["left"] == 0
    again = BudgetMeter(Budgets(config(), clock), FakePods([kernel("bob", 1, "k-bob")]), store)
    await again.start()
    assert again.budgets.used["user:bob"] == pytest.approx(9.6, abs=1 / 60)  # a restarted broker continues
