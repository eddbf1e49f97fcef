"""The dra and kai backends end to end: jupyter_client's AsyncKernelManager with vGPU kernel specs on the
simulated cluster (real ipykernels in "pod" processes), its DRA allocator on HAMi-style slices and MIG
devices, and its KAI Scheduler stand-in; the pool and class view through a real jupyter_server."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from kubesim import SimCluster, SimNode
from kubesim import dra as simdra
from kubesim.kai import KaiQueue, KaiScheduler
from orion_jupyter import kernelspecs
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.k8s import claims, dra
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually, eventually_async, k8s_config
from tests.kernel_io import run_in_kernel

NS = "class-ai101"
GIB = 1024
HAMI = "hami-core-gpu.project-hami.io"
NVIDIA = "gpu.nvidia.com"
MANAGED = "app.kubernetes.io/managed-by"


def ours(cluster: SimCluster, kind: str) -> list[dict]:
    return [o for o in cluster.objects(kind, NS) if (o["metadata"].get("labels") or {}).get(MANAGED) == "orion-jupyter"]


def hami_cluster() -> SimCluster:
    """One node (process kubelet) whose 2 GPUs × 24 GiB are offered as HAMi-style DRA slices."""
    cluster = SimCluster(nodes=[SimNode("gpu-1")], python=sys.executable).start()
    cluster.create_object("deviceclasses", None, simdra.device_class(HAMI, HAMI))
    cluster.create_object("resourceslices", None, simdra.resource_slice(
        "gpu-1", HAMI, [simdra.shared_gpu(f"gpu-{i}", "24Gi") for i in range(2)]))
    return cluster


def mig_and_hami_cluster() -> SimCluster:
    """gpu-1: one GPU in MIG mode (one 1g.10gb instance) and one 80 GiB GPU shared through HAMi."""
    cluster = SimCluster(nodes=[SimNode("gpu-1")], python=sys.executable).start()
    cluster.create_object("deviceclasses", None, simdra.device_class(
        "mig.nvidia.com", NVIDIA, ["device.attributes['gpu.nvidia.com'].type == 'mig'"]))
    cluster.create_object("deviceclasses", None, simdra.device_class(HAMI, HAMI))
    cluster.create_object("resourceslices", None, simdra.resource_slice("gpu-1", NVIDIA, [
        simdra.exclusive_device("gpu-0-mig-1g10gb-0", "9984Mi", type="mig", profile="1g.10gb")]))
    cluster.create_object("resourceslices", None, simdra.resource_slice(
        "gpu-1", HAMI, [simdra.shared_gpu("gpu-1", "80Gi")]))
    return cluster


def _use(cluster: SimCluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    claims.forget_templates()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert cluster.running_processes() == [], "pod processes outlived the simulated cluster"


@pytest.fixture
def hami(monkeypatch):
    yield from _use(hami_cluster(), monkeypatch)


@pytest.fixture
def mig_hami(monkeypatch):
    yield from _use(mig_and_hami_cluster(), monkeypatch)


def claim_of(cluster: SimCluster, km: AsyncKernelManager) -> dict:
    """The ResourceClaim Kubernetes made for the kernel's pod (owned by it)."""
    pod = cluster.get("pods", NS, km.provisioner.handle.name)
    (claim,) = claims.owned_claims(pod, cluster.objects("resourceclaims", NS))
    return claim


def granted(cluster: SimCluster, km: AsyncKernelManager) -> dict:
    (device,) = dra.granted_devices(claim_of(cluster, km))
    return device


async def started(spec: str, config: Config, **vgpu) -> AsyncKernelManager:
    km = AsyncKernelManager(kernel_name=spec, config=config)
    await km.start_kernel(**({"vgpu": vgpu} if vgpu else {}))
    return km


ENV_CODE = ("import os; print(os.environ['ORION_JUPYTER_BACKEND'], os.environ['ORION_JUPYTER_VGPU_MEMORY_MIB'], "
            "os.environ['ORION_JUPYTER_MEMORY_CAP'])")


# ---------------------------------------------------------------- dra: HAMi slices


