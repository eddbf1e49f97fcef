"""Scenario 3, remote vGPUs: a kernel pod on a node without GPUs that takes its vGPUs from the Orion
controller when CUDA starts; the controller's HTTP API (a stand-in here) is the pool and the gate."""

from __future__ import annotations

import pytest
from jupyter_client.manager import AsyncKernelManager

from kubesim.cluster import SimNode
from kubesim.fixtures import GPU_NODE, running_cluster
from kubesim.orion_controller import FakeOrionController
from orion_jupyter.allocation import REMOTE_NOTE, KernelAllocation
from orion_jupyter.backends import get_backend
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.orion_controller import ControllerError, OrionControllerClient, remote_shortage
from orion_jupyter.vgpu import VGPURequest, VGPURequestError
from orion_jupyter.widgets.allocation import describe_allocation, summarize_allocation
from tests.helpers import k8s_config
from tests.helpers import managed_objects as kernel_objects
from tests.kernel_io import run_code


@pytest.fixture
def controller():
    fake = FakeOrionController(total=8, free=5)
    yield fake
    fake.stop()


# ---------------------------------------------------------------- the controller's HTTP API


def test_client_reads_the_counts_with_the_version_headers(controller):
    counts = OrionControllerClient(controller.address).counts()
    assert (counts.total, counts.free, counts.used) == (8, 5, 3)
    assert (counts.data_version, counts.api_version) == ("0.1", "0.1")
    assert controller.requests == ["/info?data_version&api_version", "/devices?res=nvidia_cuda",
                                   "/devices?res=nvidia_cuda&used=true"]


def test_garbage_and_a_controller_that_is_down_are_errors_that_name_it(controller):
    controller.garbage = True
    with pytest.raises(ControllerError, match=rf"Orion controller {controller.address} answered /info with "
                                              r"'<html><body>502 Bad Gateway</body></html>'"):
        OrionControllerClient(controller.address).counts()
    address = controller.address
    controller.stop()
    with pytest.raises(ControllerError, match=rf"Orion controller {address} does not answer"):
        OrionControllerClient(address, timeout=1).counts()


# ---------------------------------------------------------------- the backend


def test_remote_backend_asks_kubernetes_for_nothing_and_the_client_for_everything():
    backend = get_backend("orion", orion={"mode": "remote", "controller": "orion.example:9123"})
    request = VGPURequest.parse(2, "4Gi")
    assert backend.remote and backend.label == "orion-remote" and backend.resources(request) == {}
    assert backend.env(request, controller="elsewhere:1") == {
        "ORION_VGPU": "2", "ORION_GMEM": "4096", "ORION_RATIO": "100", "ORION_CONTROLLER": "orion.example:9123"}
    assert backend.env(VGPURequest.parse(1, "2Gi", 50))["ORION_RATIO"] == "50"
    assert not backend.supports_host_ipc
    local = get_backend("orion")
    assert not local.remote and local.resources(request) == {"virtaitech.com/gpu": 2}


@pytest.mark.parametrize(("settings", "message"), [
    ({"mode": "remote"}, "Orion remote mode needs the controller's address as host:port"),
    ({"mode": "far"}, 'Orion mode "far" is not known; use local or remote'),
    ({"mode": "remote", "controler": "x:1"}, 'Orion setting "controler" is not known'),
])
def test_bad_orion_settings_are_refused(settings, message):
    with pytest.raises(VGPURequestError, match=message):
        get_backend("orion", orion=settings)
    with pytest.raises(VGPURequestError, match='backend "hami" takes no Orion settings'):
        get_backend("hami", orion={"mode": "remote", "controller": "x:1"})


def test_widget_says_the_vgpu_is_remote():
    allocation = KernelAllocation(cluster="kubernetes", backend="orion-remote", vgpus=1, memory_mib=4096,
                                  memory_cap="enforced")
    assert f"1 vGPU · 4 GiB ({REMOTE_NOTE})" in summarize_allocation(allocation)
    assert describe_allocation(allocation)["vgpus"] == f"1 ({REMOTE_NOTE})"


# ---------------------------------------------------------------- on the simulated cluster


@pytest.fixture
def cpu_and_gpu_cluster(monkeypatch):
    with running_cluster(monkeypatch, [
        SimNode("gpu-1", allocatable=dict(GPU_NODE), labels={"gpu": "true"}),
        SimNode("cpu-1", allocatable={"cpu": "16", "memory": "64Gi", "pods": 110}, labels={"node-role": "cpu"}),
    ]) as cluster:
        yield cluster


