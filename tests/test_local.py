"""The local backend: slots on one machine, the same provisioner, fail-fast shortage, no leaks."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from jupyter_client.manager import AsyncKernelManager
from traitlets.config import Config

from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.local import VGPU_RESOURCE, LocalPool
from orion_jupyter.memory_cap import install as install_cap
from orion_jupyter.vgpu import VGPURequest
from tests.kernel_io import run_in_kernel


def local_config(slots: int = 4) -> Config:
    config = Config()
    config.VGPUProvisioner.cluster = "local"
    config.LocalPool.gpus = 0  # a CPU-only pool, whatever this machine has
    config.LocalPool.cpu_slots = slots
    return config


def free_slots(config: Config) -> int:
    return LocalPool(config=config).snapshot().totals()[VGPU_RESOURCE].free


async def test_kernel_gets_its_allocation_in_env(vgpu_spec):
    config = local_config()
    km = AsyncKernelManager(kernel_name=vgpu_spec("local-1x2gi", 1, "2Gi"), config=config)
    await km.start_kernel(vgpu={"memory": "3Gi"})
    try:
        out = await run_in_kernel(km, "import os; print(os.environ['ORION_GMEM'], os.environ['ORION_VGPU'], "
                                 "repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['ORION_JUPYTER_CLUSTER'])")
        assert out == "3072 1 '' local"
        assert free_slots(config) == 3
        await km.restart_kernel()
        assert free_slots(config) == 3  # a restart keeps its one slot
        assert await run_in_kernel(km, "import os; print(os.environ['ORION_GMEM'])") == "3072"
    finally:
        await km.shutdown_kernel()
    assert free_slots(config) == 4


async def test_six_launches_on_four_slots(vgpu_spec):
    config = local_config(4)
    spec = vgpu_spec("local-1x1gi", 1, "1Gi")
    managers = [AsyncKernelManager(kernel_name=spec, config=config) for _ in range(6)]
    results = await asyncio.gather(*(km.start_kernel() for km in managers), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 2, results
    for failure in failures:
        assert isinstance(failure, KernelLaunchError) and failure.reason == "unschedulable"
        assert str(failure).startswith(
            "Not enough vGPUs free: this kernel needs 1 vGPU; 0 of 4 are free right now (4 in use).")
    started = [km for km, r in zip(managers, results, strict=True) if not isinstance(r, BaseException)]
    assert free_slots(config) == 0
    await asyncio.gather(*(km.shutdown_kernel(now=True) for km in started))
    assert free_slots(config) == 4


async def test_sigkilled_kernel_frees_its_slot(vgpu_spec):
    config = local_config(2)
    km = AsyncKernelManager(kernel_name=vgpu_spec("local-kill", 1, "1Gi"), config=config)
    await km.start_kernel()
    pid = km.provisioner.allocation_summary()["pid"]
    assert free_slots(config) == 1
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(km.provisioner.wait(), 10)
    assert free_slots(config) == 2  # reclaimed: its process is gone
    await km.shutdown_kernel(now=True)


def test_restart_with_stale_state_reclaims_dead_slots_and_keeps_live_ones(jupyter_dirs):
    config = local_config(4)
    pool = LocalPool(config=config)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        from orion_jupyter.local import _process_start

        pool.reserve("live-kernel", "alice", VGPURequest(1, 1024))
        pool.started("live-kernel", live.pid)
        pool.reserve("dead-kernel", "bob", VGPURequest(2, 1024))
        pool.started("dead-kernel", live.pid)
        # The server restarts and finds "dead-kernel" recorded with a pid that has exited.
        table = json.loads(pool.path().read_text())
        table["dead-kernel"].update(pid=dead.pid, pid_start=_process_start(live.pid))
        pool.path().write_text(json.dumps(table))
        fresh = LocalPool(config=config)
        assert set(fresh.holders()) == {"live-kernel"}
        assert fresh.snapshot().totals()[VGPU_RESOURCE].free == 3
    finally:
        live.kill()
        live.wait()
    assert LocalPool(config=config).holders() == {}


def test_declared_gpus_and_memory_shortage(jupyter_dirs):
    config = local_config()
    config.LocalPool.gpus = 2
    config.LocalPool.gpu_memory = "8Gi"
    config.LocalPool.slices_per_gpu = 2
    pool = LocalPool(config=config)
    assert [n.name.split("/")[1] for n in pool.snapshot().nodes] == ["gpu0", "gpu1"]
    slots = pool.reserve("k1", "alice", VGPURequest(2, 6144))
    assert sorted(index for index, _ in slots) == [0, 1]  # one vGPU per GPU: 6 GiB each does not fit twice
    # 2 of 4 vGPUs are free, but only 2 GiB on each GPU: memory is what is short, and it is said so
    with pytest.raises(KernelLaunchError, match=r"^Not enough vGPU memory free: this kernel needs 4 GiB; at most 2 GiB "
                                                r"is free on any one device \(12 GiB of 16 GiB in use\)"):
        pool.reserve("k2", "bob", VGPURequest(1, 4096))
    with pytest.raises(KernelLaunchError, match="asks 16 GiB per vGPU, and the largest device here has 8 GiB"):
        pool.reserve("k3", "bob", VGPURequest(1, 16384))


@pytest.mark.torch
def test_memory_cap_hook_applies_when_torch_is_imported(monkeypatch):
    from orion_jupyter.allocation import KernelAllocation

    env = KernelAllocation(cluster="local", vgpus=1, memory_mib=2048).to_env()
    code = (
        "import json, sys\n"
        "from orion_jupyter import memory_cap\n"
        "print(memory_cap.install())\n"
        "import torch\n"
        "print(json.dumps(memory_cap.STATUS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0] == "vGPU memory cap of 2048 MiB installed (cooperative)"
    status = json.loads(out[1])
    assert status["torch"] == "no GPU present: PyTorch runs on the CPU, nothing to cap"


def test_memory_cap_sets_the_torch_fraction():
    from orion_jupyter.memory_cap import cap_torch

    calls = []

    class FakeCuda:
        is_available = staticmethod(lambda: True)
        device_count = staticmethod(lambda: 1)
        get_device_properties = staticmethod(lambda i: type("P", (), {"total_memory": 8 * 1024**3})())
        set_per_process_memory_fraction = staticmethod(lambda fraction, index: calls.append((fraction, index)))

    class FakeTorch:
        cuda = FakeCuda

    assert cap_torch(FakeTorch, 2048) == "capped at 2048 MiB per device (cuda:0 0.250 of device memory)"
    assert calls == [(0.25, 0)]
    assert install_cap({}) == "no vGPU memory granted: nothing to cap"


async def test_per_user_quota_on_the_local_pool(vgpu_spec):
    from orion_jupyter.vgpu import VGPURequestError

    config = local_config(4)
    config.KernelPolicy.max_vgpus_per_user = 1
    spec = vgpu_spec("local-quota", 1, "1Gi")
    first = AsyncKernelManager(kernel_name=spec, config=config)
    await first.start_kernel()
    try:
        with pytest.raises(VGPURequestError,
                           match=r"1 more vGPU would make 2 for you at once \(1 held now\); the limit is 1 per user"):
            await AsyncKernelManager(kernel_name=spec, config=config).start_kernel()
        assert free_slots(config) == 3
    finally:
        await first.shutdown_kernel(now=True)
