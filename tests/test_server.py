"""The server extension with a real jupyter_server on the simulated cluster."""

import asyncio
import json
import re

import pytest
from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually_async, fetch_json

NS = "class-ai101"
TOKENS = {"alice-token": "alice", "bob-token": "bob", "teacher-token": "teacher"}


class TokenUsers(IdentityProvider):
    """Three people on one server, told apart by their tokens."""

    def _name(self, handler):
        auth = handler.request.headers.get("Authorization", "")
        return TOKENS.get(auth[6:] if auth.lower().startswith("token ") else "")

    def get_user(self, handler):
        name = self._name(handler)
        return User(username=name) if name else None

    def is_token_authenticated(self, handler):
        return self._name(handler) is not None


def as_user(name: str) -> dict:
    return {"Authorization": f"token {name}-token"}


def server_config(orion: dict | None = None, **sections: dict) -> Config:
    """The extension on the simulated cluster's namespace NS, users by token, "teacher" an instructor."""
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True},
                      "identity_provider_class": TokenUsers, "authenticate_prometheus": False},
        "VGPUProvisioner": {"cluster": "kubernetes", "namespace": NS, "launch_timeout": 60.0},
        "OrionJupyter": {"instructors": ["teacher"], "activity_report_interval": 0, **(orion or {})},
        **sections,
    })


@pytest.fixture
def jp_server_config(sim_cluster):
    return server_config(KernelPolicy={"max_vgpus": 2})


@pytest.fixture
def specs(jp_environ):
    for name, vgpus, memory in (("orion-1x4gi", 1, "4Gi"), ("orion-2x8gi", 2, "8Gi")):
        kernelspecs.install(kernelspecs.VGPUKernelSpec(name=name, request=VGPURequest.parse(vgpus, memory)), user=True)


@pytest.fixture
def api(jp_fetch, jp_serverapp, specs, sim_cluster, jp_asyncio_loop):
    async def call(method: str, path: str, body=None, user: str = "alice", **params):
        kwargs = {"method": method, "headers": as_user(user), "params": params}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT"):
            kwargs["body"] = "{}"
        return await fetch_json(jp_fetch, "orion", "api", *path.split("/"), **kwargs)

    yield call
    # stop kernels while the cluster still runs (the server's own cleanup comes after it is gone)
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


def kernel_pods(cluster):
    return [p for p in cluster.objects("pods", NS)
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "orion-jupyter"]


