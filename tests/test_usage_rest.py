"""Memory used vs granted, through the server: allocations report a kernel's use within one sample
interval, the class view sorts by waste, /metrics has the used bytes (local backend, CPU pool)."""

import json

import pytest
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually_async
from tests.kernel_io import run_in_kernel
from tests.test_server import TokenUsers, as_user

MIB = 1024 * 1024
INTERVAL = 0.5


@pytest.fixture
def jp_server_config(tmp_path):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}, "identity_provider_class": TokenUsers,
                      "authenticate_prometheus": False},
        "VGPUProvisioner": {"cluster": "local"},
        "LocalPool": {"gpus": 0, "cpu_slots": 4, "cpu_slot_memory": "4Gi", "state_file": str(tmp_path / "slots.json")},
        "OrionJupyter": {"instructors": ["teacher"], "activity_report_interval": 0, "usage_sample_interval": INTERVAL},
    })


@pytest.fixture
def api(jp_fetch, jp_serverapp, jp_environ, jp_asyncio_loop):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name="local-1x2gi", request=VGPURequest.parse(1, "2Gi")), user=True)
    # what a running server does once its loop starts (the sampler's timer among it); pytest-jupyter does not
    jp_asyncio_loop.run_until_complete(jp_serverapp.extension_manager.start_all_extensions())

    async def call(method, path, body=None, user="alice", **params):
        response = await jp_fetch("orion", "api", *path.split("/"), method=method, headers=as_user(user),
                                  params=params, body=json.dumps(body) if body is not None else None)
        return json.loads(response.body)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


@pytest.mark.torch
async def test_allocations_report_memory_in_use_and_the_class_sorts_by_waste(api, jp_serverapp, jp_fetch):
    busy = await api("POST", "kernels", {"spec": "local-1x2gi"})
    idle = await api("POST", "kernels", {"spec": "local-1x2gi"}, user="bob")
    km = jp_serverapp.kernel_manager.get_kernel(busy["id"])
    await run_in_kernel(km, "import torch; held = torch.ones(512 * 1024 * 1024 // 4)")  # 512 MiB, pages touched

    def busy_row(reply):
        return next(k for k in reply["kernels"] if k["kernel_id"] == busy["id"])

    allocations = await eventually_async(lambda: api("GET", "allocations"), timeout=4 * INTERVAL + 10,
                                         until=lambda reply: (busy_row(reply)["memory_used"] or 0) >= 512 * MIB)
    row = busy_row(allocations)
    assert row["memory_source"] == "rss" and row["memory_sampled_at"]  # the CPU fallback says what it measured
    assert row["memory_granted"] == 2048 * MIB and row["waste_bytes"] == 2048 * MIB - row["memory_used"]
    assert [k["kernel_id"] for k in allocations["kernels"]] == [busy["id"]]  # alice sees only hers

    await eventually_async(lambda: api("GET", "class", user="teacher"), timeout=10,
                           until=lambda reply: all(k["memory_used"] is not None for k in reply["kernels"]))
    ordered = await api("GET", "class", user="teacher", sort="waste")
    assert [k["kernel_id"] for k in ordered["kernels"]] == [idle["id"], busy["id"]]  # the idle slice wastes most
    assert ordered["kernels"][0]["waste_bytes"] > ordered["kernels"][1]["waste_bytes"]

    metrics = (await jp_fetch("metrics", method="GET")).body.decode()
    used = [line for line in metrics.splitlines() if line.startswith("orion_jupyter_vgpu_memory_used_bytes{")]
    assert any('source="rss"' in line and float(line.split()[-1]) >= 512 * MIB for line in used), used
