"""vGPU memory in use: the kernel's sample, its usage_reply hook, and the server's sampler (not activity)."""

import asyncio
import sys
import types

import pytest
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from traitlets.config import Config

from orion_jupyter import usage
from orion_jupyter.server.usage import UsageSampler, reading_from_reply
from tests.kernel_io import run_in_kernel

MIB = 1024 * 1024
torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()


# -- the kernel-side sample -----------------------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="the RSS source is the CPU fallback; this machine has CUDA")
def test_rss_sample_grows_with_a_512_mib_tensor(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # as the local backend's CPU kernels have it
    before = usage.sample()
    assert before["source"] == "rss" and before["devices"] == []
    assert "CPU" in before["note"]
    tensor = torch.ones(512 * MIB // 4, dtype=torch.float32)  # ones, not empty: the pages are touched
    after = usage.sample()
    # the allocator may hand back a few pages the process already held: within 32 MiB of the tensor
    assert after["memory_used"] - before["memory_used"] >= 480 * MIB
    del tensor


def test_torch_sample_sums_reserved_over_devices(monkeypatch):
    """The summing, with a stand-in torch.cuda (the real one is exercised by the GPU test below)."""
    reserved, allocated = {0: 3 * MIB, 1: 5 * MIB}, {0: 1 * MIB, 1: 2 * MIB}
    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 2,
                                 memory_reserved=reserved.__getitem__, memory_allocated=allocated.__getitem__)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    result = usage.sample()
    assert result["source"] == "torch"
    assert (result["memory_used"], result["memory_allocated"]) == (8 * MIB, 3 * MIB)
    assert result["devices"] == [{"index": 0, "memory_reserved": 3 * MIB, "memory_allocated": MIB},
                                 {"index": 1, "memory_reserved": 5 * MIB, "memory_allocated": 2 * MIB}]
    # Not initialised and no NVML to ask: torch's own 0 bytes, not the CPU's RSS.
    cuda.is_initialized, reserved[0], reserved[1] = (lambda: False), 0, 0
    monkeypatch.setitem(usage._NVML, "state", "unavailable")
    result = usage.sample()
    assert (result["source"], result["memory_used"]) == ("torch", 0) and "not initialised" in result["note"]


def test_nvml_sample_counts_this_process_on_visible_devices(monkeypatch):
    """NVML's bookkeeping with a stand-in pynvml: visible devices by index or UUID, only our PIDs."""
    import os

    me = os.getpid()
    process = types.SimpleNamespace
    by_key = {"0": [process(pid=me, usedGpuMemory=700 * MIB), process(pid=1, usedGpuMemory=9000 * MIB)],
              "GPU-b": [process(pid=me, usedGpuMemory=None)], "1": [process(pid=2, usedGpuMemory=MIB)]}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: str(i), nvmlDeviceGetHandleByUUID=lambda u: u,
        nvmlDeviceGetComputeRunningProcesses=by_key.__getitem__)
    # torch imported with CUDA but not initialised (another framework may hold memory): NVML is asked.
    idle_cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=idle_cuda))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setitem(usage._NVML, "state", "unknown")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,GPU-b")
    result = usage.sample()
    assert result["source"] == "nvml" and result["memory_used"] == 700 * MIB
    assert [d["process_found"] for d in result["devices"]] == [True, True]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = usage.sample()
    assert result["memory_used"] == 0 and "no process of this kernel" in result["note"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every device hidden: not NVML
    assert usage.sample()["source"] == "rss"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False here)")
