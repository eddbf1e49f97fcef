"""Budgets through a real JupyterHub (the REST wiring; the rules are tests/test_budgets.py's): a student sees
their budget through their own server, their kernel is stopped when it runs out, a new launch is refused with
the reset time, a student cannot top up, an instructor can, through the broker or their own server (and sees
everyone's use in the class view)."""

from __future__ import annotations

import pytest

from tests.classroom import BROKER, class_hub_with, kernel_objects, refused, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.test_direct_budgets import BUDGET_FIELDS  # the same shape as a direct-mode server's

BUDGET = 0.003  # vGPU-hours: about 11 s of one vGPU


@pytest.fixture
def budget_hub(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.budgets = {{'student': {BUDGET}, 'reset': {{'weekly': 'tue 09:00'}}, 'interval': 1}}",
              "c.Broker.lab_timezone = 'Europe/Berlin'"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=["student1", "teacher"]) as hub_broker:
        yield hub_broker


@pytest.mark.timeout(300)
async def test_a_budget_runs_out_is_refused_until_reset_and_an_instructor_tops_it_up(budget_hub, sim_cluster):
    hub, _ = budget_hub
    await hub.wait_for_service(BROKER, "metrics")
    for user in ("student1", "teacher"):
        await hub.start_server(user)
    student, teacher = await hub.server_token("student1"), await hub.server_token("teacher")
    mine = await hub.server_api("student1", "GET", "orion/api/budget")
    assert set(mine) == BUDGET_FIELDS and mine["budget"] == BUDGET and mine["unit"] == "vGPU-hours", mine
    assert mine["text"].endswith(f"of {BUDGET:g} vGPU-hours left this week · resets Tue 09:00"), mine

    await start_vgpu_kernel(hub, "student1")
    await eventually_async(lambda: kernel_objects(sim_cluster)["pods"], timeout=60, until=lambda pods: pods == [])
    mine = await hub.service_api(BROKER, "GET", "api/budget", token=student)
    assert mine["left"] == 0 and BUDGET <= mine["used"] <= BUDGET + 2 / 3600, mine  # stopped within an interval

    code, body = await refused(start_vgpu_kernel(hub, "student1"))
    assert code == 400 and "budget of 0.003 vGPU-hours is used up" in body["message"], body
    assert "resets Tue 09:00" in body["message"], body

    code, body = await refused(hub.service_api(BROKER, "POST", "api/budgets/student1/topup", {"hours": 1},
                                               token=student))
    assert code == 403, body
    code, body = await refused(hub.service_api(BROKER, "POST", "api/budgets/student1/topup", {"hours": -1},
                                               token=teacher))
    assert code == 400 and body["field"] == "hours", body
    # Through the users' own servers (what the sidebar's Top up calls): the broker decides and its sentence comes back.
    code, body = await refused(hub.server_api("student1", "POST", "orion/api/budgets/student1/topup", {"hours": 1}))
    assert code == 403 and body["message"] == "only instructors may top up a budget", body
    topped = await hub.server_api("teacher", "POST", "orion/api/budgets/student1/topup", {"hours": 1})
    assert topped["user"] == "student1" and topped["left"] == pytest.approx(1.0, abs=0.01), topped

    rows = (await hub.service_api(BROKER, "GET", "api/class", token=teacher))["budgets"]
    assert [r["user"] for r in rows] == ["student1"] and rows[0]["budget"] == pytest.approx(1 + BUDGET), rows
    klass = await hub.server_api("teacher", "GET", "orion/api/class")
    assert klass["instructor"] and klass["budgets"] == rows, klass
    assert (await hub.server_api("student1", "GET", "orion/api/class"))["budgets"] == []
    code, _ = await refused(hub.service_api(BROKER, "GET", "api/budgets", token=student))
    assert code == 403
    kernel = await start_vgpu_kernel(hub, "student1")  # the top-up lets them start again
    assert kernel["id"]
