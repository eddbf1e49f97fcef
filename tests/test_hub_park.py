"""Park and resume in hub mode, through a real JupyterHub: a student's kernel pod saves its variables
into the student's own storage (their server's root, mounted in kernel pods at the broker's
home_mount_path), its vGPU goes back to the course, and a resume is a launch like any other."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from orion_jupyter.snapshot import HOME_FOLDER
from tests.classroom import BROKER, COURSE, NS, class_hub_with, pod_users, refused, start_vgpu_kernel
from tests.helpers import eventually_async

STUDENTS = ["ann", "ben"]

CELLS = """
import numpy as np
data = np.arange(10) * 1.5
def shifted(value):
    return value + 1
squares = (i * i for i in range(3))
"""


@pytest.fixture
def park_hub(hub_factory, sim_cluster, tmp_path):
    """One vGPU for the course, no queue: a launch past it is refused at once."""
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 1}}}}"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*STUDENTS, "teacher"]) as hub_broker:
        yield hub_broker


async def kernel_value(hub, user: str, kernel_id: str, expression: str) -> Any:
    """``expression`` evaluated in a kernel of ``user``'s server, as JSON (nothing added to its namespace)."""
    return json.loads(await hub.kernel_ws_execute(user, kernel_id, f"print(__import__('json').dumps({expression}))"))


@pytest.mark.timeout(300)
async def test_a_student_parks_and_resumes_in_hub_mode(park_hub, sim_cluster):
    hub, _broker = park_hub
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(*(hub.start_server(user) for user in STUDENTS))
    listing = await hub.server_api("ann", "GET", "orion/api/snapshots")
    assert listing == {"snapshots": [], "supported": True}, listing

    ann = (await start_vgpu_kernel(hub, "ann"))["id"]
    await hub.kernel_ws_execute("ann", ann, CELLS)
    before = await kernel_value(hub, "ann", ann, "[data.tolist(), shifted(1)]")

    parked = await hub.server_api("ann", "POST", f"orion/api/kernels/{ann}/park", {})
    assert {"data", "shifted", "np"} <= set(parked["saved"]), parked
    assert parked["not_saved"]["squares"].startswith("a generator: ")
    # in ann's own storage: her server's root, which her kernel pod mounted
    folder = hub.home("ann") / HOME_FOLDER / "ann" / parked["snapshot"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["owner"] == "ann" and manifest["kernel"]["vgpu"]["vgpus"] == 1
    # the kernel is gone and the course's one vGPU is free: ben starts on it
    await eventually_async(lambda: asyncio.sleep(0, pod_users(sim_cluster)), timeout=30, until=lambda users: not users)
    ben = (await start_vgpu_kernel(hub, "ben"))["id"]
    assert pod_users(sim_cluster) == ["ben"]

    # a resume while the course's vGPU is taken is refused as ann's launch would be, and loses nothing
    launch_code, launch_refusal = await refused(start_vgpu_kernel(hub, "ann"))
    code, refusal = await refused(hub.server_api("ann", "POST", f"orion/api/snapshots/{parked['snapshot']}/resume", {}))
    assert (code, refusal["message"]) == (launch_code, launch_refusal["message"]), (refusal, launch_refusal)
    assert f"course {COURSE}" in refusal["message"], refusal
    listing = await hub.server_api("ann", "GET", "orion/api/snapshots")
    assert [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]] and folder.is_dir()

    # ann's snapshot is not ben's: 404 from his server, and his own list is empty
    for method, path, body in (("POST", f"orion/api/snapshots/{parked['snapshot']}/resume", {}),
                               ("DELETE", f"orion/api/snapshots/{parked['snapshot']}", None)):
        code, refusal = await refused(hub.server_api("ben", method, path, body))
        assert code == 404 and refusal["message"] == f'no snapshot "{parked["snapshot"]}" of yours', refusal
    assert (await hub.server_api("ben", "GET", "orion/api/snapshots"))["snapshots"] == []

    # ben stops; ann resumes on the freed vGPU with her variables back
    await hub.server_api("ben", "DELETE", f"api/kernels/{ben}")
    await eventually_async(lambda: asyncio.sleep(0, pod_users(sim_cluster)), timeout=30, until=lambda users: not users)
    resumed = await hub.server_api("ann", "POST", f"orion/api/snapshots/{parked['snapshot']}/resume", {})
    assert set(resumed["not_restored"]) == {"squares"} and resumed["snapshot_kept"] is False, resumed
    assert pod_users(sim_cluster) == ["ann"]
    assert await kernel_value(hub, "ann", resumed["kernel_id"], "[data.tolist(), shifted(1)]") == before
    assert await kernel_value(hub, "ann", resumed["kernel_id"], "float(np.sqrt(16.0))") == 4.0
    assert not folder.exists()


