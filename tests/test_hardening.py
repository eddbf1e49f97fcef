"""A hostile student against a jupyter_server on the simulated cluster: identities, concurrent
launches, kernel spec trust, gc, and the refusals that must create nothing."""

import asyncio
import json
import uuid

import pytest
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.cli import main as cli
from orion_jupyter.names import slug
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually_async, fetch_json

NS = "class-sec"


class NamedByToken(IdentityProvider):
    """Anyone may claim any name: `Authorization: token as:<name>` (a hub with hostile user names)."""

    def _name(self, handler):
        auth = handler.request.headers.get("Authorization", "")
        return auth[len("token as:"):] if auth.startswith("token as:") else None

    def get_user(self, handler):
        name = self._name(handler)
        return User(username=name) if name else None

    def is_token_authenticated(self, handler):
        return self._name(handler) is not None


@pytest.fixture
def policy():
    return {"max_vgpus_per_user": 2}


@pytest.fixture
def jp_server_config(sim_cluster, policy):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}, "identity_provider_class": NamedByToken},
        "VGPUProvisioner": {"cluster": "kubernetes", "namespace": NS, "launch_timeout": 60.0},
        "KernelPolicy": policy,
        "OrionJupyter": {"instructors": ["teacher"], "activity_report_interval": 0, "usage_sample_interval": 0},
    })


@pytest.fixture
def specs(jp_environ):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name="orion-1x1gi", request=VGPURequest.parse(1, "1Gi")), user=True)


@pytest.fixture
def api(jp_fetch, jp_serverapp, specs, sim_cluster, jp_asyncio_loop):
    async def call(method, path, body=None, user="alice", raw=None, **params):
        kwargs = {"method": method, "headers": {"Authorization": f"token as:{user}"}, "params": params}
        if raw is not None:
            kwargs["body"] = raw
        elif body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT"):
            kwargs["body"] = "{}"
        return await fetch_json(jp_fetch, "orion", "api", *path.split("/"), **kwargs)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


def kernel_objects(cluster):
    return ([p["metadata"]["name"] for p in cluster.objects("pods", NS)],
            [s["metadata"]["name"] for s in cluster.objects("secrets", NS)])


def install_spec(name, **config):
    spec = kernelspecs.VGPUKernelSpec(name=name, request=VGPURequest.parse(1, "1Gi"))
    kernel_json = spec.kernel_json()
    kernel_json["metadata"]["kernel_provisioner"]["config"].update(config)
    env = config.pop("env", None)
    if env is not None:
        kernel_json["metadata"]["kernel_provisioner"]["config"].pop("env")
        kernel_json["env"] = env
    manager = kernelspecs.KernelSpecManager()
    folder = manager.user_kernel_dir + f"/{name}"
    import os

    os.makedirs(folder, exist_ok=True)
    with open(f"{folder}/kernel.json", "w") as handle:
        json.dump(kernel_json, handle)


async def test_a_name_equal_to_another_users_slug_gets_nothing_of_hers(api, sim_cluster):
    victim = "alice@example.com"
    lookalike = slug(victim, 63)  # a valid label value: what the victim's pods are labelled with
    assert lookalike != victim and lookalike.startswith("alice-example-com-")
    code, hers = await api("POST", "kernels", {"spec": "orion-1x1gi"}, user=victim)
    assert code == 201, hers
    pod = hers["vgpu"]["pod_name"]

    code, allocations = await api("GET", "allocations", user=lookalike)
    assert code == 200 and allocations["kernels"] == []
    code, view = await api("GET", "class", user=lookalike)
    assert view["kernels"] == []
    code, _ = await api("GET", "events", user=lookalike, kernel=hers["id"])
    assert code == 404
    code, _ = await api("DELETE", f"class/{pod}", user=lookalike)
    assert code == 404 and kernel_objects(sim_cluster)[0] == [pod]
    # her quota is hers: the lookalike still gets the 2 vGPUs every user may hold
    for _ in range(2):
        code, body = await api("POST", "kernels", {"spec": "orion-1x1gi"}, user=lookalike)
        assert code == 201, body
    code, mine = await api("GET", "class", user=victim)
    assert [k["pod"] for k in mine["kernels"]] == [pod] and mine["kernels"][0]["user"] == victim


