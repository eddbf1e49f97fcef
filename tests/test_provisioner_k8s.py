"""VGPUProvisioner end to end on the simulated cluster: real ipykernels in "pod" processes."""

import asyncio
import json
import time

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from orion_jupyter.errors import KernelLaunchError
from tests.helpers import eventually_async, failed_launch, k8s_config
from tests.helpers import managed_objects as kernel_objects
from tests.kernel_io import run_code

NS = "class-ai101"


async def test_kernel_lifecycle_on_the_cluster(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        pods = kernel_objects(sim_cluster, "pods")
        assert len(pods) == 1 and pods[0]["status"]["podIP"] == km.ip != "127.0.0.1"
        first_pod = pods[0]["metadata"]["name"]
        out = await run_code(client, "import os; print(os.environ['ORION_GMEM'], os.environ['ORION_VGPU'], "
                                     "os.environ['ORION_JUPYTER_POD_NAME'], os.environ['ORION_JUPYTER_NODE_NAME'])")
        assert out == f"4096 1 {first_pod} gpu-1"
        # The connection key is only in the Secret, read from its mount
        assert km.session.key.decode() not in json.dumps(pods[0])

        # interrupt a busy loop through interrupt_mode: message
        msg_id = client.execute("import time\nwhile True:\n    time.sleep(0.01)")
        while True:
            msg = await client.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
                break
        await asyncio.sleep(0.3)
        await km.interrupt_kernel()
        reply = await client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"

        # restart: the same request, a new pod (new IP and new ports, so jupyter_server reconnects)
        ports = km.ports
        await km.restart_kernel()
        assert km.ports != ports
        client.stop_channels()
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        pods = kernel_objects(sim_cluster, "pods")
        assert [p["metadata"]["name"] for p in pods] != [first_pod] and len(pods) == 1
        assert await run_code(client, "import os; print(os.environ['ORION_GMEM'])") == "4096"
    finally:
        client.stop_channels()
        await km.shutdown_kernel()
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_start_kwargs_choose_other_vgpu_memory(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel(vgpu={"vgpus": 2, "memory": "8Gi"})
    try:
        pod = kernel_objects(sim_cluster, "pods")[0]
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["ORION_GMEM"], env["ORION_VGPU"]) == ("8192", "2")
        assert container["resources"]["limits"]["virtaitech.com/gpu"] == "2"
        secret = kernel_objects(sim_cluster, "secrets")[0]
        assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        info = await km.provisioner.get_provisioner_info()
        assert info["kernel"]["pod_name"] == pod["metadata"]["name"] and info["kernel"]["namespace"] == NS
        assert info["vgpu_request"] == {"vgpus": 2, "memory_mib": 8192, "compute_percent": None}
    finally:
        await km.shutdown_kernel(now=True)


async def test_another_process_finds_the_kernel_again(sim_cluster, vgpu_spec):
    from orion_jupyter.provisioner import VGPUProvisioner

    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    try:
        info = await km.provisioner.get_provisioner_info()
        other = VGPUProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km, config=k8s_config())
        await other.load_provisioner_info(info)
        assert await other.poll() is None and other.request.memory_mib == 4096
        sim_cluster.delete_object("pods", NS, info["kernel"]["pod_name"], grace_period_seconds=0)
        await asyncio.wait_for(other.wait(), 10)
        assert await other.poll() is not None
    finally:
        await km.shutdown_kernel(now=True)


async def test_notebook_executes_through_the_provisioner(sim_cluster, vgpu_spec, tmp_path):
    vgpu_spec("orion-nb", 1, "2Gi", namespace=NS, cluster="kubernetes")
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nmemory = int(os.environ['ORION_GMEM'])"),
        nbformat.v4.new_code_cell("print(f'{memory // 1024} GiB on', os.environ['ORION_JUPYTER_NODE_NAME'])"),
    ])
    await NotebookClient(notebook, kernel_name="orion-nb", timeout=60, startup_timeout=60).async_execute()
    assert notebook.cells[1].outputs[0]["text"].strip() == "2 GiB on gpu-1"
    assert kernel_objects(sim_cluster, "pods") == []


