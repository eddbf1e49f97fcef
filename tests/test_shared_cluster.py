"""A cluster shared with other workloads, and the faults a classroom meets, on the simulated cluster.

Other teams' pods hold GPUs the pool must count (or, without the cluster-wide read, must not
pretend are free); nodes are deleted or stop answering with kernels on them; kernels run out of
memory; the API throttles and fails and the watches drop during a burst of launches. Every test
checks the sentence a person reads and that nothing is left behind: no pod, Secret or process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from kubesim import SimCluster, SimNode
from orion_jupyter import kernelspecs
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.k8s import watch as watch_module
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.watch import Backoff
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually, eventually_async

NS = "class-ai101"
OTHERS = "other-team"
VGPU = "virtaitech.com/gpu"


def k8s_config(**provisioner) -> Config:
    config = Config()
    config.VGPUProvisioner.cluster = "kubernetes"
    config.VGPUProvisioner.namespace = NS
    config.VGPUProvisioner.launch_timeout = 60.0
    for key, value in provisioner.items():
        setattr(config.VGPUProvisioner, key, value)
    return config


def kernel_objects(cluster, kind: str) -> list[dict]:
    return [o for o in cluster.objects(kind, NS)
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "orion-jupyter"]


def foreign_pod(cluster, name: str, resources: dict[str, int], namespace: str = OTHERS) -> dict:
    """Another team's pod: no orion labels, in its own namespace, holding extended resources."""
    limits = {k: str(v) for k, v in resources.items()}
    body = {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [{
        "name": "train", "image": "pytorch/pytorch:2.4.0", "command": ["sleep", "600"],
        "resources": {"limits": limits, "requests": dict(limits)}}]}}
    cluster.create_object("pods", namespace, body)
    return cluster.wait_for("pods", namespace, name, lambda p: p and p["status"].get("phase") == "Running")


def assert_nothing_left(cluster) -> None:
    eventually(lambda: not kernel_objects(cluster, "pods") and not kernel_objects(cluster, "secrets"), timeout=10,
               message=lambda: f"left: {[p['metadata']['name'] for p in kernel_objects(cluster, 'pods')]} "
                               f"{[s['metadata']['name'] for s in kernel_objects(cluster, 'secrets')]}")
    kernel_groups = {w.proc.pid for w in list(cluster.kubelets.workers.values())
                     if w.proc is not None and w.namespace == NS}
    eventually(lambda: not (set(cluster.running_processes()) & kernel_groups), timeout=10,
               message="kernel pod processes left running")


async def start_all(managers: list[AsyncKernelManager]) -> list:
    return await asyncio.gather(*(km.start_kernel() for km in managers), return_exceptions=True)


async def shutdown_started(managers: list[AsyncKernelManager]) -> None:
    await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers if km.has_kernel))


# ---------------------------------------------------------------- other workloads in the pool


async def test_foreign_pod_counts_in_the_pool_and_in_the_refusal(sim_cluster, vgpu_spec):
    """Another team holds 2 of the node's 4 vGPUs: two kernels fit, the third is refused with numbers that count it."""
    foreign_pod(sim_cluster, "trainer", {VGPU: 2})
    spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
    managers = [AsyncKernelManager(kernel_name=spec, config=k8s_config()) for _ in range(2)]
    try:
        results = await start_all(managers)
        assert not [r for r in results if isinstance(r, BaseException)], results
        cluster = managers[0].provisioner.driver.cluster
        node = next(n for n in cluster.pool().nodes if n.name == "gpu-1")
        assert node.resources[VGPU].as_dict() == {"allocatable": 4, "allocated": 4, "free": 0, "others": 2}
        third = AsyncKernelManager(kernel_name=spec, config=k8s_config())
        with pytest.raises(KernelLaunchError) as caught:
            await third.start_kernel()
        assert caught.value.reason == "unschedulable"
        assert str(caught.value) == ("Not enough vGPUs free: this kernel needs 1 vGPU; 0 of 4 are free right now "
                                     "(4 in use). Stop a kernel you no longer use, ask for fewer vGPUs, or try "
                                     "again later. (scheduler: 0/1 nodes are available: 1 Insufficient "
                                     "virtaitech.com/gpu.)")
        assert len(kernel_objects(sim_cluster, "pods")) == 2 and len(kernel_objects(sim_cluster, "secrets")) == 2
    finally:
        await shutdown_started(managers)
    assert_nothing_left(sim_cluster)
    assert sim_cluster.get("pods", OTHERS, "trainer")["status"]["phase"] == "Running"  # theirs is untouched