async def test_hami_slices_share_a_gpu_a_kernel_that_fits_nowhere_is_refused_at_once(hami, vgpu_spec):
    spec = vgpu_spec("dra-1x4gi", 1, "4Gi", backend="dra")
    config = k8s_config()
    kernels: dict[int, AsyncKernelManager] = {}
    try:
        for gib in (4, 8, 12):  # 24 GiB: all three on gpu-0, where they fit
            kernels[gib] = await started(spec, config, memory=f"{gib}Gi")
            device = granted(hami, kernels[gib])
            assert (device["driver"], device["node"], device["device"]) == (HAMI, "gpu-1", "gpu-0")
            assert device["memory_mib"] == gib * GIB and device["share_id"]
        assert await run_in_kernel(kernels[4], ENV_CODE) == "dra 4096 enforced"  # the kernel really runs
        pod = hami.get("pods", NS, kernels[8].provisioner.handle.name)
        template_name = pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"]
        assert pod["spec"]["containers"][0]["resources"]["claims"] == [{"name": "vgpu"}]
        assert hami.get("resourceclaimtemplates", NS, template_name)["spec"]["spec"]["devices"]["requests"][0][
            "exactly"]["capacity"]["requests"] == {"memory": "8Gi"}
        kernels[20] = await started(spec, config, memory="20Gi")
        assert granted(hami, kernels[20])["device"] == "gpu-1"

        # the pool: what is left per GPU (KubernetesView.pool(), from the ResourceSlices and the claims)
        view = kernels[4].provisioner.driver.view

        async def free_per_gpu():
            pool = await view.pool()
            return {d.name: d.memory_free_mib for n in pool.nodes for d in n.devices}

        await eventually_async(free_per_gpu, until=lambda free: free == {"gpu-0": 0, "gpu-1": 4 * GIB})
        pool = await view.pool()
        assert pool.source == "dra" and pool.totals()[dra.DRA_MEMORY].free == 4 * GIB

        # 8 GiB more fits on no GPU: the scheduler's refusal ends the launch at once, naming what was short
        begin = time.monotonic()
        with pytest.raises(KernelLaunchError) as refused:
            await started(spec, config, memory="8Gi")
        assert refused.value.reason == "unschedulable"
        assert str(refused.value).startswith(
            f"Not enough vGPU free: this kernel asks for 1 share of 8 GiB ({HAMI}): "
            "the most free on one GPU is 4 GiB (gpu-1/gpu-1)."), str(refused.value)
        assert 'scheduler: "0/1 nodes are available: 1 cannot allocate all claims."' in str(refused.value)
        assert time.monotonic() - begin < 10, "the refusal comes from the scheduler, not the 60 s launch timeout"
        eventually(lambda: len(ours(hami, "pods")) == len(ours(hami, "secrets")) == len(ours(hami, "resourceclaims"))
                   == 4, message="the refused kernel left a pod, Secret or claim behind")

        # a slice larger than any GPU is refused before anything is created
        pods_before = len(hami.objects("pods", NS))
        with pytest.raises(KernelLaunchError) as oversize:
            await started(spec, config, memory="32Gi")
        assert oversize.value.reason == "unschedulable"
        assert "asks 32 GiB per vGPU, and the largest device here has 24 GiB" in str(oversize.value)
        assert len(hami.objects("pods", NS)) == pods_before
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kernels.values()))
    # shutdown: the pods and their claims go, the templates stay for the next kernels
    eventually(lambda: not ours(hami, "pods") and not ours(hami, "secrets") and not hami.objects("resourceclaims", NS),
               message="pods, Secrets or claims left after shutdown")
    templates = sorted(t["metadata"]["name"].split("-")[2] for t in hami.objects("resourceclaimtemplates", NS))
    assert templates == ["1x12gi", "1x20gi", "1x4gi", "1x8gi"]


async def test_a_claim_template_the_server_may_not_create_says_which_rbac_is_missing(hami, vgpu_spec):
    hami.faults.forbid("create", "resourceclaimtemplates", cluster_scope=False)
    with pytest.raises(KernelLaunchError) as refused:
        await started(vgpu_spec("dra-1x4gi", 1, "4Gi", backend="dra"), k8s_config())
    assert refused.value.reason == "api"
    assert "orion-jupyter manifests --backend dra --namespace class-ai101" in str(refused.value)
    assert ours(hami, "pods") == [] and ours(hami, "secrets") == []


async def test_a_template_deleted_behind_the_servers_back_is_made_again(hami, vgpu_spec):
    spec = vgpu_spec("dra-1x4gi", 1, "4Gi", backend="dra")
    first = await started(spec, k8s_config())
    second = None
    try:
        (template,) = hami.objects("resourceclaimtemplates", NS)
        hami.delete_object("resourceclaimtemplates", NS, template["metadata"]["name"])
        second = await started(spec, k8s_config())  # FailedResourceClaimCreation: the launch creates it again
        assert granted(hami, second)["memory_mib"] == 4 * GIB
        assert [t["metadata"]["name"] for t in hami.objects("resourceclaimtemplates", NS)] == [
            template["metadata"]["name"]]
    finally:
        await first.shutdown_kernel(now=True)
        if second is not None:
            await second.shutdown_kernel(now=True)


