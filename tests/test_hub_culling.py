"""Idle vGPU kernels given back in hub mode, through a real JupyterHub: the broker follows each
kernel's own execution state, warns, lets the owner keep it, spares an exempted one, never stops a
busy one, and stops an idle one at its time, which hands its vGPU to the student waiting in line."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime

import pytest

from tests.classroom import BROKER, class_hub_with, culling_course, pod_users, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.hub import HubHTTPError

STUDENTS = ["ann", "ben", "cat"]
IDLE_SECONDS = 10


@pytest.fixture
def culling_hub(hub_factory, sim_cluster, tmp_path):
    config = culling_course(vgpus=2, idle=IDLE_SECONDS, warning=8, keeps=1)
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*STUDENTS, "teacher"]) as hub_broker:
        yield hub_broker


async def row(hub, user: str, kernel_id: str) -> dict:
    rows = (await hub.server_api(user, "GET", "orion/api/allocations"))["kernels"]
    return next((r for r in rows if r["kernel_id"] == kernel_id), {})


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.timeout(300)
async def test_idle_kernels_in_hub_mode(culling_hub, sim_cluster):
    hub, broker = culling_hub
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(*(hub.start_server(user) for user in [*STUDENTS, "teacher"]))
    ann = (await start_vgpu_kernel(hub, "ann"))["id"]
    ben = (await start_vgpu_kernel(hub, "ben"))["id"]
    cats_id = str(uuid.uuid4())
    cat = asyncio.ensure_future(start_vgpu_kernel(hub, "cat", kernel_id=cats_id))  # waits: 2 vGPUs, both held
    await eventually_async(lambda: hub.server_api("cat", "GET", "orion/api/queue"), timeout=30,
                           until=lambda q: [w["position"] for w in q["waiting"]] == [1])

    # an instructor exempts ben's kernel (from their own server); a student may not
    with pytest.raises(HubHTTPError) as caught:
        await hub.server_api("ann", "POST", f"orion/api/kernels/{ben}/exempt", {"exempt": True})
    assert caught.value.code == 403
    exempted = await hub.server_api("teacher", "POST", f"orion/api/kernels/{ben}/exempt", {"exempt": True})
    assert exempted["exempt"] is True and exempted["cull_at"] is None
    await eventually_async(lambda: row(hub, "ben", ben), timeout=20, until=lambda r: r.get("exempt") is True)

    # ann's idle kernel shows when it stops, then the warning; one keep moves that time, a second is refused
    warned = await eventually_async(lambda: row(hub, "ann", ann), timeout=20,
                                    until=lambda r: r.get("cull_at") and r.get("cull_warning"))
    assert warned["keeps_left"] == 1 and warned["exempt"] is False
    kept = await hub.server_api("ann", "POST", f"orion/api/kernels/{ann}/keep", {})
    assert when(kept["cull_at"]) > when(warned["cull_at"]) and kept["keeps_left"] == 0
    await eventually_async(lambda: row(hub, "ann", ann), timeout=20,
                           until=lambda r: r.get("cull_at") == kept["cull_at"])
    with pytest.raises(HubHTTPError) as caught:
        await hub.server_api("ann", "POST", f"orion/api/kernels/{ann}/keep", {})
    assert caught.value.code == 409 and "kept 1 times" in json.loads(caught.value.body)["message"]

    # a busy kernel is never stopped: ann's runs longer than the idle time
    busy = asyncio.ensure_future(hub.kernel_ws_execute("ann", ann, f"import time; time.sleep({IDLE_SECONDS + 4}); "
                                                                   "print('done')", timeout=60))
    await eventually_async(lambda: row(hub, "ann", ann), timeout=20, until=lambda r: r.get("cull_at") is None)
    assert await busy == "done"
    assert "ann" in pod_users(sim_cluster)

    # then idle: stopped at its time, and its vGPU goes to cat, who waited
    idle = await eventually_async(lambda: row(hub, "ann", ann), timeout=20, until=lambda r: r.get("cull_at"))
    assert (await asyncio.wait_for(cat, IDLE_SECONDS + 30))["id"] == cats_id
    stopped_at = datetime.now().astimezone()
    assert stopped_at >= when(idle["cull_at"])
    await eventually_async(lambda: asyncio.sleep(0, pod_users(sim_cluster)), timeout=20,
                           until=lambda users: users == ["ben", "cat"])
    # ann's server does not start it again (the broker refuses to relaunch a culled kernel), ben's exempted one stays
    await asyncio.sleep(3)
    assert pod_users(sim_cluster) == ["ben", "cat"]
    assert await hub.kernel_ws_execute("ben", ben, "print(1 + 1)") == "2"