async def test_foreign_pod_holds_the_only_nvidia_gpu(monkeypatch, vgpu_spec):
    node = SimNode("a100-1", allocatable={"nvidia.com/gpu": 1, "cpu": "16", "memory": "64Gi"})
    with SimCluster(nodes=[node], python=sys.executable) as cluster:
        monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
        foreign_pod(cluster, "inference", {"nvidia.com/gpu": 1})
        km = AsyncKernelManager(kernel_name=vgpu_spec("nvidia-1", 1, "4Gi", backend="nvidia"), config=k8s_config())
        with pytest.raises(KernelLaunchError) as caught:
            await km.start_kernel()
        assert str(caught.value).startswith(
            "Not enough vGPUs free: this kernel needs 1 vGPU; 0 of 1 are free right now (1 in use).")
        totals = km.provisioner.driver.cluster.pool().totals()["nvidia.com/gpu"]
        assert (totals.allocated, totals.others) == (1, 1)
        assert_nothing_left(cluster)
        cluster.delete_object("pods", OTHERS, "inference", grace_period_seconds=0)
    assert cluster.running_processes() == []


async def test_without_the_cluster_wide_read_the_refusal_quotes_the_scheduler(sim_cluster, vgpu_spec, caplog):
    """No ClusterRole to list every pod: the pool sees only this project's kernels, so it never claims 'N free'."""
    sim_cluster.faults.forbid("*", "pods", cluster_scope=True)
    foreign_pod(sim_cluster, "trainer", {VGPU: 2})
    spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
    managers = [AsyncKernelManager(kernel_name=spec, config=k8s_config()) for _ in range(2)]
    try:
        with caplog.at_level(logging.ERROR, logger="orion_jupyter.k8s.watch"):
            results = await start_all(managers)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert any("pods/* cannot be watched (403" in r.getMessage() for r in caplog.records)
        cluster = managers[0].provisioner.driver.cluster
        pool = cluster.pool()
        assert not pool.others_visible and "others" not in pool.totals()[VGPU].as_dict()
        third = AsyncKernelManager(kernel_name=spec, config=k8s_config())
        with pytest.raises(KernelLaunchError) as caught:
            await third.start_kernel()
        text = str(caught.value)
        assert caught.value.reason == "unschedulable"
        assert text == ("Not enough vGPUs free: this kernel needs 1 vGPU, and the scheduler found too few free; this "
                        "project's kernels hold 2 of 4, and other workloads on these nodes (not visible to this "
                        "server) hold the rest. Stop a kernel you no longer use, or try again later. (scheduler: "
                        "0/1 nodes are available: 1 Insufficient virtaitech.com/gpu.)")
        assert "free right now" not in text
        assert len(kernel_objects(sim_cluster, "pods")) == 2 and len(kernel_objects(sim_cluster, "secrets")) == 2
    finally:
        await shutdown_started(managers)
    assert_nothing_left(sim_cluster)


# ---------------------------------------------------------------- the pool over REST


@pytest.fixture
def jp_server_config(sim_cluster):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}},
        "VGPUProvisioner": {"cluster": "kubernetes", "namespace": NS, "launch_timeout": 60.0},
        "OrionJupyter": {"activity_report_interval": 0, "usage_sample_interval": 0},
    })


@pytest.fixture
def pool_api(jp_fetch, jp_serverapp, jp_environ, sim_cluster, jp_asyncio_loop):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name="orion-1x4gi", request=VGPURequest.parse(1, "4Gi")),
                        user=True)

    async def call(method: str = "GET", path: str = "pool", body=None):
        kwargs = {"method": method}
        if body is not None:
            kwargs["body"] = json.dumps(body)
        try:
            response = await jp_fetch("orion", "api", path, **kwargs)
        except HTTPClientError as err:
            return err.code, json.loads(err.response.body) if err.response and err.response.body else None
        return response.code, json.loads(response.body)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