def test_torch_sample_on_a_gpu():
    torch.cuda.init()  # before it, torch holds nothing and NVML (when installed) is the source
    before = usage.sample()
    assert before["source"] == "torch"
    tensor = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
    after = usage.sample()
    assert after["source"] == "torch"
    assert after["memory_used"] - before["memory_used"] >= 512 * MIB
    assert after["memory_allocated"] >= 512 * MIB
    assert len(after["devices"]) == torch.cuda.device_count()
    del tensor


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False here)")
def test_nvml_sample_on_a_gpu():
    """NVML's per-process count of this process, read directly (torch, when in use, is preferred)."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    tensor = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
    result = usage._nvml_sample()
    assert result is not None and result["source"] == "nvml"
    assert result["memory_used"] >= 512 * MIB  # the tensor and the CUDA context
    del tensor


# -- the usage_reply hook, on a stand-in kernel ---------------------------------------------------
class FakeSession:
    def __init__(self):
        self.sent = []

    def send(self, stream, msg_type, content=None, parent=None, ident=None, **kwargs):
        self.sent.append((msg_type, content, parent))


def _request(msg_id="m1"):
    return {"header": {"msg_id": msg_id, "msg_type": "usage_request"}, "content": {}}


async def test_hook_wraps_the_kernels_own_usage_reply():
    kernel = types.SimpleNamespace(session=FakeSession(), control_handlers={})

    async def ipykernel_usage_request(stream, ident, parent):
        kernel.session.send(stream, "usage_reply", {"pid": 1, "kernel_memory": 5}, parent, ident)

    kernel.control_handlers["usage_request"] = ipykernel_usage_request
    assert "wrapped" in usage.install_reply_hook(kernel)
    assert "wrapped" in usage.install_reply_hook(kernel)  # twice: still one wrapper
    await kernel.control_handlers["usage_request"](None, [], _request())
    kernel.session.send(None, "usage_reply", {"pid": 1}, _request("other"))  # not through the wrapper
    (_, content, _), (_, untouched, _) = kernel.session.sent
    assert content["kernel_memory"] == 5 and content["orion_vgpu"]["source"] in ("torch", "nvml", "rss")
    assert "orion_vgpu" not in untouched


async def test_hook_answers_usage_request_on_an_ipykernel_without_it():
    kernel = types.SimpleNamespace(session=FakeSession(), control_handlers={})
    assert "no usage_request" in usage.install_reply_hook(kernel)
    await kernel.control_handlers["usage_request"](None, [], _request())
    [(msg_type, content, parent)] = kernel.session.sent
    assert msg_type == "usage_reply" and parent["header"]["msg_id"] == "m1"
    assert content["kernel_memory"] > 0 and content["orion_vgpu"]["memory_used"] > 0


def test_hook_outside_a_kernel_does_nothing():
    assert usage.install_reply_hook(object()) == "not in an ipykernel: no usage_reply to extend"


def test_server_reads_a_plain_ipykernel_reply_as_rss():
    """An image without orion-jupyter: ipykernel's own content (kernel_memory when psutil is there)."""
    assert reading_from_reply({"hostname": "h", "pid": 7, "kernel_memory": 123}) == {
        "memory_used": 123, "memory_source": "rss"}
    assert reading_from_reply({"kernel_memory": 5, "orion_vgpu": {"memory_used": 9, "source": "torch"}}) == {
        "memory_used": 9, "memory_source": "torch"}
    assert reading_from_reply({"hostname": "h", "pid": 7, "cpu_count": 2}) is None  # no psutil in the image


# -- a real kernel, a real jupyter_server kernel manager ------------------------------------------
def _local_config() -> Config:
    config = Config()
    config.VGPUProvisioner.cluster = "local"
    config.LocalPool.gpus = 0  # a CPU-only pool, whatever this machine has
    config.LocalPool.cpu_slots = 2
    return config


async def _readings(sampler: UsageSampler, kernel_id: str, after: dict, count: int, timeout: float) -> list[dict]:
    """The next ``count`` readings of a kernel after the reading ``after`` (by their sampled_at)."""
    seen: list[dict] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seen) < count:
        assert loop.time() < deadline, f"only {len(seen)} readings in {timeout} s: {seen}"
        reading = sampler.latest(kernel_id)
        if reading["memory_sampled_at"] != (seen[-1] if seen else after)["memory_sampled_at"]:
            seen.append(reading)
        await asyncio.sleep(0.02)
    return seen


async def _settle(kernel) -> None:
    """Until the kernel's IOPub status has been seen idle by the activity watch."""
    for _ in range(100):
        if kernel.execution_state == "idle":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the idle status and anything after it have arrived


