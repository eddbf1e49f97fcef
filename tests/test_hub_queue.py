"""The fair queue of hub mode, through a real JupyterHub: six students launch at once on a course of
two vGPUs; two start, four wait in line, a cancel gives up a place, each release starts the next. And a
broker SIGKILLed mid-queue: restarted, it keeps the line's order and the budgets, and the waiting
launches' servers come back for their places."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from orion_jupyter.k8s.state_store import decode, head_name, part_names
from tests.classroom import BROKER, COURSE, NS, SPEC, class_hub_with, kernel_objects, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.hub import HubHTTPError

STUDENTS = [f"student{i}" for i in range(1, 7)]


@pytest.fixture
def queue_hub(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 2, 'queue': True}}}}", "c.Broker.queue_keepalive = 1.0"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*STUDENTS, "teacher"]) as hub_broker:
        yield hub_broker


async def launch(hub, user: str, kernel_id: str, **fields) -> tuple[int, dict]:
    try:
        return 201, await start_vgpu_kernel(hub, user, kernel_id=kernel_id, **fields)
    except HubHTTPError as err:
        return err.code, json.loads(err.body)


async def places(hub, users) -> dict[str, dict]:
    """Each user's waiting launch as their own server shows it (GET orion/api/queue)."""
    out = {}
    for user in users:
        waiting = (await hub.server_api(user, "GET", "orion/api/queue"))["waiting"]
        assert len(waiting) <= 1, waiting  # one waiting launch per user
        if waiting:
            out[user] = waiting[0]
    return out


async def in_line(hub, line: list[str]) -> None:
    """``line``'s users wait at positions 1, 2, ... in this order (and nobody else waits among them)."""
    await eventually_async(lambda: places(hub, line), timeout=30,
                           until=lambda found: sorted(found, key=lambda u: found[u]["position"]) == line
                           and [found[u]["position"] for u in line] == list(range(1, len(line) + 1)))


@pytest.mark.timeout(300)
async def test_six_students_two_vgpus_first_come_first_served(queue_hub, sim_cluster):
    hub, broker = queue_hub
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(*(hub.start_server(user) for user in STUDENTS))
    # more than the course may ever hold: refused at once, never queued
    code, body = await launch(hub, "student1", str(uuid.uuid4()), vgpus=3)
    assert code == 400 and body["field"] == "vgpus" and f"course {COURSE}" in body["message"], body
    assert (await hub.server_api("student1", "GET", "orion/api/queue"))["waiting"] == []
    kernel_ids = {user: str(uuid.uuid4()) for user in STUDENTS}
    launches = {user: asyncio.ensure_future(launch(hub, user, kernel_ids[user])) for user in STUDENTS}

    # two start; four wait, at positions 1-4
    waiting = await eventually_async(
        lambda: places(hub, STUDENTS), timeout=60,
        until=lambda found: len(found) == 4 and sum(t.done() for t in launches.values()) == 2)
    started = [user for user in STUDENTS if launches[user].done()]
    assert all(launches[user].result()[0] == 201 for user in started)
    assert sorted(p["position"] for p in waiting.values()) == [1, 2, 3, 4]
    assert all(p["ahead"] == p["position"] - 1 and p["course"] == COURSE and p["vgpus"] == 1
               and p["kernel_id"] == kernel_ids[user] for user, p in waiting.items())
    line = sorted(waiting, key=lambda user: waiting[user]["position"])
    assert len(kernel_objects(sim_cluster)["pods"]) == 2  # nobody waiting holds a pod
    # what the launch dialog reads: the place, in the kernel's events
    events = (await hub.server_api(line[0], "GET", f"orion/api/events?kernel={kernel_ids[line[0]]}"))["events"]
    assert any((e.get("queued") or {}).get("position") == 1 and e["stage"] == "queue" for e in events), events

    # a student cannot cancel another's place; the second in line gives up theirs
    with pytest.raises(HubHTTPError) as caught:
        await hub.server_api(line[2], "DELETE", f"orion/api/queue/{kernel_ids[line[1]]}")
    assert caught.value.code == 404
    await hub.server_api(line[1], "DELETE", f"orion/api/queue/{kernel_ids[line[1]]}")
    code, body = await asyncio.wait_for(launches[line[1]], 30)
    assert code == 409 and body["reason"] == "cancelled", body
    line.remove(line[1])
    await in_line(hub, line)

    # each release starts the head of the line, and only the head
    running = list(started)
    while line:
        head, rest = line[0], line[1:]
        leaving = running.pop(0)
        await hub.server_api(leaving, "DELETE", f"api/kernels/{kernel_ids[leaving]}")
        code, body = await asyncio.wait_for(launches[head], 60)
        assert code == 201, body
        assert not any(launches[user].done() for user in rest)  # nobody overtook the head
        running.append(head)
        line = rest
        if line:
            await in_line(hub, line)
    assert len(kernel_objects(sim_cluster)["pods"]) == 2
    # the head's kernel runs as its user
    last = running[-1]
    output = await hub.kernel_ws_execute(last, kernel_ids[last], "import os; print(os.environ['ORION_JUPYTER_USER'])")
    assert output == last