async def test_two_launches_with_one_kernel_id_start_one_kernel(api, sim_cluster, jp_serverapp):
    kernel_id = str(uuid.uuid4())
    first, second = await asyncio.gather(
        api("POST", "kernels", {"spec": "orion-1x1gi", "kernel_id": kernel_id}),
        api("POST", "kernels", {"spec": "orion-1x1gi", "kernel_id": kernel_id}, user="bob"))
    codes = sorted([first[0], second[0]])
    assert codes == [201, 409], (first, second)
    refused = first if first[0] == 409 else second
    assert refused[1]["field"] == "kernel_id"
    assert list(jp_serverapp.kernel_manager.list_kernel_ids()) == [kernel_id]
    assert len(kernel_objects(sim_cluster)[0]) == 1
    await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)
    assert kernel_objects(sim_cluster) == ([], [])


async def test_the_per_user_quota_holds_under_concurrent_launches(api, sim_cluster):
    replies = await asyncio.gather(*(api("POST", "kernels", {"spec": "orion-1x1gi"}) for _ in range(4)))
    codes = sorted(code for code, _ in replies)
    assert codes == [201, 201, 400, 400], replies
    assert {body["field"] for code, body in replies if code == 400} == {"vgpus"}
    assert len(kernel_objects(sim_cluster)[0]) == 2


@pytest.mark.parametrize("option, value", [
    ("user", "mallory"), ("host_ipc", True), ("tolerations", [{"operator": "Exists"}]), ("run_as_group", 0),
    ("extra_env", {"NVIDIA_VISIBLE_DEVICES": "all"}), ("node_selector", {"gpu": "a100"}), ("namespace", "kube-system"),
])
async def test_a_students_kernel_spec_cannot_set_identity_or_security(api, sim_cluster, monkeypatch, option, value):
    monkeypatch.setattr("orion_jupyter.settings.KernelSettings.trust_user_kernel_specs", False)
    install_spec("evil", **{option: value})
    code, body = await api("POST", "kernels", {"spec": "evil"})
    assert code == 400 and body["field"] == option, body
    assert "may only be set by the server's own configuration" in body["message"]
    assert kernel_objects(sim_cluster) == ([], [])
    code, specs = await api("GET", "specs")
    [evil] = [s for s in specs["specs"] if s["name"] == "evil"]
    assert evil["can_start"] is False and option in evil["why_not"]