def remote_config(controller_address: str, **extra):
    return k8s_config(orion={"mode": "remote", "controller": controller_address,
                             "node_selector": {"node-role": "cpu"}}, **extra)


async def test_remote_kernel_runs_on_a_cpu_node_with_the_four_orion_variables(cpu_and_gpu_cluster, vgpu_spec,
                                                                             controller):
    km = AsyncKernelManager(kernel_name=vgpu_spec("remote-1x4gi", 1, "4Gi"), config=remote_config(controller.address))
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        pod = kernel_objects(cpu_and_gpu_cluster, "pods")[0]
        assert pod["spec"]["nodeName"] == "cpu-1"
        node = next(n for n in cpu_and_gpu_cluster.objects("nodes") if n["metadata"]["name"] == "cpu-1")
        assert not any("/" in resource for resource in node["status"]["allocatable"])  # no GPU of any kind
        container = pod["spec"]["containers"][0]
        assert not any("/" in r for part in container["resources"].values() for r in part)  # no extended resource
        assert "hostIPC" not in pod["spec"]
        out = await run_code(client, "import os; print(*(os.environ[k] for k in ('ORION_CONTROLLER', 'ORION_VGPU', "
                                     "'ORION_GMEM', 'ORION_RATIO', 'ORION_JUPYTER_BACKEND')))")
        assert out == f"{controller.address} 1 4096 100 orion-remote"
        summary = km.provisioner.allocation_summary()
        assert summary["backend"] == "orion-remote" and summary["label"] == f"1 vGPU · 4 GiB ({REMOTE_NOTE})"
        pool = await km.provisioner.driver.view.pool()
        assert pool.source == "orion-controller" and pool.totals()["virtaitech.com/gpu"].free == 5
        rows = await km.provisioner.driver.view.class_kernels()
        assert rows[0]["label"] == f"1 vGPU · 4 GiB ({REMOTE_NOTE})" and rows[0]["backend"] == "orion-remote"
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)
    assert kernel_objects(cpu_and_gpu_cluster, "pods") == []


async def test_a_launch_wanting_more_than_the_controller_has_free_fails_with_its_numbers(cpu_and_gpu_cluster,
                                                                                         vgpu_spec, controller):
    controller.free = 0
    km = AsyncKernelManager(kernel_name=vgpu_spec("remote-1x4gi", 1, "4Gi"), config=remote_config(controller.address))
    with pytest.raises(KernelLaunchError) as raised:
        await km.start_kernel()
    assert str(raised.value) == (f"Orion controller {controller.address} has 0 of 8 vGPUs free; this kernel needs "
                                 "1 vGPU. Stop a kernel you no longer use, ask for fewer, or try again later.")
    assert raised.value.reason == "unschedulable"
    assert kernel_objects(cpu_and_gpu_cluster, "pods") == [] and kernel_objects(cpu_and_gpu_cluster, "secrets") == []

    controller.stop()  # down: the launch says so rather than starting a kernel whose CUDA cannot work
    km = AsyncKernelManager(kernel_name=vgpu_spec("remote-1x4gi", 1, "4Gi"), config=remote_config(controller.address))
    with pytest.raises(KernelLaunchError, match=rf"Orion controller {controller.address} does not answer .*: a kernel "
                                                "with remote vGPUs needs it"):
        await km.start_kernel()
    assert kernel_objects(cpu_and_gpu_cluster, "pods") == []


def test_shortage_of_an_unread_controller():
    from orion_jupyter.orion_controller import controller_pool

    assert remote_shortage(controller_pool("c:1", None), "c:1", 2).startswith(
        "Orion controller c:1 has not been read yet: a kernel with remote vGPUs needs it")


def test_remote_mode_per_kernel_spec_and_the_server_controller():
    from orion_jupyter.provisioner import VGPUProvisioner

    # an administrator's kernel spec config (trusted), with the server's orion_controller as the address
    probe = VGPUProvisioner(kernel_id="k", orion={"mode": "remote"}, orion_controller="orion.example:9123")
    assert probe.spec_problem is None
    backend = probe.backend_model()
    assert backend.remote and backend.orion.controller == "orion.example:9123"
    assert not VGPUProvisioner(kernel_id="k", orion_controller="orion.example:9123").backend_model().remote
    with pytest.raises(VGPURequestError, match="Orion remote mode needs the controller's address"):
        VGPUProvisioner(kernel_id="k", orion={"mode": "remote"}).backend_model()
