"""Courses whose hub group is not its own DNS slug (``AI_101``, ``Physics 2``), through the broker's own API
on a real JupyterHub: a quota of one vGPU holds against two students in each, a queued course lines its
second student up, and the class view names each kernel's exact course."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid

import pytest

from orion_jupyter.names import ANNOTATION_COURSE, LABEL_COURSE, slug
from orion_jupyter.wire import PORT_NAMES, fresh_ports
from tests.classroom import BROKER, NS, class_hub_with
from tests.helpers import eventually_async
from tests.hub import HubHTTPError

GROUPS = {"AI_101": ["ann", "ben"], "Physics 2": ["cem", "dan"]}


@pytest.fixture
def two_courses(hub_factory, sim_cluster, tmp_path):
    config = ["c.Broker.courses = {'AI_101': {'vgpus': 1, 'queue': True}, 'Physics 2': {'vgpus': 1}}",
              "c.Broker.queue_keepalive = 1.0"]
    users = [u for members in GROUPS.values() for u in members]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*users, "teacher"],
                        groups=GROUPS) as hub_broker:
        yield hub_broker


def body() -> dict:
    return {"kernel_id": str(uuid.uuid4()), "vgpus": 1, "memory": "1Gi", "key": secrets.token_hex(16),
            "kernel_spec_name": "orion-1x1gi", "ports": dict(zip(PORT_NAMES, fresh_ports(), strict=True))}


async def launch(hub, token: str, launch_body: dict) -> tuple[int, list[dict]]:
    """POST api/kernels to the broker itself (through the proxy), read to its end: (status, lines)."""
    try:
        answer = await hub.service_api(BROKER, "POST", "api/kernels", launch_body, token=token, timeout=120)
    except HubHTTPError as err:
        return err.code, [json.loads(err.body)]
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return 200, [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(300)
async def test_courses_not_named_by_their_slug_keep_their_quota_and_queue(two_courses, sim_cluster):
    hub, _ = two_courses
    await hub.wait_for_service(BROKER, "metrics")
    tokens = {}
    for user in ("ann", "ben", "cem", "dan", "teacher"):
        await hub.start_server(user)
        tokens[user] = await hub.server_token(user)

    # one vGPU per course: the first student of each starts
    ann, cem = body(), body()
    for user, launch_body in (("ann", ann), ("cem", cem)):
        code, lines = await launch(hub, tokens[user], launch_body)
        assert code == 200 and "ready" in lines[-1], lines
    # Physics 2 has no queue: dan is refused with the course's reason
    code, [refusal] = await launch(hub, tokens["dan"], body())
    assert code == 400 and refusal["field"] == "vgpus" and "course Physics 2" in refusal["message"], refusal
    # AI_101 queues: ben waits first in line, in course AI_101
    bens = body()
    waiting = asyncio.ensure_future(launch(hub, tokens["ben"], bens))
    places = await eventually_async(lambda: hub.service_api(BROKER, "GET", "api/queue", token=tokens["ben"]),
                                    timeout=30, until=lambda answer: answer["waiting"])
    assert [(p["course"], p["position"]) for p in places["waiting"]] == [("AI_101", 1)]
    assert not waiting.done()

    # the pods carry the exact group (annotation) and its slug (label); the class view names the course
    pods = {(p["metadata"]["annotations"] or {}).get(ANNOTATION_COURSE): p for p in sim_cluster.objects("pods", NS)}
    assert set(pods) == {"AI_101", "Physics 2"}
    assert pods["Physics 2"]["metadata"]["labels"][LABEL_COURSE] == slug("Physics 2", 63) != "Physics 2"
    view = await hub.service_api(BROKER, "GET", "api/class", token=tokens["teacher"])
    assert sorted((row["user"], row["course"]) for row in view["kernels"]) == [("ann", "AI_101"),
                                                                              ("cem", "Physics 2")]

    # ann's kernel stops: ben's turn, and the course holds one again
    await hub.service_api(BROKER, "DELETE", f"api/kernels/{ann['kernel_id']}", token=tokens["ann"])
    code, lines = await asyncio.wait_for(waiting, 90)
    assert code == 200 and "ready" in lines[-1], lines
    # ben now holds the course's vGPU: ann's next launch waits, and leaves the line when cancelled
    again = body()
    ann_waits = asyncio.ensure_future(launch(hub, tokens["ann"], again))
    await eventually_async(lambda: hub.service_api(BROKER, "GET", "api/queue", token=tokens["ann"]), timeout=30,
                           until=lambda answer: [p["course"] for p in answer["waiting"]] == ["AI_101"])
    await hub.service_api(BROKER, "DELETE", f"api/queue/{again['kernel_id']}", token=tokens["ann"])
    code, lines = await asyncio.wait_for(ann_waits, 30)
    assert lines[-1]["error"]["reason"] == "cancelled", lines
    assert len(sim_cluster.objects("pods", NS)) == 2  # ben's and cem's

    # an instructor stops cem's kernel through the broker's own API: it stays stopped, as from the class view
    stopped = await hub.service_api(BROKER, "DELETE", f"api/kernels/{cem['kernel_id']}", token=tokens["teacher"])
    assert len(stopped["stopped"]) == 1, stopped
    await eventually_async(lambda: asyncio.sleep(0, len(sim_cluster.objects("pods", NS))), timeout=30,
                           until=lambda pods: pods == 1)
    code, [refusal] = await launch(hub, tokens["cem"], cem)  # its server restarting it: refused, says by whom
    assert code == 409 and "teacher" in refusal["message"], refusal