async def test_kernels_allocations_pool_and_specs(api, sim_cluster, jp_fetch):
    code, pool = await api("GET", "pool")
    assert code == 200
    assert pool["totals"]["virtaitech.com/gpu"] == {"allocatable": 4, "allocated": 0, "free": 4, "others": 0}

    chosen_id = "0b6f2f7e-3a51-4c7e-9a55-1d2b3c4d5e6f"  # a UI picks the id to follow events while pending
    code, small = await api("POST", "kernels", {"spec": "orion-1x4gi", "memory": "2Gi", "kernel_id": chosen_id})
    assert code == 201 and small["id"] == chosen_id, small
    code, large = await api("POST", "kernels", {"spec": "orion-1x4gi", "memory": "6Gi", "path": "lab1.ipynb"})
    assert code == 201, large

    code, body = await api("GET", "allocations")
    by_id = {k["kernel_id"]: k for k in body["kernels"]}
    assert by_id[small["id"]]["memory_mib"] == 2048 and by_id[large["id"]]["memory_mib"] == 6144
    for kernel in by_id.values():
        assert kernel["node"] == "gpu-1" and kernel["vgpus"] == 1 and kernel["backend"] == "orion"
        assert kernel["user"] == "alice" and kernel["phase"] == "Running" and kernel["pod"].startswith("orion-alice-")

    code, pool = await api("GET", "pool")
    assert pool["totals"]["virtaitech.com/gpu"]["free"] == 2
    assert pool["nodes"][0]["name"] == "gpu-1"

    code, body = await api("GET", "specs")
    specs = {s["name"]: s for s in body["specs"]}
    assert specs["orion-1x4gi"]["can_start"] is True and specs["orion-2x8gi"]["can_start"] is True

    # the pool fills up: a spec that needs more than is free is marked, and a start is refused at once
    code, third = await api("POST", "kernels", {"spec": "orion-2x8gi"})
    assert code == 201, third
    code, body = await api("GET", "specs")
    assert {s["name"]: s["can_start"] for s in body["specs"]} == {"orion-1x4gi": False, "orion-2x8gi": False}
    code, refused = await api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert code == 409
    assert refused["message"].startswith(
        "Not enough vGPUs free: this kernel needs 1 vGPU; 0 of 4 are free right now (4 in use).")
    assert len(kernel_pods(sim_cluster)) == 3

    # launch progress of a kernel (events may still trickle in after it is ready)
    code, events = await eventually_async(
        lambda: api("GET", "events", kernel=small["id"]), timeout=5, interval=0.1,
        until=lambda reply: any(e["message"].startswith("Started: ") for e in reply[1]["events"]))
    messages = [e["message"] for e in events["events"]]
    assert messages[0] == "starting a kernel with 1 vGPU · 2 GiB (kubernetes)"
    assert any(m.startswith("Scheduled: Successfully assigned") for m in messages)
    assert any(m.startswith("kernel ready after") for m in messages)
    code, later = await api("GET", "events", kernel=small["id"], after=events["events"][-1]["seq"])
    assert later["events"] == []

    # shut everything down through Jupyter's own API: the pool recovers, nothing is left
    for kernel in (small, large, third):
        await jp_fetch("api", "kernels", kernel["id"], method="DELETE", headers=as_user("alice"))
    code, pool = await api("GET", "pool")
    assert pool["totals"]["virtaitech.com/gpu"]["free"] == 4
    assert kernel_pods(sim_cluster) == [] and sim_cluster.objects("secrets", NS) == []


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({}, "spec", 'field "spec" is missing; name a vGPU kernel spec (see GET specs)'),
        ({"spec": "orion-1x4gi", "memory": "lots"}, "memory",
         'vGPU memory "lots" is not a size; use a number of MiB or a value like 4Gi'),
        ({"spec": "orion-1x4gi", "vgpus": -1}, "vgpus", "vGPU count -1 is negative; use 0 for CPU only, or 1, 2, ..."),
        ({"spec": "orion-1x4gi", "vgpus": 3}, "vgpus",
         "vGPU count 3 is over this server's limit of 2 per kernel; ask for 2 or fewer"),
        ({"spec": "nope"}, "spec", 'no kernel spec named "nope"; choose one of: orion-1x4gi, orion-2x8gi'),
        ({"spec": "echo"}, "spec", 'kernel spec "echo" is not a vGPU spec; choose one of: orion-1x4gi, orion-2x8gi'),
        ({"spec": "orion-1x4gi", "gpus": 2}, "gpus",
         'field "gpus" is not known; use spec, vgpus, memory, compute, path, kernel_id'),
        ({"spec": "orion-1x4gi", "kernel_id": "../x"}, "kernel_id",
         "field \"kernel_id\" '../x' is not a UUID; leave it out or send a new UUID"),
    ],
)
async def test_bad_requests_are_400_and_create_nothing(api, sim_cluster, jp_serverapp, body, field, message):
    code, reply = await api("POST", "kernels", body)
    assert code == 400 and reply == {"message": message, "field": field}
    assert kernel_pods(sim_cluster) == [] and sim_cluster.objects("secrets", NS) == []
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []
    assert sim_cluster.count_requests(verb="create") == 0


async def test_a_backend_without_snapshots_says_so_and_parks_nothing(api, sim_cluster, jp_serverapp):
    """On Kubernetes without storage for snapshots nothing is parked: the list says so and why (the page stops
    asking) and a park is 501, the kernel still running."""
    code, body = await api("GET", "snapshots")
    assert (code, body["snapshots"], body["supported"]) == (200, [], False)
    assert "c.VGPUProvisioner.volumes" in body["reason"], body
    assert "(c.Snapshots.location and c.Snapshots.kernel_location not set)" in body["reason"], body
    code, kernel = await api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert code == 201, kernel
    code, refused = await api("POST", f"kernels/{kernel['id']}/park")
    assert code == 501 and refused["message"] == body["reason"], refused
    assert kernel["id"] in jp_serverapp.kernel_manager


async def test_not_json_is_400(api, jp_fetch):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("orion", "api", "kernels", method="POST", body="{nope", headers=as_user("alice"))
    assert caught.value.code == 400