@pytest.fixture
def pooled_hub(hub_factory, sim_cluster, tmp_path):
    """A warm pool of the spec's shape: its kernel started before anyone claimed it, so it mounts no student's
    storage, where a resume must read its snapshot."""
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 3}}}}", "c.Broker.warm_interval = 0.5",
              "c.Broker.warm_pools = [{'name': 'gpu-1x1gi', 'vgpus': 1, 'memory': '1Gi', 'size': 1}]"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=["ann", "teacher"]) as hub_broker:
        yield hub_broker


@pytest.mark.timeout(300)
async def test_a_resume_is_never_handed_a_pool_kernel(pooled_hub, sim_cluster):
    hub, _broker = pooled_hub
    await hub.wait_for_service(BROKER, "metrics")
    await hub.start_server("ann")
    ann = (await start_vgpu_kernel(hub, "ann", memory="2Gi"))["id"]  # no pool of 1 × 2 GiB: her own pod
    await hub.kernel_ws_execute("ann", ann, "x = 41")
    parked = await hub.server_api("ann", "POST", f"orion/api/kernels/{ann}/park", {})
    assert parked["saved"] == ["x"], parked
    pool = await eventually_async(lambda: hub.server_api("ann", "GET", "orion/api/pool"), timeout=60,
                                  until=lambda p: p.get("warm", {}).get("gpu-1x1gi", {}).get("ready") == 1)
    warm_pods = sorted(p["metadata"]["name"] for p in sim_cluster.objects("pods", NS)
                       if "orion-jupyter.io/warm" in (p["metadata"].get("labels") or {}))
    assert len(warm_pods) == 1, pool

    # the spec's own shape (1 × 1 GiB, the pool's): a fresh pod with her storage, the pool's kernel left waiting
    resumed = await hub.server_api("ann", "POST", f"orion/api/snapshots/{parked['snapshot']}/resume", {})
    assert resumed["restored"] == ["x"] and resumed["not_restored"] == {}, resumed
    assert await kernel_value(hub, "ann", resumed["kernel_id"], "x + 1") == 42
    assert sorted(p["metadata"]["name"] for p in sim_cluster.objects("pods", NS)
                  if "orion-jupyter.io/warm" in (p["metadata"].get("labels") or {})) == warm_pods
    await hub.server_api("ann", "DELETE", f"api/kernels/{resumed['kernel_id']}")

    # a plain launch of the pool's shape is handed the pool's kernel: nowhere of hers to park it, so neither her
    # server nor the broker (idle culling, instructors) parks it; it keeps running, nothing is written
    plain = (await start_vgpu_kernel(hub, "ann"))["id"]
    assert [k["pod"] for k in (await hub.server_api("ann", "GET", "orion/api/allocations"))["kernels"]
            if k["kernel_id"] == plain] == warm_pods
    await hub.kernel_ws_execute("ann", plain, "y = 1")
    code, answer = await refused(hub.server_api("ann", "POST", f"orion/api/kernels/{plain}/park", {}))
    assert code == 409 and "does not mount the snapshot storage" in answer["message"], answer
    token = await hub.server_token("ann")
    code, answer = await refused(hub.service_api(BROKER, "POST", f"api/kernels/{plain}/park", {}, token=token))
    assert code == 409 and "warm pool" in answer["message"], answer
    assert await kernel_value(hub, "ann", plain, "y") == 1
    assert (await hub.server_api("ann", "GET", "orion/api/snapshots"))["snapshots"] == []