async def test_a_kernel_waits_for_a_gpu_with_wait_for_capacity(hami, vgpu_spec):
    spec = vgpu_spec("dra-1x24gi", 1, "24Gi", backend="dra")
    first = await started(spec, k8s_config())
    second = AsyncKernelManager(kernel_name=spec, config=k8s_config())
    third = AsyncKernelManager(kernel_name=spec, config=k8s_config(wait_for_capacity=True))
    try:
        await second.start_kernel()
        waiting = asyncio.ensure_future(third.start_kernel())
        await asyncio.sleep(1.5)
        assert not waiting.done(), "with wait_for_capacity an unallocatable claim is not final"
        await first.shutdown_kernel(now=True)
        await asyncio.wait_for(waiting, 30)
        assert granted(hami, third)["device"] in ("gpu-0", "gpu-1")
    finally:
        for km in (first, second, third):
            if km.has_kernel:
                await km.shutdown_kernel(now=True)


# ---------------------------------------------------------------- dra: firstAvailable


async def test_first_available_takes_a_mig_device_while_one_is_free_then_a_hami_slice(mig_hami, vgpu_spec):
    spec = vgpu_spec("dra-1x4gi", 1, "4Gi", backend="dra")
    config = k8s_config(dra={"flavors": ["mig", "hami"]})
    first = await started(spec, config)
    second = None
    try:
        device = granted(mig_hami, first)
        assert (device["request"], device["driver"], device["device"]) == ("gpu/mig", NVIDIA, "gpu-0-mig-1g10gb-0")
        second = await started(spec, config)
        device = granted(mig_hami, second)
        assert (device["request"], device["driver"], device["device"], device["memory_mib"]) == (
            "gpu/hami", HAMI, "gpu-1", 4 * GIB)
        template = claim_of(mig_hami, second)["spec"]["devices"]["requests"][0]
        assert [sub["name"] for sub in template["firstAvailable"]] == ["mig", "hami"]
        assert await run_in_kernel(second, ENV_CODE) == "dra 4096 enforced"
        # the view's rows name what each claim got
        view = first.provisioner.driver.view
        rows = await eventually_async(lambda: view.class_kernels(),
                                      until=lambda rows: len(rows) == 2 and all("device" in r for r in rows))
        assert sorted(r["device"] for r in rows) == [
            f"gpu-1/gpu-0-mig-1g10gb-0 ({NVIDIA}): whole device", f"gpu-1/gpu-1 ({HAMI}): 4 GiB"]
        assert view.kernel_state(second.provisioner.handle.info())["device"] == f"gpu-1/gpu-1 ({HAMI}): 4 GiB"
    finally:
        await first.shutdown_kernel(now=True)
        if second is not None:
            await second.shutdown_kernel(now=True)
    eventually(lambda: not mig_hami.objects("resourceclaims", NS) and not ours(mig_hami, "pods"))


# ---------------------------------------------------------------- dra: the server extension


class TokenUsers(IdentityProvider):
    def get_user(self, handler):
        return User(username="teacher") if handler.request.headers.get("Authorization") == "token t" else None

    def is_token_authenticated(self, handler):
        return True


@pytest.fixture
def jp_server_config(hami):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}, "identity_provider_class": TokenUsers,
                      "authenticate_prometheus": False},
        "VGPUProvisioner": {"cluster": "kubernetes", "namespace": NS, "launch_timeout": 60.0, "backend": "dra"},
        "OrionJupyter": {"instructors": ["teacher"], "activity_report_interval": 0},
    })


