"""Idle culling parks in hub mode, through a real JupyterHub (issue 21's must-show): a course of one vGPU,
ann's kernel holds variables and goes idle while ben waits in the queue; the broker parks ann's kernel
into ann's own storage (her server root, /home/jovyan in kernel pods) and the freed vGPU goes to ben.
An instructor parks one kernel and a whole course from the class view (through their own server, which
asks the broker with their token), `orion-jupyter broker --park-all` parks the rest (a student may do
neither to others), the class view counts what the broker parked, and ann resumes
through her server's REST API with her variables back."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import uuid

import pytest

from orion_jupyter import snapshot
from tests.classroom import BROKER, COURSE, class_hub_with, culling_course, pod_users, refused, start_vgpu_kernel
from tests.helpers import eventually_async

STUDENTS = ["ann", "ben", "cat"]
IDLE_SECONDS = 8
CELL = ("import numpy as np\nx = 42\nrows = np.arange(1000)\ndef double(v):\n    return 2 * v\n"
        "batches = (i for i in range(3))\n")


@pytest.fixture
def parking_hub(hub_factory, sim_cluster, tmp_path):
    config = culling_course(vgpus=1, idle=IDLE_SECONDS, warning=6, keeps=0)
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*STUDENTS, "teacher"]) as hub_broker:
        yield hub_broker


def snapshots_in_home(hub, user: str) -> dict[str, dict]:
    """The snapshots in the user's own storage (their server root), by id: their manifests."""
    folder = hub.home(user) / snapshot.HOME_FOLDER / snapshot.user_part(user)
    if not folder.is_dir():
        return {}
    return {path.name: snapshot.read_manifest(path) for path in folder.iterdir() if snapshot.is_id(path.name)}


async def exempt(hub, kernel_id: str) -> None:
    """Spared from culling, so what the test parks next is parked by the instructor, not by the idle rule."""
    await hub.server_api("teacher", "POST", f"orion/api/kernels/{kernel_id}/exempt", {"exempt": True})