async def test_sampler_reads_a_real_kernel_without_user_activity(vgpu_spec, tmp_path):
    mkm = AsyncMappingKernelManager(config=_local_config(), root_dir=str(tmp_path))
    kernel_id = await mkm.start_kernel(kernel_name=vgpu_spec("local-usage", 1, "2Gi"))
    sampler = UsageSampler(mkm, interval_seconds=0.5, log=mkm.log)
    try:
        kernel = mkm.get_kernel(kernel_id)
        code = "import torch\nfrom orion_jupyter.usage import HOOK\nprint(HOOK['usage_reply'])"
        hook = await run_in_kernel(kernel, code)  # another client of the kernel: its own session id
        assert hook == "usage_reply carries orion_vgpu (ipykernel's handler, wrapped)"
        await _settle(kernel)

        # Without the untracked types (sample_once alone), a probe would count as activity: the test can fail.
        await sampler.sample_once()
        baseline = sampler.latest(kernel_id)
        # A CPU slot (CUDA_VISIBLE_DEVICES=""), so the kernel's torch has no CUDA: its RSS, on any machine.
        assert baseline is not None and baseline["memory_source"] == "rss"
        await _settle(kernel)

        await run_in_kernel(kernel, "import torch\nx = [torch.ones(128 * 1024 * 1024 // 4) for _ in range(4)]")
        await _settle(kernel)
        activity, state = kernel.last_activity, kernel.execution_state
        assert state == "idle"

        sampler.start()
        assert {"usage_request", "usage_reply"} <= set(mkm.untracked_message_types)
        # The first at once, then one every 0.5 s: the first well within two intervals (slack for a slow CI).
        [first] = await _readings(sampler, kernel_id, baseline, 1, timeout=1.5)
        assert first["memory_source"] == "rss" and first["memory_used"] >= 512 * MIB
        assert first["memory_used"] - baseline["memory_used"] >= 480 * MIB  # within the pages the allocator reuses
        assert first["memory_sampled_at"].endswith("Z")
        await _readings(sampler, kernel_id, first, 3, timeout=5)
        await asyncio.sleep(0.5)  # the last probe's busy/idle status has reached the activity watch
        assert (kernel.last_activity, kernel.execution_state) == (activity, state)  # four probes, no activity

        # While a cell runs (a training loop), the control channel still answers.
        client = kernel.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            client.execute("import time\ny = torch.ones(64 * 1024 * 1024 // 4)\ntime.sleep(2)")
            for _ in range(100):
                if kernel.execution_state == "busy":
                    break
                await asyncio.sleep(0.02)
            busy = sampler.latest(kernel_id)
            [during] = await _readings(sampler, kernel_id, busy, 1, timeout=1.5)
            assert kernel.execution_state == "busy" and during["memory_used"] >= first["memory_used"] + 60 * MIB
        finally:
            client.stop_channels()
    finally:
        sampler.stop()
        await mkm.shutdown_kernel(kernel_id, now=True)
    await sampler.sample_once()  # the kernel is gone: its client and reading go too
    assert sampler.latest(kernel_id) is None


async def test_probe_without_untracking_is_activity(vgpu_spec, tmp_path):
    """The control experiment: jupyter_server counts the probe's busy/idle unless it is untracked."""
    mkm = AsyncMappingKernelManager(config=_local_config(), root_dir=str(tmp_path))
    kernel_id = await mkm.start_kernel(kernel_name=vgpu_spec("local-usage-control", 1, "1Gi"))
    sampler = UsageSampler(mkm, interval_seconds=0.5, reply_timeout=5)
    try:
        kernel = mkm.get_kernel(kernel_id)
        await run_in_kernel(kernel, "pass")
        await _settle(kernel)
        before = kernel.last_activity
        await sampler.sample_once()  # not start(): usage_request is still tracked
        await _settle(kernel)
        assert sampler.latest(kernel_id) is not None
        assert kernel.last_activity > before
        sampler.untrack_probe_messages()
        after = kernel.last_activity
        await sampler.sample_once()
        await _settle(kernel)
        assert kernel.last_activity == after
    finally:
        sampler.stop()
        await mkm.shutdown_kernel(kernel_id, now=True)


async def test_sampler_skips_kernels_it_did_not_start(tmp_path, jupyter_dirs):
    """A plain python3 kernel (no VGPUProvisioner) is never asked."""
    mkm = AsyncMappingKernelManager(root_dir=str(tmp_path))
    kernel_id = await mkm.start_kernel(kernel_name="python3")
    sampler = UsageSampler(mkm, interval_seconds=0.5)
    try:
        await sampler.sample_once()
        assert sampler.latest(kernel_id) is None and sampler.readings() == {}
    finally:
        sampler.stop()
        await mkm.shutdown_kernel(kernel_id, now=True)


def test_probe_client_is_async_with_a_session_id_of_its_own():
    """Even for a blocking manager; the same key, another ZMQ identity than km.client()'s."""
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import KernelManager

    km = KernelManager()
    sampler = UsageSampler(None, interval_seconds=1)
    try:
        client = sampler._client(km)
        assert isinstance(client, AsyncKernelClient)
        assert client.session.key == km.session.key and client.session.session != km.client().session.session
    finally:
        sampler.stop()