async def test_pool_answer_shows_what_others_hold(pool_api, sim_cluster):
    foreign_pod(sim_cluster, "trainer", {VGPU: 2})
    status, created = await pool_api("POST", "kernels", {"spec": "orion-1x4gi"})
    assert status == 201, created

    async def pool():
        return (await pool_api())[1]

    body = await eventually_async(pool, timeout=10,
                                  until=lambda b: b["totals"][VGPU].get("others") == 2
                                  and b["totals"][VGPU]["allocated"] == 3)
    assert body["others_visible"] is True and body["warnings"] == []
    node = next(n for n in body["nodes"] if n["name"] == "gpu-1")
    assert node["resources"][VGPU] == {"allocatable": 4, "allocated": 3, "free": 1, "others": 2}
    assert node["resources"]["nvidia.com/gpu"]["others"] == 0


async def test_a_lasting_watch_failure_is_logged_once_and_shown_in_the_pool(pool_api, sim_cluster, monkeypatch,
                                                                            caplog):
    monkeypatch.setattr(watch_module, "BACKOFF_INITIAL_SECONDS", 0.05)
    status, body = await pool_api()
    assert status == 200 and body["warnings"] == []
    # the kernels' pod watch breaks and cannot come back: every list and watch of the namespace's pods fails
    for verb in ("list", "watch"):
        sim_cluster.faults.fail(verb, "pods", status=503, times=-1, namespace=NS)
    sim_cluster.reset_requests()
    with caplog.at_level(logging.WARNING, logger="orion_jupyter.k8s.watch"):
        sim_cluster.faults.drop_watches(abrupt=True)

        async def warnings():
            return (await pool_api())[1]["warnings"]

        # two watches read the namespace's pods: its kernels, and the rest (other workloads, for the pool)
        watches = {f"pods/{NS}", f"pods/{NS} (not kernels)"}
        shown = await eventually_async(warnings, timeout=15, until=lambda w: len(w) == 2)
        assert sorted(w.split(" watch failing since ")[0] for w in shown) == sorted(watches), shown
        assert all("attempts; last error: 503 Service Unavailable: simulated failure (503)" in w for w in shown)
        await asyncio.sleep(1.0)
        # backoff, not a retry every 50 ms: the stream's drop, then requests 0.05, 0.1, 0.2, 0.4, 0.8, 1.6 s apart
        attempts = sum(1 for r in sim_cluster.requests if r.namespace == NS and r.resource == "pods")
        assert 2 * 4 <= attempts <= 2 * 6, attempts
        sim_cluster.faults.clear()
        await eventually_async(warnings, timeout=15, until=lambda w: w == [])
    failing = [r.getMessage().split(" watch failing since")[0] for r in caplog.records
               if r.levelno == logging.ERROR and "watch failing since" in r.getMessage()]
    assert sorted(failing) == sorted(watches)  # once each
    assert all(any(f"{watch} watch works again" in r.getMessage() for r in caplog.records) for watch in watches)


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    middle = Backoff(initial=0.2, cap=30.0, jitter=0.2, rng=lambda: 0.5)
    assert [round(middle.next(), 3) for _ in range(10)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    middle.reset()
    assert middle.next() == pytest.approx(0.2)
    low, high = Backoff(0.2, 30.0, 0.2, rng=lambda: 0.0), Backoff(0.2, 30.0, 0.2, rng=lambda: 0.999999)
    assert low.next() == pytest.approx(0.16) and high.next() == pytest.approx(0.24, rel=1e-4)
    for _ in range(20):
        assert high.next() <= 30.0


def test_the_other_pods_watches_leave_this_namespaces_kernel_pods_to_the_pod_watch(sim_cluster):
    """The API server leaves them out: each of their events is read once, by the pod watch."""
    managed = {"app.kubernetes.io/managed-by": "orion-jupyter"}
    for name, namespace, labels in (("ours", NS, managed), ("theirs", NS, {}), ("other-class", OTHERS, managed)):
        limits = {VGPU: "1"}
        sim_cluster.create_object("pods", namespace, {"metadata": {"name": name, "labels": labels}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "python", "command": ["sleep", "600"],
                                                      "resources": {"limits": limits, "requests": dict(limits)}}]}})
    cluster = KubeCluster(sim_cluster.api_client(), NS, watch_others=True)
    cluster.start()
    try:
        def names(items):
            return sorted(p["metadata"]["name"] for p in items)
        eventually(lambda: names(cluster.others.items()) == ["other-class", "theirs"], timeout=20,
                   message=lambda: names(cluster.others.items()))
        assert names(cluster.kernel_pods()) == ["ours"] and cluster.others.lists >= 1
    finally:
        cluster.close()
        for name, namespace in (("ours", NS), ("theirs", NS), ("other-class", OTHERS)):
            sim_cluster.delete_object("pods", namespace, name)