async def test_six_kernels_on_four_vgpus_fail_fast_with_the_reason(sim_cluster, vgpu_spec):
    spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
    managers = [AsyncKernelManager(kernel_name=spec, config=k8s_config()) for _ in range(6)]
    started = time.monotonic()
    results = await asyncio.gather(*(km.start_kernel() for km in managers), return_exceptions=True)
    elapsed = time.monotonic() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    try:
        assert len(failures) == 2, results
        for failure in failures:
            assert isinstance(failure, KernelLaunchError) and failure.reason == "unschedulable", failure
            text = str(failure)
            assert text.startswith(
                "Not enough vGPUs free: this kernel needs 1 vGPU; 0 of 4 are free right now (4 in use)."), text
            assert "Insufficient virtaitech.com/gpu" in text
        assert elapsed < 30, "failures should come from the scheduler's reason, well before the 60 s launch timeout"
        assert len(kernel_objects(sim_cluster, "pods")) == 4 and len(kernel_objects(sim_cluster, "secrets")) == 4
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km, r in zip(managers, results, strict=True)
                               if not isinstance(r, BaseException)))
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_image_pull_failure_fails_fast(sim_cluster, vgpu_spec):
    sim_cluster.faults.image_pull_error("registry.example.org/missing:*")
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-bad-image", 1, "4Gi", image="registry.example.org/missing:1"),
                            config=k8s_config())
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    assert caught.value.reason == "image"
    assert "the kernel image registry.example.org/missing:1 cannot be pulled (ErrImagePull)" in str(caught.value)
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_crashing_kernel_command_fails_fast_with_its_output(sim_cluster, vgpu_spec, tmp_path):
    fake_python = tmp_path / "python-without-ipykernel"
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-crash", 1, "4Gi"),
                            config=k8s_config(kernel_python=str(fake_python)))
    error = await failed_launch(km, fake_python,
                                "echo \"ModuleNotFoundError: No module named 'ipykernel'\" >&2\nexit 1")
    assert error.reason == "exited"
    assert str(error).startswith("the kernel exited with code 1 before it was ready")
    assert "No module named 'ipykernel'" in str(error)
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_pod_deleted_behind_the_servers_back_is_dead(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    try:
        assert await km.is_alive()
        pod = kernel_objects(sim_cluster, "pods")[0]["metadata"]["name"]
        sim_cluster.delete_object("pods", NS, pod, grace_period_seconds=0)
        await eventually_async(km.provisioner.poll, timeout=5, until=lambda code: code is not None)
        assert await km.provisioner.poll() is not None and not await km.is_alive()
    finally:
        await km.shutdown_kernel(now=True)
    assert kernel_objects(sim_cluster, "secrets") == []


async def test_evicted_pod_is_dead(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    try:
        pod = kernel_objects(sim_cluster, "pods")[0]["metadata"]["name"]
        sim_cluster.evict(NS, pod)
        await asyncio.wait_for(km.provisioner.wait(), 10)
        assert not await km.is_alive()
    finally:
        await km.shutdown_kernel(now=True)
    assert kernel_objects(sim_cluster, "pods") == []


async def test_watch_drops_and_expires_mid_launch(sim_cluster, vgpu_spec):
    sim_cluster.faults.schedule_delay = 1.0
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    launch = asyncio.ensure_future(km.start_kernel())
    await asyncio.sleep(0.4)
    sim_cluster.faults.expire_history()
    sim_cluster.faults.drop_watches()
    await asyncio.wait_for(launch, 60)
    try:
        assert await km.is_alive()
        assert sim_cluster.count_requests(verb="list", resource="pods") >= 2  # re-listed after 410 Gone
    finally:
        await km.shutdown_kernel(now=True)


async def test_api_500_on_create_is_retried(sim_cluster, vgpu_spec):
    sim_cluster.faults.fail("create", "pods", status=500, times=1)
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    try:
        assert await km.is_alive()
        assert sim_cluster.count_requests(verb="create", resource="pods") == 2
    finally:
        await km.shutdown_kernel(now=True)


async def test_api_that_keeps_failing_fails_cleanly(sim_cluster, vgpu_spec):
    sim_cluster.faults.fail("create", "pods", status=503, times=10)
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    assert caught.value.reason == "api" and str(caught.value).startswith("Kubernetes refused to create the kernel Pod")
    assert sim_cluster.count_requests(verb="create", resource="pods") == 3  # first try + 2 retries
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_api_requests_per_launch_stay_bounded(sim_cluster, vgpu_spec):
    spec = vgpu_spec("orion-cpu", 0, "0")
    config = k8s_config()
    counts = []
    managers = []
    for n in (1, 3):
        sim_cluster.reset_requests()
        batch = [AsyncKernelManager(kernel_name=spec, config=config) for _ in range(n)]
        await asyncio.gather(*(km.start_kernel() for km in batch))
        managers += batch
        launch_requests = [r for r in sim_cluster.requests if not r.watch and r.verb not in ("list",)]
        counts.append((n, len(launch_requests), sim_cluster.count_requests(watch=True)))
    try:
        for n, requests, _ in counts:
            # create Secret + create Pod + own the Secret: three per kernel, nothing per poll
            assert requests == 3 * n, sim_cluster.requests
        # the shared watches started once (first batch) and none was added for more kernels
        assert counts[1][2] == 0
        sim_cluster.reset_requests()
        for km in managers:
            assert await km.is_alive()
        assert sim_cluster.requests == []
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))


