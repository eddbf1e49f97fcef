"""Direct mode's own warm kernels (c.OrionJupyter.warm_kernels): the server extension on the simulated
cluster keeps 2 kernel pods of the default vGPU spec started; a launch takes one (its pod existed
before the launch), the kernel knows its user and id, the pool refills, and stopping the server
leaves no warm pod behind."""

import pytest

from tests.helpers import eventually_async
from tests.kernel_io import run_in_kernel
from tests.test_server import NS, kernel_pods, server_config
from tests.test_server import api as api  # noqa: F401 - the fixture, on this module's server config
from tests.test_server import specs as specs  # noqa: F401

WARM = "orion-jupyter.io/warm"


@pytest.fixture
def jp_server_config(sim_cluster):
    return server_config({"warm_kernels": 2, "warm_kernel_spec": "orion-1x4gi"})


def warm_pods(cluster):
    return {p["metadata"]["name"]: p for p in kernel_pods(cluster) if (p["metadata"].get("labels") or {}).get(WARM)}


@pytest.mark.timeout(180)
async def test_a_launch_takes_a_warm_kernel_and_the_pool_refills(api, jp_serverapp, sim_cluster):
    [app] = jp_serverapp.extension_manager.extension_apps["orion_jupyter"]
    await app._start_jupyter_server_extension(jp_serverapp)  # pytest-jupyter's server never starts extensions
    try:
        pool = app.warm_pool
        await eventually_async(lambda: sum(k.ready for k in pool.kernels.kernels.values()), timeout=60,
                               until=lambda ready: ready == 2)
        before = warm_pods(sim_cluster)
        assert len(before) == 2

        code, kernel = await api("POST", "kernels", {"spec": "orion-1x4gi"})
        assert code == 201, kernel
        pod_name = kernel["vgpu"]["pod_name"]
        assert pod_name in before  # handed over: no pod started for this launch
        pod = sim_cluster.get("pods", NS, pod_name)
        assert WARM not in pod["metadata"]["labels"]
        assert pod["metadata"]["annotations"]["orion-jupyter.io/user"] == "alice"
        km = jp_serverapp.kernel_manager.get_kernel(kernel["id"])
        output = await run_in_kernel(km, "import os; print(os.environ['ORION_JUPYTER_USER'], "
                                         "os.environ['ORION_JUPYTER_KERNEL_ID'], os.environ['ORION_GMEM'])")
        assert output.strip() == f"alice {kernel['id']} 4096"

        # the pool refills beside the claimed kernel
        await eventually_async(lambda: warm_pods(sim_cluster), timeout=60,
                               until=lambda pods: len(pods) == 2 and pod_name not in pods)
        await jp_serverapp.kernel_manager.shutdown_kernel(kernel["id"])
        await eventually_async(lambda: sim_cluster.get("pods", NS, pod_name), timeout=30, until=lambda pod: pod is None)
    finally:
        await app.stop_extension()
    await eventually_async(lambda: warm_pods(sim_cluster), timeout=30, until=lambda pods: not pods)
