"""core/estimates.py on its own: p50/p80 of a wait from foreseen ends and observed lifetimes, honest
"unknown" when nothing comparable is known, calibrated (the real wait is within p80 about 80 % of the time)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from orion_jupyter.broker.waits import BrokerWaits
from orion_jupyter.core.estimates import Calibration, Running, WaitEstimator, wait_text
from orion_jupyter.core.ledger import Holding
from orion_jupyter.core.queue import Waiting
from orion_jupyter.names import ANNOTATION_COURSE, ANNOTATION_REQUEST, LABEL_KERNEL_ID
from orion_jupyter.vgpu import VGPURequest


def test_unknown_when_nothing_is_foreseen_or_observed():
    estimator = WaitEstimator()
    draws = estimator.draw([Running(1, age=60)])
    assert draws.estimate(1) == {"p50": None, "p80": None}
    assert wait_text(draws.estimate(1)) == "wait unknown: nothing comparable has ended yet"
    assert draws.estimate(0) == {"p50": 0.0, "p80": 0.0}  # it fits now


def test_foreseen_ends_cull_times_and_budgets_give_exact_waits():
    estimator = WaitEstimator()
    draws = estimator.draw([Running(1, age=10, ends_in=300), Running(2, age=10, ends_in=600)])
    assert draws.estimate(1) == {"p50": 300.0, "p80": 300.0}
    assert draws.estimate(3) == {"p50": 600.0, "p80": 600.0}
    assert draws.estimate(4) == {"p50": None, "p80": None}  # more than will ever come free from these


def test_lifetimes_per_course_and_shape_conditioned_on_age():
    estimator = WaitEstimator(min_observed=5)
    for lifetime in range(600, 3601, 300):  # ai101's 1x4096 kernels: 10 to 60 min
        estimator.observe("ai101", "1x4096", lifetime)
    for _ in range(5):
        estimator.observe("phys2", "1x4096", 8 * 3600)  # another course's kernels live long
    draws = estimator.draw([Running(1, age=3000, course="ai101", shape="1x4096")])
    old = draws.estimate(1)
    assert old["p80"] is not None and old["p80"] <= 600  # it ran 50 min of at most 60: it ends soon
    draws = estimator.draw([Running(1, age=0, course="phys2", shape="2x4096")])  # no 2x4096 seen: the course's own
    assert draws.estimate(1)["p50"] == 8 * 3600
    draws = estimator.draw([Running(1, age=9 * 3600, course="phys2", shape="1x4096")])  # older than all seen
    assert draws.estimate(1) == {"p50": None, "p80": None}


def test_the_real_wait_is_within_p80_about_80_percent_of_the_time():
    truth = random.Random(3)
    estimator = WaitEstimator(samples=200, seed=5)
    for _ in range(300):
        estimator.observe("ai101", "1x4096", truth.expovariate(1 / 1800))
    def outlives(age: float) -> float:  # a lifetime of the same kind, given the kernel has run ``age``
        while (life := truth.expovariate(1 / 1800)) <= age:
            pass
        return life

    within = 0
    for _ in range(300):
        ages = [truth.uniform(0, 3600) for _ in range(3)]
        draws = estimator.draw([Running(1, age=a, course="ai101", shape="1x4096") for a in ages])
        estimate = draws.estimate(2)
        real = sorted(outlives(age) - age for age in ages)[1]
        within += real <= estimate["p80"]
    assert 0.72 <= within / 300 <= 0.88
    assert wait_text({"p50": 360.0, "p80": 660.0}) == "about 6 min, 80 % within 11 min"


@pytest.mark.parametrize(("estimate", "text"), [
    ({"p50": 20.0, "p80": None}, "about under a minute; how much longer at worst is not known"),
    ({"p50": 20.0, "p80": 50.0}, "about under a minute, 80 % within under a minute"),
])
def test_the_text_says_what_is_known(estimate, text):
    assert wait_text(estimate) == text


def kernel_pod(kernel_id: str, course: str, started: float, uid: str = "", phase: str = "Running") -> dict:
    return {"metadata": {"name": f"pod-{kernel_id}", "uid": uid or kernel_id, "labels": {LABEL_KERNEL_ID: kernel_id},
                         "annotations": {ANNOTATION_COURSE: course,
                                         ANNOTATION_REQUEST: json.dumps({"vgpus": 1, "memory_mib": 4096})}},
            "status": {"phase": phase, "startTime": datetime.fromtimestamp(started, UTC).isoformat()}}


class Pods:
    def __init__(self, pods: list[dict]):
        self.pods = pods
        self.cluster = self

    def kernel_pods(self) -> list[dict]:
        return self.pods


async def test_the_broker_estimates_from_cull_times_budgets_and_ended_kernels():
    now = 1_000_000.0
    pods = Pods([kernel_pod("a", "AI_101", now - 600), kernel_pod("b", "AI_101", now - 60),
                 kernel_pod("c", "Physics 2", now - 60)])
    cull = {"a": datetime.fromtimestamp(now + 120, UTC)}  # a is idle: culled in 2 min
    waits = BrokerWaits(pods, cull.get, None, course_quota=lambda course: course == "AI_101", clock=lambda: now)
    line = [Waiting(Holding(f"w{i}", f"s{i}", "AI_101", 1, 4096), VGPURequest.parse(1, "4Gi"), lambda _: None)
            for i in range(2)]
    first = waits.describe_more(line[0], line[:1])
    assert first == {"wait_p50_seconds": 120.0, "wait_p80_seconds": 120.0, "wait": "about 2 min, 80 % within 2 min"}
    second = waits.describe_more(line[1], line)  # b's end is neither foreseen nor comparable to anything seen
    assert second["wait_p50_seconds"] is None and second["wait"].startswith("wait unknown")
    for i in range(5):  # five AI_101 kernels ended after 30 min each
        waits.on_pod("DELETED", kernel_pod(f"old{i}", "AI_101", now - 1800))
        waits.on_pod("DELETED", kernel_pod(f"old{i}", "AI_101", now - 1800))  # a second event of one pod: once
    assert len(waits.estimator.observed[("AI_101", "1x4096")]) == 5
    waits._drawn.clear()
    assert waits.describe_more(line[1], line)["wait_p50_seconds"] == 1800 - 60  # b, 1 min old, has 29 to go


def test_calibration_learns_what_the_model_misses_and_then_holds_p80():
    """A model that tells a third of the real waits (later arrivals jumped ahead): as told, p80 is exceeded
    most of the time; set from the course's observed ratios it is exceeded about 20 % of the time."""
    truth = random.Random(7)
    calibration = Calibration(min_observed=10, keep=50)
    model = {"p50": 600.0, "p80": 900.0}
    assert calibration.adjust("AI_101", model) == model  # nothing seen yet: as the model says
    over_told = over_calibrated = 0
    for i in range(400):
        real = 3 * truth.expovariate(1 / 600)
        told = calibration.adjust("AI_101", model)
        if i >= 50:
            over_told += real > model["p80"]
            over_calibrated += real > told["p80"]
        calibration.observe("AI_101", model["p50"], real)
    assert over_told / 350 > 0.5  # about 61 %
    assert 0.1 <= over_calibrated / 350 <= 0.3
    assert calibration.adjust("Physics 2", model) == model  # per course
    assert calibration.adjust("AI_101", {"p50": None, "p80": None}) == {"p50": None, "p80": None}  # unknown stays
    assert calibration.adjust("AI_101", {"p50": 600.0, "p80": None})["p80"] is None
    assert calibration.adjust("AI_101", model)["p50"] == 600.0  # the model's point estimate stays