@pytest.mark.timeout(400)
async def test_culling_parks_into_the_students_storage_and_the_vgpu_goes_to_the_next(parking_hub, sim_cluster):
    hub, broker = parking_hub
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(*(hub.start_server(user) for user in [*STUDENTS, "teacher"]))
    tokens = {user: await hub.server_token(user) for user in [*STUDENTS, "teacher"]}

    # ann's kernel holds variables; ben waits for the course's one vGPU
    ann = (await start_vgpu_kernel(hub, "ann"))["id"]
    await hub.kernel_ws_execute("ann", ann, CELL + "print(double(x))")
    row = await eventually_async(lambda: hub.server_api("ann", "GET", "orion/api/allocations"), timeout=20,
                                 until=lambda r: any(k["kernel_id"] == ann and k.get("cull_at") for k in r["kernels"]))
    assert next(k for k in row["kernels"] if k["kernel_id"] == ann)["cull_parks"] is True  # "parks at 10:42"
    bens_id = str(uuid.uuid4())
    ben = asyncio.ensure_future(start_vgpu_kernel(hub, "ben", kernel_id=bens_id))
    await eventually_async(lambda: hub.server_api("ben", "GET", "orion/api/queue"), timeout=30,
                           until=lambda q: [w["position"] for w in q["waiting"]] == [1])

    # idle: parked into ann's own storage, and its vGPU goes to ben
    assert (await asyncio.wait_for(ben, IDLE_SECONDS + 40))["id"] == bens_id
    [(parked_id, manifest)] = snapshots_in_home(hub, "ann").items()
    saved = sorted(n for e in manifest["entries"] for n in e["names"]) + sorted(manifest["modules"])
    assert manifest["owner"] == "ann" and saved == ["double", "rows", "x", "np"]
    assert "generator" in manifest["not_saved"]["batches"] and manifest["kernel"]["parked_by"] == "idle"
    folder = hub.home("ann") / snapshot.HOME_FOLDER / "ann"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    await eventually_async(lambda: asyncio.sleep(0, pod_users(sim_cluster)), timeout=20,
                           until=lambda users: users == ["ben"])
    await exempt(hub, bens_id)

    # a student parks no one else's kernel, nor a course; the instructor parks ben's
    code, answer = await refused(hub.service_api(BROKER, "POST", f"api/kernels/{bens_id}/park", {},
                                                 token=tokens["ann"]))
    assert code == 404 and "of yours" in answer["message"]
    for path, body in (("api/class/park", {"course": COURSE}), ("api/park-all", {})):
        code, answer = await refused(hub.service_api(BROKER, "POST", path, body, token=tokens["ann"]))
        assert code == 403, path
    # the same through ann's own server (its class view's Park): the broker decides with her token
    code, answer = await refused(hub.server_api("ann", "POST", f"orion/api/class/kernels/{bens_id}/park", {}))
    assert code == 404 and "of yours" in answer["message"]
    code, answer = await refused(hub.server_api("ann", "POST", "orion/api/class/park", {"course": COURSE}))
    assert code == 403 and "instructors" in answer["message"]
    # the instructor parks ben's kernel from the class view, through the instructor's own server
    await hub.kernel_ws_execute("ben", bens_id, "y = [1, 2, 3]")
    parked = await hub.server_api("teacher", "POST", f"orion/api/class/kernels/{bens_id}/park", {}, timeout=120)
    assert parked["user"] == "ben" and parked["saved"] == ["y"] and parked["stopped"] is True
    assert snapshots_in_home(hub, "ben")[parked["snapshot"]]["owner"] == "ben"

    # the end of a lab: the instructor parks the whole course (cat's kernel)
    cat = (await start_vgpu_kernel(hub, "cat"))["id"]
    await exempt(hub, cat)
    await hub.kernel_ws_execute("cat", cat, "z = 'lab 3'")
    code, answer = await refused(hub.server_api("teacher", "POST", "orion/api/class/park",
                                                {"course": "no such course"}))
    assert code == 404 and "no such course" in answer["message"]
    course = await hub.server_api("teacher", "POST", "orion/api/class/park", {"course": COURSE}, timeout=120)
    assert [(r["user"], r["kernel_id"]) for r in course["parked"]] == [("cat", cat)] and course["not_parked"] == []
    assert list(snapshots_in_home(hub, "cat")) == [course["parked"][0]["snapshot"]]

    # before maintenance: `orion-jupyter broker --park-all` (the broker's own token) parks every kernel left
    again = (await start_vgpu_kernel(hub, "cat"))["id"]
    await exempt(hub, again)
    await hub.kernel_ws_execute("cat", again, "w = 7")
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orion_jupyter.cli", "broker", "--config",
                                                    str(broker.config), "--park-all"],
                                   env=broker.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cat's kernel {again} as snapshot" in done.stdout and "1 parked, 0 not parked" in done.stdout
    assert len(snapshots_in_home(hub, "cat")) == 2
    await eventually_async(lambda: asyncio.sleep(0, pod_users(sim_cluster)), timeout=20, until=lambda u: u == [])

    # the class view counts what the broker parked, per student; so do the metrics (no user names)
    view = await hub.service_api(BROKER, "GET", "api/class", token=tokens["teacher"])
    assert {r["user"]: r["snapshots"] for r in view["parked"]} == {"ann": 1, "ben": 1, "cat": 2}
    assert next(r for r in view["parked"] if r["user"] == "ann")["last_snapshot"] == parked_id
    assert (await hub.server_api("teacher", "GET", "orion/api/class"))["parked"] == view["parked"]  # the sidebar's
    metrics = await hub.service_api(BROKER, "GET", "metrics", token=tokens["teacher"])
    for trigger in ("idle", "instructor", "course", "maintenance"):
        assert f'orion_jupyter_broker_parks_total{{outcome="ok",trigger="{trigger}"}} 1.0' in metrics, trigger

    # ann resumes through her server (hub mode's resume: the server finds the snapshot in her storage)
    listing = await hub.server_api("ann", "GET", "orion/api/snapshots")
    assert listing["supported"] is True and [s["id"] for s in listing["snapshots"]] == [parked_id], listing
    resumed = await hub.server_api("ann", "POST", f"orion/api/snapshots/{parked_id}/resume", {}, timeout=120)
    assert sorted(resumed["restored"]) == ["double", "np", "rows", "x"] and "batches" in resumed["not_restored"]
    assert await hub.kernel_ws_execute("ann", resumed["kernel_id"], "print(double(x), int(np.sum(rows)))") \
        == "84 499500"
    assert pod_users(sim_cluster) == ["ann"]  # on the course's vGPU again, through the broker like any launch