def test_close_ends_the_watch_threads(sim_cluster):
    cluster = KubeCluster(sim_cluster.api_client(), NS, watch_others=True)
    cluster.start()
    watches = cluster._watches()
    assert all(watch.wait_synced(10) for watch in watches)
    cluster.close()
    assert [watch.name for watch in watches if not watch.join(0)] == []


# Watches that retry an unreachable API server without pause: their threads are nearly always inside a
# client call (which pydantic-core validates) when the process exits.
_EXIT_WITH_WATCHES_RUNNING = """
import logging, socket, time
from kubernetes import client
from orion_jupyter.k8s.watch import Backoff, SharedWatch

logging.disable(logging.CRITICAL)
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
configuration = client.Configuration()
configuration.host = f"http://127.0.0.1:{port}"
core = client.CoreV1Api(client.ApiClient(configuration))
for n in range(4):
    SharedWatch(f"pods-{n}", core.list_namespaced_pod, namespace="x", backoff=Backoff(initial=0.0, cap=0.0)).start()
time.sleep(0.3)
"""


def test_a_process_exits_cleanly_while_its_watches_are_in_a_client_call():
    """Left to the interpreter's finalization, such a thread is ended by pthread_exit, whose unwind through
    pydantic-core's frames aborts the process (SIGABRT) after everything else went well."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for _ in range(2):  # without the stop at exit nearly every run aborts
        done = subprocess.run([sys.executable, "-c", _EXIT_WITH_WATCHES_RUNNING], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- nodes that go away


async def test_deleted_node_ends_its_kernels_with_the_reason(monkeypatch, vgpu_spec, caplog):
    nodes = [SimNode(f"gpu-{i}", allocatable={VGPU: 4, "cpu": "16", "memory": "64Gi"}) for i in (1, 2)]
    with SimCluster(nodes=nodes, python=sys.executable) as cluster:
        monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
        spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
        managers = [AsyncKernelManager(kernel_name=spec, config=k8s_config()) for _ in range(2)]
        try:
            for km in managers:  # one after the other: the scheduler puts them on different nodes
                await km.start_kernel()
            placed = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in kernel_objects(cluster, "pods")}
            assert set(placed) == {"gpu-1", "gpu-2"}
            doomed = next(km for km in managers if km.provisioner.handle.name == placed["gpu-2"])
            survivor = next(km for km in managers if km is not doomed)
            with caplog.at_level(logging.WARNING, logger="orion_jupyter.k8s"):
                cluster.delete_node("gpu-2")
                await eventually_async(doomed.is_alive, timeout=10, until=lambda alive: not alive)
            reason = "its node gpu-2 was removed from the cluster (PodGC: node no longer exists)"
            assert doomed.provisioner.handle.reason == reason
            assert any(r.getMessage() == f"kernel pod {placed['gpu-2']} ended: {reason}" for r in caplog.records)
            assert await survivor.is_alive() and survivor.provisioner.handle.reason == ""
            pool = survivor.provisioner.driver.cluster.pool()
            assert [n.name for n in pool.nodes] == ["gpu-1"] and pool.totals()[VGPU].allocated == 1
        finally:
            await shutdown_started(managers)
        assert_nothing_left(cluster)


async def test_not_ready_node_ends_its_kernels_and_they_are_released(sim_cluster, vgpu_spec, caplog):
    km = AsyncKernelManager(kernel_name=vgpu_spec("orion-1x4gi", 1, "4Gi"), config=k8s_config())
    await km.start_kernel()
    try:
        pod = kernel_objects(sim_cluster, "pods")[0]["metadata"]["name"]
        with caplog.at_level(logging.WARNING, logger="orion_jupyter.k8s"):
            sim_cluster.set_node_ready("gpu-1", False)
            assert await km.is_alive()  # the node controller waits its grace before it marks the node
            await asyncio.wait_for(km.provisioner.wait(), 10)
        assert not await km.is_alive()
        reason = "its node gpu-1 is not ready (NodeStatusUnknown: Kubelet stopped posting node status.)"
        assert km.provisioner.handle.reason == reason
        assert any(r.getMessage() == f"kernel pod {pod} ended: {reason}" for r in caplog.records)
    finally:
        await km.shutdown_kernel(now=True)  # the kill is a forced delete: the pod goes although its kubelet is away
    assert_nothing_left(sim_cluster)
    assert km.provisioner.driver.cluster.pool().totals()[VGPU].allocated == 0  # the vGPU is free again


# ---------------------------------------------------------------- out of memory


async def test_oom_killed_kernel_says_it_exceeded_its_memory_limit(sim_cluster, vgpu_spec, caplog):
    spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
    sim_cluster.faults.oom_kill_pods("*", after=0.0)
    starting = AsyncKernelManager(kernel_name=spec, config=k8s_config(memory_limit="8Gi"))
    with pytest.raises(KernelLaunchError) as caught:
        await starting.start_kernel()
    assert caught.value.reason == "exited"
    assert str(caught.value).startswith(
        "the kernel exceeded its 8 GiB memory limit before it was ready (OOMKilled, exit code 137)")
    assert_nothing_left(sim_cluster)

    sim_cluster.faults.clear()
    km = AsyncKernelManager(kernel_name=spec, config=k8s_config(memory_limit="8Gi"))
    await km.start_kernel()
    try:
        pod = kernel_objects(sim_cluster, "pods")[0]
        assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "8Gi"
        with caplog.at_level(logging.WARNING, logger="orion_jupyter.k8s"):
            assert sim_cluster.oom_kill(NS, pod["metadata"]["name"])
            await asyncio.wait_for(km.provisioner.wait(), 10)
        assert not await km.is_alive() and await km.provisioner.poll() == 137
        reason = "the kernel exceeded its 8 GiB memory limit (OOMKilled, exit code 137)"
        assert km.provisioner.handle.reason == reason
        assert any(r.getMessage() == f"kernel pod {pod['metadata']['name']} ended: {reason}" for r in caplog.records)
    finally:
        await km.shutdown_kernel(now=True)
    assert_nothing_left(sim_cluster)


# ---------------------------------------------------------------- a flaky API during a burst


async def test_api_errors_and_dropped_watches_during_a_burst_of_launches(sim_cluster, vgpu_spec, monkeypatch):
    """429s and 500s on creates, a failing watch reconnect and three dropped watches while 6 kernels start on
    4 vGPUs: each launch ends started or refused with its reason, and nothing is left after shutdown."""
    monkeypatch.setattr(watch_module, "BACKOFF_INITIAL_SECONDS", 0.05)
    spec = vgpu_spec("orion-1x4gi", 1, "4Gi")
    warm = AsyncKernelManager(kernel_name=spec, config=k8s_config())  # the shared watches run before the burst
    await warm.start_kernel()
    await warm.shutdown_kernel(now=True)
    faults = sim_cluster.faults
    faults.fail("create", "pods", status=429, times=2, message="Too many requests, please try again later.")
    faults.fail("create", "secrets", status=500, times=2)
    faults.fail("patch", "secrets", status=500, times=1)
    faults.fail("watch", "pods", status=500, times=2, namespace=NS)
    managers = [AsyncKernelManager(kernel_name=spec, config=k8s_config()) for _ in range(6)]

    async def drop_watches() -> None:
        for delay in (0.05, 0.25, 0.5):
            await asyncio.sleep(delay)
            faults.drop_watches(abrupt=True)

    dropping = asyncio.ensure_future(drop_watches())
    try:
        results = await asyncio.wait_for(start_all(managers), 90)
        await dropping
        started = [km for km, r in zip(managers, results, strict=True) if not isinstance(r, BaseException)]
        failed = [r for r in results if isinstance(r, BaseException)]
        for failure in failed:
            assert isinstance(failure, KernelLaunchError) and failure.reason and str(failure), repr(failure)
            assert str(failure).startswith("Not enough vGPUs free: this kernel needs 1 vGPU"), failure
        assert len(started) == 4 and len(failed) == 2, results
        for km in started:
            assert await km.is_alive()
        assert len(kernel_objects(sim_cluster, "pods")) == 4
        assert sim_cluster.count_requests(verb="create", resource="pods") >= 6  # the 429s were retried
    finally:
        dropping.cancel()
        await shutdown_started(managers)
    assert_nothing_left(sim_cluster)