async def test_the_broker_calibrates_with_the_real_waits_of_launches_that_started():
    now = [1_000_000.0]
    pods = Pods([kernel_pod("a", "AI_101", now[0] - 600)])
    cull = {"a": datetime.fromtimestamp(now[0] + 120, UTC)}
    waits = BrokerWaits(pods, cull.get, None, course_quota=lambda course: True, clock=lambda: now[0])
    waits.calibration = Calibration(min_observed=3, keep=10)
    for i in range(3):  # told 2 min, each started after 6 min
        waiting = Waiting(Holding(f"w{i}", f"s{i}", "AI_101", 1, 4096), VGPURequest.parse(1, "4Gi"), lambda _: None)
        assert waits.describe_more(waiting, [waiting])["wait_p50_seconds"] == 120.0
        waits.describe_more(waiting, [waiting])  # told again while waiting: the first told counts
        now[0] += 360
        cull["a"] = datetime.fromtimestamp(now[0] + 120, UTC)
        waits._drawn.clear()
        waits.on_pod("ADDED", kernel_pod(f"w{i}", "AI_101", now[0]))
    assert list(waits.calibration.ratios["AI_101"]) == [3.0, 3.0, 3.0]
    late = Waiting(Holding("w9", "s9", "AI_101", 1, 4096), VGPURequest.parse(1, "4Gi"), lambda _: None)
    told = waits.describe_more(late, [late])
    assert (told["wait_p50_seconds"], told["wait_p80_seconds"]) == (120.0, 360.0)
    assert told["wait"] == "about 2 min, 80 % within 6 min"


def test_the_server_shows_the_broker_estimate_when_known_else_the_old_one():
    from orion_jupyter.hubclient import queue_message

    place = {"position": 2, "course": "AI_101", "estimate_seconds": 300, "wait_p50_seconds": 360.0,
             "wait": "about 6 min, 80 % within 11 min"}
    assert queue_message(place) == "waiting for a vGPU: position 2 in course AI_101, about 6 min, 80 % within 11 min"
    assert queue_message({**place, "wait_p50_seconds": None}) == "waiting for a vGPU: position 2 in course AI_101, " \
                                                                  "about 5 min"