async def test_pool_and_class_view_through_the_server(hami, jp_fetch, jp_serverapp, jp_environ, jp_asyncio_loop):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name="dra-1x4gi", request=VGPURequest.parse(1, "4Gi"),
                                                   backend="dra"), user=True)

    async def call(method: str, path: str, body=None):
        kwargs = {"method": method, "headers": {"Authorization": "token t"}}
        if method == "POST":
            kwargs["body"] = json.dumps(body or {})
        try:
            response = await jp_fetch("orion", "api", *path.split("/"), **kwargs)
        except HTTPClientError as err:
            return err.code, json.loads(err.response.body) if err.response and err.response.body else None
        return response.code, json.loads(response.body)

    try:
        code, pool = await call("GET", "pool")
        assert code == 200 and pool["source"] == "dra" and pool["count_resource"] == dra.DRA_DEVICES
        assert [d["memory_free_mib"] for d in pool["nodes"][0]["devices"]] == [24 * GIB, 24 * GIB]
        for memory in ("12Gi", "8Gi"):
            code, kernel = await call("POST", "kernels", {"spec": "dra-1x4gi", "memory": memory})
            assert code == 201, kernel
        code, pool = await eventually_async(
            lambda: call("GET", "pool"),
            until=lambda reply: reply[1]["totals"][dra.DRA_MEMORY]["allocated"] == 20 * GIB)
        devices = {d["name"]: d for d in pool["nodes"][0]["devices"]}
        assert (devices["gpu-0"]["memory_free_mib"], devices["gpu-0"]["allocations"]) == (4 * GIB, 2)
        assert devices["gpu-1"]["memory_free_mib"] == 24 * GIB
        code, body = await call("GET", "class")
        assert code == 200, body
        assert sorted(k["device"] for k in body["kernels"]) == [f"gpu-1/gpu-0 ({HAMI}): 12 GiB",
                                                                f"gpu-1/gpu-0 ({HAMI}): 8 GiB"]
        # a spec that cannot fit is marked before a start, and a start is refused with the pool's sentence
        code, refused = await call("POST", "kernels", {"spec": "dra-1x4gi", "memory": "16Gi", "vgpus": 2})
        assert code == 409 and refused["message"].startswith("Not enough vGPU free: this kernel asks for 2 shares"), \
            refused
    finally:
        await jp_serverapp.kernel_manager.shutdown_all(now=True)
    eventually(lambda: not hami.objects("resourceclaims", NS) and not ours(hami, "pods"))


# ---------------------------------------------------------------- kai

GPU_NODE_LABELS = {"nvidia.com/gpu.count": "2", "nvidia.com/gpu.memory": str(24 * GIB)}


@pytest.fixture
def kai_cluster(monkeypatch):
    node = SimNode("gpu-1", labels=GPU_NODE_LABELS, allocatable={"nvidia.com/gpu": 2})
    cluster = SimCluster(nodes=[node], python=sys.executable, scheduler_names=["default-scheduler"]).start()
    stand_in = KaiScheduler(cluster, queues={"ai101": KaiQueue(quota=1, limit=1)}).start()
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    try:
        yield cluster, stand_in
    finally:
        stand_in.stop()
        cluster.stop()
    assert cluster.running_processes() == []


async def test_kai_places_a_kernel_by_its_annotations_and_queue_and_a_shortage_comes_back_fast(kai_cluster, vgpu_spec):
    cluster, _ = kai_cluster
    spec = vgpu_spec("kai-1x12gi", 1, "12Gi", backend="kai")
    config = k8s_config(course="AI101")
    first = await started(spec, config)
    second = None
    try:
        pod = cluster.get("pods", NS, first.provisioner.handle.name)
        assert pod["spec"]["schedulerName"] == "kai-scheduler"
        assert pod["metadata"]["labels"]["kai.scheduler/queue"] == "ai101"
        assert pod["metadata"]["annotations"]["gpu-memory"] == "12288"
        assert pod["metadata"]["annotations"]["gpu-fraction-container-name"] == "kernel"
        assert pod["metadata"]["labels"]["runai-gpu-group"] == "gpu-1-gpu0"  # placed by the stand-in
        assert not any("/" in r for r in pod["spec"]["containers"][0]["resources"].get("limits", {}))
        assert cluster.events(NS, pod["metadata"]["name"], "Scheduled")[0]["source"]["component"] == "kai-scheduler"
        assert await run_in_kernel(first, ENV_CODE) == "kai 12288 cooperative"

        second = await started(spec, config)  # 0.5 + 0.5: the queue's limit of 1 GPU
        begin = time.monotonic()
        with pytest.raises(KernelLaunchError) as refused:
            await started(spec, config)
        assert refused.value.reason == "unschedulable"
        assert str(refused.value).startswith(
            'The queue "ai101" has reached its GPU limit: 1 GPU allowed, 1 in use, and this kernel asks for 0.5 more.')
        assert 'KAI Scheduler: "OverLimit: ai101 quota has reached the allowable limit of GPUs.' in str(refused.value)
        assert time.monotonic() - begin < 10
        eventually(lambda: len(ours(cluster, "pods")) == len(ours(cluster, "secrets")) == 2)

        # a course without a KAI queue
        with pytest.raises(KernelLaunchError) as lost:
            await started(spec, k8s_config(course="cs999"))
        assert lost.value.reason == "unschedulable" and 'The KAI queue "cs999" for this kernel does not exist' in str(
            lost.value)
    finally:
        await first.shutdown_kernel(now=True)
        if second is not None:
            await second.shutdown_kernel(now=True)
    eventually(lambda: not ours(cluster, "pods") and not ours(cluster, "secrets"))