async def test_authentication_and_who_sees_what(api, jp_fetch, sim_cluster):
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("orion", "api", "allocations", headers={"Authorization": ""})
    assert caught.value.code == 403
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("orion", "api", "kernels", method="POST", body="{}", headers={"Authorization": "token wrong"})
    assert caught.value.code == 403
    assert kernel_pods(sim_cluster) == []

    code, alices = await api("POST", "kernels", {"spec": "orion-1x4gi"}, user="alice")
    assert code == 201
    pod = alices["vgpu"]["pod_name"]

    code, bob_view = await api("GET", "class", user="bob")
    assert bob_view == {"kernels": [], "instructor": False, "budgets": [], "parked": []}
    code, _ = await api("GET", "allocations", user="bob")
    assert _["kernels"] == []
    code, _ = await api("GET", "events", user="bob", kernel=alices["id"])
    assert code == 404
    code, refused = await api("DELETE", f"class/{pod}", user="bob")
    assert code == 404 and len(kernel_pods(sim_cluster)) == 1

    code, alice_view = await api("GET", "class", user="alice")
    assert [k["pod"] for k in alice_view["kernels"]] == [pod]
    code, teacher_view = await api("GET", "class", user="teacher")
    assert teacher_view["instructor"] is True
    [kernel] = teacher_view["kernels"]
    assert (kernel["user"], kernel["node"], kernel["vgpus"], kernel["memory_mib"]) == ("alice", "gpu-1", 1, 4096)
    assert kernel["idle_seconds"] is not None

    code, stopped = await api("DELETE", f"class/{pod}", user="teacher")
    assert code == 200 and stopped == {"stopped": pod, "user": "alice"}
    assert kernel_pods(sim_cluster) == [] and sim_cluster.objects("secrets", NS) == []


async def test_instructor_stops_a_kernel_of_another_server(api, sim_cluster, jp_serverapp):
    """A pod of another student's server (same namespace): marked, deleted, never restarted."""
    from orion_jupyter.backends import get_backend
    from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests

    manifests = build_kernel_manifests(KernelPodOptions(
        kernel_id="other-server-kernel", user="carol", request=VGPURequest.parse(1, "4Gi"),
        backend=get_backend("orion"), image="img", namespace=NS, connection_info={"key": "k", "shell_port": 1},
        name_suffix="x1"))
    sim_cluster.create_object("secrets", NS, manifests.secret)
    sim_cluster.create_object("pods", NS, {**manifests.pod, "spec": {**manifests.pod["spec"], "containers": [
        {**manifests.pod["spec"]["containers"][0], "command": ["sleep", "60"], "readinessProbe": None}]}})
    code, view = await api("GET", "class", user="teacher")
    assert "orion-carol-" in view["kernels"][0]["pod"]
    code, _ = await api("DELETE", f"class/{manifests.name}", user="teacher")
    assert code == 200
    # graceful deletion: SIGTERM, then the pod goes
    await eventually_async(lambda: sim_cluster.get("pods", NS, manifests.name), timeout=5,
                           until=lambda pod: pod is None)
    assert sim_cluster.get("pods", NS, manifests.name) is None
    assert sim_cluster.get("secrets", NS, manifests.name) is None
    # the watch saw who stopped it: a server owning that kernel would refuse to restart it
    [cluster] = jp_serverapp.web_app.settings["orion_jupyter_state"].view.clusters
    await eventually_async(lambda: cluster.stopped_by, timeout=5, until=lambda seen: "other-server-kernel" in seen)
    assert cluster.stopped_by["other-server-kernel"] == "teacher"


async def test_metrics_show_the_state(api, jp_fetch):
    code, kernel = await api("POST", "kernels", {"spec": "orion-2x8gi", "memory": "3Gi"})
    assert code == 201
    await api("POST", "kernels", {"spec": "orion-2x8gi", "vgpus": 2, "memory": "8Gi"})  # refused: 2 + 2 > 4? no: fits
    code, _ = await api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert code == 409  # the pool is full
    text = (await jp_fetch("metrics", method="GET")).body.decode()
    values = dict(re.findall(r"^(orion_jupyter_\S+) (\S+)$", text, re.M))
    assert float(values['orion_jupyter_vgpu_allocated{backend="orion"}']) == 4
    assert float(values['orion_jupyter_vgpu_memory_allocated_bytes{backend="orion"}']) == (2 * 3 + 2 * 8) * 1024**3
    assert float(values['orion_jupyter_pool_vgpu_free{resource="virtaitech.com/gpu"}']) == 0
    assert float(values['orion_jupyter_kernel_launch_seconds_count{outcome="success"}']) >= 2
    assert "orion_jupyter_kernel_launch_seconds_bucket" in text


async def test_allocations_and_pool_make_no_api_requests(api, sim_cluster):
    code, kernel = await api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert code == 201
    sim_cluster.reset_requests()
    for _ in range(10):
        assert (await api("GET", "allocations"))[0] == 200
        assert (await api("GET", "pool"))[0] == 200
        assert (await api("GET", "specs"))[0] == 200
        assert (await api("GET", "class", user="teacher"))[0] == 200
    assert [r for r in sim_cluster.requests if not r.watch] == []