def test_server_pod_owns_kernel_pods(monkeypatch):
    from orion_jupyter.k8s.driver import server_pod_owner

    monkeypatch.delenv("POD_NAME", raising=False)
    assert server_pod_owner() is None
    monkeypatch.setenv("POD_NAME", "jupyter-alice")
    monkeypatch.setenv("POD_UID", "1234")
    assert server_pod_owner() == {"apiVersion": "v1", "kind": "Pod", "name": "jupyter-alice", "uid": "1234"}


async def test_hami_backend_holds_gpu_memory_in_the_pool(sim_cluster, vgpu_spec):
    from orion_jupyter.k8s.cluster import KubeCluster

    km = AsyncKernelManager(kernel_name=vgpu_spec("hami-1x4gi", 1, "4Gi", backend="hami"), config=k8s_config())
    await km.start_kernel()
    try:
        limits = kernel_objects(sim_cluster, "pods")[0]["spec"]["containers"][0]["resources"]["limits"]
        assert {k: v for k, v in limits.items() if "/" in k} == {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "4096"}
        totals = km.provisioner.driver.cluster.pool().totals()
        assert totals["nvidia.com/gpumem"].allocated == 4096 and totals["nvidia.com/gpumem"].free == 81920 - 4096
        assert isinstance(km.provisioner.driver.cluster, KubeCluster)
    finally:
        await km.shutdown_kernel(now=True)


async def test_shortage_names_the_resource_that_is_short(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("hami-big", 1, "100Gi", backend="hami"), config=k8s_config())
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    assert str(caught.value).startswith(
        "Not enough nvidia.com/gpumem free: this kernel needs 102400 nvidia.com/gpumem; "
        "81920 of 81920 are free right now (0 in use).")
    assert kernel_objects(sim_cluster, "pods") == []


async def test_launch_timeout_ends_with_the_last_progress_and_cleans_up(sim_cluster, vgpu_spec):
    sim_cluster.faults.schedule_delay = 30.0
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config(launch_timeout=1.0))
    with pytest.raises(KernelLaunchError) as caught:
        await km.start_kernel()
    assert caught.value.reason == "timeout"
    assert "did not become ready within 1 s" in str(caught.value)
    assert kernel_objects(sim_cluster, "pods") == [] and kernel_objects(sim_cluster, "secrets") == []


async def test_wait_for_capacity_starts_when_a_vgpu_frees(sim_cluster, vgpu_spec):
    spec = vgpu_spec("orion-4x1gi", 4, "1Gi")
    first = AsyncKernelManager(kernel_name=spec, config=k8s_config())
    await first.start_kernel()
    waiting = AsyncKernelManager(kernel_name=spec, config=k8s_config(wait_for_capacity=True))
    launch = asyncio.ensure_future(waiting.start_kernel())
    try:
        await asyncio.sleep(1.0)
        assert not launch.done()  # unschedulable, but told to wait
        await first.shutdown_kernel(now=True)
        await asyncio.wait_for(launch, 30)
        assert await waiting.is_alive()
    finally:
        await waiting.shutdown_kernel(now=True)


async def test_per_user_quota_across_kernels(sim_cluster, vgpu_spec):
    from orion_jupyter.vgpu import VGPURequestError

    config = k8s_config(user="alice")
    config.KernelPolicy.max_vgpus_per_user = 3
    spec = vgpu_spec("orion-2x1gi", 2, "1Gi")
    first = AsyncKernelManager(kernel_name=spec, config=config)
    await first.start_kernel()
    try:
        second = AsyncKernelManager(kernel_name=spec, config=config)
        with pytest.raises(VGPURequestError) as caught:
            await second.start_kernel()
        assert str(caught.value) == ("2 more vGPUs would make 4 for you at once (2 held now); the limit is 3 per "
                                     "user: stop a kernel you no longer use first")
        assert len(kernel_objects(sim_cluster, "pods")) == 1
        await first.restart_kernel()  # its own vGPUs do not count against it
        assert await first.is_alive()
        bob_config = k8s_config(user="bob")
        bob_config.KernelPolicy.max_vgpus_per_user = 3
        bob = AsyncKernelManager(kernel_name=spec, config=bob_config)
        await bob.start_kernel()
        await bob.shutdown_kernel(now=True)
    finally:
        await first.shutdown_kernel(now=True)


async def test_nvidia_kernel_gets_the_cooperative_memory_cap(sim_cluster, vgpu_spec):
    km = AsyncKernelManager(kernel_name=vgpu_spec("nvidia-1x4gi", 1, "4Gi", backend="nvidia"), config=k8s_config())
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        out = await run_code(client, "import os, sys\nprint(os.environ['ORION_JUPYTER_MEMORY_CAP'], "
                                     "any(type(f).__name__ == '_CapOnImport' for f in sys.meta_path))")
        assert out == "cooperative True"
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)
