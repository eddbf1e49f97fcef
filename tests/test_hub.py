"""Hub mode end to end: a real JupyterHub, the vGPU broker as its service on the simulated cluster,
single-user servers with no cluster credentials, two students and an instructor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from tests.classroom import BROKER, COURSE, NS, class_hub_with, kernel_objects, start_vgpu_kernel
from tests.helpers import eventually_async
from tests.hub import HubHTTPError


@pytest.fixture
def class_hub(hub_factory, sim_cluster, tmp_path):
    with class_hub_with(hub_factory, sim_cluster, tmp_path, [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 3}}}}"],
                        users=["alice", "bob", "carol", "teacher"]) as (hub, broker):
        yield hub, broker


async def test_hub_mode_end_to_end(class_hub, sim_cluster):
    hub, broker = class_hub
    await hub.wait_for_service(BROKER, "metrics")
    for user in ("alice", "bob", "teacher"):
        await hub.start_server(user)
    (hub.home("alice") / "data.csv").write_text("alice-rows")
    (hub.home("bob") / "data.csv").write_text("bob-rows")

    # the student servers hold no cluster credentials
    for user in ("alice", "bob"):
        env = await hub.server_env(user)
        assert "KUBERNETES_SERVICE_HOST" not in env and not Path(env.get("KUBECONFIG", "/nonexistent")).exists()
        assert sim_cluster.kubeconfig_path not in json.dumps(env)
        assert not (hub.home(user) / ".kube").exists()

    # alice through the orion REST API, bob through Jupyter's own kernels API
    alices = await start_vgpu_kernel(hub, "alice")
    bobs = await hub.server_api("bob", "POST", "api/kernels", {"name": "orion-1x1gi"})
    code = "import os; print(os.environ['ORION_GMEM'], os.environ['ORION_JUPYTER_USER'], open('data.csv').read())"
    assert await hub.kernel_ws_execute("alice", alices["id"], code) == "1024 alice alice-rows"
    assert await hub.kernel_ws_execute("bob", bobs["id"], code) == "1024 bob bob-rows"
    objects = kernel_objects(sim_cluster)
    assert len(objects["pods"]) == 2 and sorted(objects["networkpolicies"]) == sorted(objects["pods"])

    # each sees only their own kernel
    for user, kernel in (("alice", alices), ("bob", bobs)):
        allocations = await hub.server_api(user, "GET", "orion/api/allocations")
        assert [k["kernel_id"] for k in allocations["kernels"]] == [kernel["id"]]
        assert allocations["cluster"] == "broker" and allocations["kernels"][0]["user"] == user

    # the broker decides who is who: a student's token gets 403 from the class view, names no one else
    alice_token = await hub.server_token("alice")
    with pytest.raises(HubHTTPError) as caught:
        await hub.service_api(BROKER, "GET", "api/class", token=alice_token)
    assert caught.value.code == 403
    forged = {"kernel_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "user": "bob", "vgpus": 1, "memory": "1Gi",
              "key": "0" * 32, "ports": {"shell_port": 45001, "iopub_port": 45002, "stdin_port": 45003,
                                        "control_port": 45004, "hb_port": 45005}}
    with pytest.raises(HubHTTPError) as caught:
        await hub.service_api(BROKER, "POST", "api/kernels", forged, token=alice_token)
    assert caught.value.code == 400 and json.loads(caught.value.body)["field"] == "user"
    with pytest.raises(HubHTTPError) as caught:
        await hub.service_api(BROKER, "DELETE", f"api/kernels/{bobs['id']}", token=alice_token)
    assert caught.value.code == 404
    with pytest.raises(HubHTTPError) as caught:
        await hub.service_api(BROKER, "GET", "api/kernels", token="not-a-token")
    assert caught.value.code == 403

    # the instructor sees both and stops bob's
    view = await hub.server_api("teacher", "GET", "orion/api/class")
    assert view["instructor"] is True
    rows = {row["user"]: row for row in view["kernels"]}
    assert set(rows) == {"alice", "bob"}
    stopped = await hub.server_api("teacher", "DELETE", f"orion/api/class/{rows['bob']['pod']}")
    assert stopped["user"] == "bob"
    await eventually_async(lambda: asyncio.sleep(0, kernel_objects(sim_cluster)),
                           until=lambda objs: len(objs["pods"]) == 1 and len(objs["networkpolicies"]) == 1)

    # stopping alice's server from the hub leaves none of her kernel objects
    await hub.stop_server("alice")
    await eventually_async(lambda: asyncio.sleep(0, kernel_objects(sim_cluster)), timeout=20,
                           until=lambda objs: objs == {"pods": [], "secrets": [], "networkpolicies": []})


async def test_course_quota_under_concurrent_launches_and_a_broker_restart(class_hub, sim_cluster):
    hub, broker = class_hub
    await hub.wait_for_service(BROKER, "metrics")
    students = ("alice", "bob", "carol")
    for user in students:
        await hub.start_server(user)

    async def launch(user):
        try:
            return 201, await start_vgpu_kernel(hub, user)
        except HubHTTPError as err:
            return err.code, json.loads(err.body)

    replies = await asyncio.gather(*(launch(user) for user in students for _ in range(2)))
    started = [body for code, body in replies if code == 201]
    refused = [body for code, body in replies if code != 201]
    assert len(started) == 3, replies  # the course may hold 3 vGPUs
    assert all(body["field"] == "vgpus" and f"course {COURSE}" in body["message"] for body in refused), refused
    assert len(kernel_objects(sim_cluster)["pods"]) == 3

    # the broker dies; a student's server dies with nobody to clean up; the broker comes back
    broker.kill()
    victim = next(user for user in students if any(k["vgpu"]["user"] == user for k in started))
    os.kill(await hub.server_pid(victim), signal.SIGKILL)
    await hub.stop_server(victim)
    left_by_victim = [p for p in sim_cluster.objects("pods", NS)
                      if p["metadata"]["annotations"]["orion-jupyter.io/user"] == victim]
    assert left_by_victim  # nobody has cleaned them yet
    broker.start(hub.api_url)
    await hub.wait_for_service(BROKER, "metrics")
    await eventually_async(lambda: asyncio.sleep(0, sim_cluster.objects("pods", NS)), timeout=20,
                           until=lambda pods: not any(p["metadata"]["annotations"]["orion-jupyter.io/user"] == victim
                                                      for p in pods))
    survivors = {p["metadata"]["annotations"]["orion-jupyter.io/user"] for p in sim_cluster.objects("pods", NS)}
    assert victim not in survivors and survivors  # the others' kernels were re-adopted, not reaped
    lease = sim_cluster.get("leases", NS, "orion-broker")
    for pod in sim_cluster.objects("pods", NS):
        assert pod["metadata"]["ownerReferences"][0]["uid"] == lease["metadata"]["uid"]