@pytest.fixture
def restart_hub(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 1, 'queue': True}}}}", "c.Broker.queue_keepalive = 1.0",
              "c.Broker.budgets = {'student': 10, 'reset': {'weekly': 'tue 09:00'}, 'interval': 1}",
              "c.Broker.queue_resume_grace = 120.0"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*STUDENTS[:4], "teacher"]) as hub_broker:
        yield hub_broker


async def launch_through_a_restart(hub, user: str, kernel_id: str) -> tuple[int, dict]:
    """``launch``, its request allowed to last through the broker's restart and the line's moves."""
    try:
        return 201, await hub.server_api(user, "POST", "orion/api/kernels", {"spec": SPEC, "kernel_id": kernel_id},
                                         timeout=240)
    except HubHTTPError as err:
        return err.code, json.loads(err.body)


def kept_places(sim_cluster) -> list[str]:
    """The users of the queue's places as the broker's state ConfigMaps keep them, in order."""
    found = {c["metadata"]["name"]: c for c in sim_cluster.objects("configmaps", NS)}
    head = found.get(head_name("orion-broker-state", "queue"))
    if head is None:
        return []
    state = decode(head, [found[name] for name in part_names("orion-broker-state", "queue", head)])
    return [p["user"] for p in (state or {}).get("places", [])]


@pytest.mark.timeout(420)
async def test_a_broker_restart_mid_queue_keeps_the_order_and_the_budgets(restart_hub, sim_cluster):
    hub, broker = restart_hub
    first, *line = STUDENTS[:4]
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(*(hub.start_server(user) for user in [first, *line, "teacher"]))
    kernel_ids = {user: str(uuid.uuid4()) for user in [first, *line]}
    assert (await launch(hub, first, kernel_ids[first]))[0] == 201
    launches = {}
    for user in line:  # one after another: the line's order is the order they asked in
        launches[user] = asyncio.ensure_future(launch_through_a_restart(hub, user, kernel_ids[user]))
        await eventually_async(lambda u=user: places(hub, [u]), timeout=30, until=lambda found: len(found) == 1)
    await in_line(hub, line)
    teacher = await hub.server_token("teacher")
    await hub.service_api(BROKER, "POST", f"api/budgets/{line[0]}/topup", {"hours": 2}, token=teacher)
    student_token = await hub.server_token(first)
    used = await eventually_async(lambda: hub.service_api(BROKER, "GET", "api/budget", token=student_token),
                                  timeout=30, until=lambda b: b["used"] > 0)
    await eventually_async(lambda: asyncio.sleep(1.5, kept_places(sim_cluster)), timeout=30,
                           until=lambda kept: kept == line)  # the order is in the cluster; a meter interval passed

    broker.kill()  # mid-queue: the three streams break, their servers come back for their places
    broker.start(hub.api_url)
    await hub.wait_for_service(BROKER, "metrics")
    await in_line(hub, line)  # the same order, through each student's own server
    assert not any(task.done() for task in launches.values())
    assert len(kernel_objects(sim_cluster)["pods"]) == 1
    again = await hub.service_api(BROKER, "GET", "api/budget", token=student_token)
    assert again["used"] >= used["used"] > 0, (used, again)  # the meter continued, not restarted at 0
    topped = await hub.service_api(BROKER, "GET", "api/budget", token=await hub.server_token(line[0]))
    assert topped["budget"] == 12, topped  # the instructor's top-up survived

    # the first waiting gets the next free vGPU, and only they
    await hub.server_api(first, "DELETE", f"api/kernels/{kernel_ids[first]}")
    # its server comes back within seconds; a kernel pod's start on two loaded cores can take tens of them
    code, body = await asyncio.wait_for(launches[line[0]], 150)
    assert code == 201, body
    assert not any(launches[user].done() for user in line[1:])
    await in_line(hub, line[1:])
    for user in line[1:]:
        launches[user].cancel()