@pytest.mark.torch
@pytest.mark.slow
async def test_demo_mnist_runs_headless_on_a_vgpu_kernel(api, jp_root_dir, tmp_path):
    """POST demos/mnist {"run": true}: notebooks/mnist.ipynb executes on a vGPU pod of the simulated cluster."""
    from orion_jupyter.demos import mnist

    data = tmp_path / "digits"
    mnist.write_digits_dataset(data)
    spec = kernelspecs.VGPUKernelSpec(name="orion-demo", request=VGPURequest.parse(1, "2Gi"), options={"extra_env": {
        "ORION_DEMO_EPOCHS": "2", "ORION_DEMO_LIMIT": "600", "ORION_JUPYTER_DATA_DIR": str(data),
        "ORION_DEMO_OFFLINE_FALLBACK": "0"}})
    kernelspecs.install(spec, user=True)

    code, demos = await api("GET", "demos")
    assert [d["name"] for d in demos["demos"]] == ["mnist", "facenet"]
    code, started = await api("POST", "demos/mnist", {"spec": "orion-demo", "run": True})
    assert code == 201, started
    assert started["path"] == "orion-demos/mnist.ipynb" and (jp_root_dir / "orion-demos" / "mnist.ipynb").exists()
    assert started["kernel"]["vgpu"]["memory_mib"] == 2048

    code, body = await eventually_async(
        lambda: api("GET", "events", kernel=started["kernel_id"]), timeout=300, interval=0.5,
        until=lambda reply: any(e.get("finished") for e in reply[1]["events"]))
    events = body["events"]
    final = events[-1]
    assert final.get("finished") and final["level"] == "info", events[-3:]
    assert final["message"] == ("finished: wrote orion-demos/mnist.executed.ipynb; its kernel is stopped and its vGPU "
                                "free again")
    code, kernels = await api("GET", "allocations")
    assert started["kernel_id"] not in [k["kernel_id"] for k in kernels["kernels"]]  # its slot is not kept
    assert any(e["message"].startswith("cell 1/") for e in events)

    executed = json.loads((jp_root_dir / "orion-demos" / "mnist.executed.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    accuracies = [float(a) for a in re.findall(r"epoch \d/2: loss [\d.]+, test accuracy (\d+\.\d+)%", text)]
    assert len(accuracies) == 2 and accuracies[-1] > 50, text[-2000:]  # chance is 10%
    assert "gpu-1" in text  # the allocation summary names the simulated node

    # placing the demo again keeps the user's edited copy
    edited = jp_root_dir / "orion-demos" / "mnist.ipynb"
    edited.write_text(edited.read_text().replace("# MNIST on a vGPU", "# my MNIST"))
    code, again = await api("POST", "demos/mnist", {"spec": "orion-demo"})
    assert code == 201 and "# my MNIST" in edited.read_text()


def test_instructors_by_name_or_jupyterhub_group(jp_serverapp, specs):
    state = jp_serverapp.web_app.settings["orion_jupyter_state"]
    state.app.instructor_groups = ["instructors"]

    class HubUser(User):
        pass

    grader = HubUser(username="grader")
    grader.hub_user = {"name": "grader", "groups": ["instructors", "students"]}
    student = HubUser(username="sam")
    student.hub_user = {"name": "sam", "groups": ["students"]}
    assert state.is_instructor(User(username="teacher"))
    assert state.is_instructor(grader) and not state.is_instructor(student)
    assert not state.is_instructor(User(username="alice"))


async def test_last_activity_reaches_the_pod_for_idle_time(api, sim_cluster, jp_serverapp):
    code, kernel = await api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert code == 201
    state = jp_serverapp.web_app.settings["orion_jupyter_state"]
    await asyncio.sleep(1.0)  # let the new kernel's start-up status messages settle
    sim_cluster.reset_requests()
    await state.report_activity()
    await state.report_activity()  # nothing changed: no second PATCH
    assert sim_cluster.count_requests(verb="patch", resource="pods") == 1
    pod = sim_cluster.get("pods", NS, kernel["vgpu"]["pod_name"])
    stamp = pod["metadata"]["annotations"]["orion-jupyter.io/last-activity"]
    code, view = await eventually_async(lambda: api("GET", "class", user="teacher"), timeout=5,
                                        until=lambda reply: reply[1]["kernels"][0]["last_activity"] == stamp)
    assert view["kernels"][0]["last_activity"] == stamp and view["kernels"][0]["idle_seconds"] >= 0