async def test_a_spec_env_template_never_copies_server_variables_into_the_pod(api, sim_cluster, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret-token-of-the-server")
    install_spec("leaky", env={"STOLEN": "${JUPYTERHUB_API_TOKEN}"})
    code, body = await api("POST", "kernels", {"spec": "leaky"})
    assert code == 400 and body["field"] == "env" and "JUPYTERHUB_API_TOKEN" in body["message"], body
    assert kernel_objects(sim_cluster) == ([], [])
    for pod in sim_cluster.objects("pods", NS):
        assert "secret-token-of-the-server" not in json.dumps(pod)


async def test_a_spec_option_of_the_wrong_type_is_a_400(api, sim_cluster):
    install_spec("listy", extra_env=["A=1"])
    code, body = await api("POST", "kernels", {"spec": "listy"})
    assert code == 400 and body["field"] == "extra_env" and "wrong type" in body["message"], body
    assert kernel_objects(sim_cluster) == ([], [])


@pytest.mark.parametrize("body, field", [
    ({"spec": ["orion-1x1gi"]}, "spec"),
    ({"spec": {"name": "orion-1x1gi"}}, "spec"),
    ({"spec": "orion-1x1gi", "compute": "inf"}, "compute"),
    ({"spec": "orion-1x1gi", "path": "../../../../etc/passwd.ipynb"}, "path"),
    ({"spec": "orion-1x1gi", "path": "x" * 400_000}, "path"),
])
async def test_bad_inputs_are_400_with_the_field(api, sim_cluster, jp_serverapp, body, field):
    code, reply = await api("POST", "kernels", body)
    assert code == 400 and reply["field"] == field, reply
    assert kernel_objects(sim_cluster) == ([], []) and list(jp_serverapp.kernel_manager.list_kernel_ids()) == []


async def test_huge_numbers_and_deep_json_are_400(api, sim_cluster):
    code, reply = await api("POST", "kernels", raw='{"spec": "orion-1x1gi", "vgpus": 1' + "0" * 400 + "}")
    assert code == 400 and reply["field"] == "vgpus" and "more than any node has" in reply["message"], reply
    code, reply = await api("POST", "kernels", raw="[" * 100_000 + "]" * 100_000)
    assert code == 400 and "JSON" in reply["message"]
    assert kernel_objects(sim_cluster) == ([], [])


async def test_events_follow_a_launch_while_it_is_starting(api, sim_cluster):
    sim_cluster.faults.schedule_delay = 4.0  # the pod waits for a node: time for a poll on a busy machine
    kernel_id = str(uuid.uuid4())
    launch = asyncio.ensure_future(api("POST", "kernels", {"spec": "orion-1x1gi", "kernel_id": kernel_id}))
    seen, codes = None, []
    while not launch.done():
        code, reply = await api("GET", "events", kernel=kernel_id)
        codes.append(code)
        if code == 200 and reply["events"] and not launch.done():
            seen = reply
            break
        await asyncio.sleep(0.05)
    assert seen is not None, f"events answered only after the launch: {codes}"
    assert seen["events"][0]["message"].startswith("starting a kernel with 1 vGPU · 1 GiB")
    code, _ = await api("GET", "events", user="bob", kernel=kernel_id)
    assert code == 404
    code, started = await launch
    assert code == 201, started


@pytest.mark.parametrize("policy", [{"allowed_images": ["registry.example/allowed:*"]}])
async def test_specs_say_why_a_kernel_cannot_start(api, sim_cluster):
    code, specs = await api("GET", "specs")
    [spec] = specs["specs"]
    assert spec["can_start"] is False and "is not allowed on this server" in spec["why_not"]


async def test_no_slice_larger_than_the_largest_gpu(api, sim_cluster):
    node = sim_cluster.get("nodes", None, "gpu-1")
    node["metadata"].setdefault("labels", {})["nvidia.com/gpu.memory"] = "16384"  # GPU feature discovery's label
    sim_cluster.store.replace("nodes", None, "gpu-1", node)
    await eventually_async(lambda: api("GET", "pool"), until=lambda reply: reply[0] == 200 and
                           reply[1]["nodes"][0].get("device_memory_mib") == 16384)
    code, reply = await api("POST", "kernels", {"spec": "orion-1x1gi", "memory": "200Gi"})
    assert code == 409, reply
    assert reply["message"] == ("Not enough vGPU memory: this kernel asks 200 GiB per vGPU, and the largest device "
                                "here has 16 GiB. Ask for less vGPU memory.")
    assert kernel_objects(sim_cluster) == ([], [])


def test_gc_leaves_a_launch_in_progress_alone(sim_cluster, capsys):
    from orion_jupyter.backends import get_backend
    from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests

    launching = build_kernel_manifests(KernelPodOptions(
        kernel_id="launching", user="dana", request=VGPURequest(1, 1024), backend=get_backend("orion"),
        image="img", namespace="lab", connection_info={"key": "k", "shell_port": 1}, name_suffix="s"))
    sim_cluster.create_object("secrets", "lab", launching.secret)  # its Pod comes a moment later
    assert cli(["gc", "--namespace", "lab"]) == 0
    assert sim_cluster.get("secrets", "lab", launching.name) is not None
    assert "Nothing to collect" in capsys.readouterr().out
    assert cli(["gc", "--namespace", "lab", "--min-age", "0"]) == 0
    assert sim_cluster.get("secrets", "lab", launching.name) is None


async def test_a_container_that_cannot_start_says_why(sim_cluster, vgpu_spec):
    from jupyter_client.manager import AsyncKernelManager

    from orion_jupyter.errors import KernelLaunchError

    config = Config({"VGPUProvisioner": {"cluster": "kubernetes", "namespace": NS, "kernel_python": "python-not-here",
                                         "launch_timeout": 30.0}})
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-nopython", 1, "1Gi"), config=config)
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    assert caught.value.reason == "exited"
    assert str(caught.value).startswith("the kernel exited with code 128 before it was ready (StartError: ")
    assert 'exec: "python-not-here": executable file not found in $PATH' in str(caught.value)
    assert kernel_objects(sim_cluster) == ([], [])
