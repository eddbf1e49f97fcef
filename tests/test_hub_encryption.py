"""Hub mode with transport_encryption = "required" in the single-user servers: the broker starts kernel
pods whose Secret carries the CurveZMQ keys, the server talks to them encrypted, and the broker's idle
follower still reads their activity (it subscribes with the kernel's public key)."""

from __future__ import annotations

import base64
import json

from tests.classroom import BROKER, NS, class_hub_with, start_vgpu_kernel
from tests.helpers import eventually_async


async def test_encrypted_kernels_in_hub_mode(hub_factory, sim_cluster, tmp_path):
    config = tmp_path / "singleuser-config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"KernelManager": {"transport_encryption": "required"}}))
    with class_hub_with(hub_factory, sim_cluster, tmp_path, [], users=["alice", "teacher"],
                        singleuser_env={"JUPYTER_CONFIG_DIR": str(config)}) as (hub, _broker):
        await hub.wait_for_service(BROKER, "metrics")
        await hub.start_server("alice")
        kernel = await start_vgpu_kernel(hub, "alice")
        secrets = [s for s in sim_cluster.objects("secrets", NS)]
        assert len(secrets) == 1
        connection = json.loads(base64.b64decode(secrets[0]["data"]["connection.json"]))
        assert len(connection["curve_publickey"]) == len(connection["curve_secretkey"]) == 40
        pod = sim_cluster.objects("pods", NS)[0]
        assert connection["curve_secretkey"] not in json.dumps(pod)

        token = await hub.server_token("alice")

        async def cull_at():
            rows = (await hub.service_api(BROKER, "GET", "api/kernels", token=token))["kernels"]
            return next(row["cull_at"] for row in rows if row["kernel_id"] == kernel["id"])

        before = await eventually_async(cull_at, timeout=30)

        async def run_a_cell():
            assert await hub.kernel_ws_execute("alice", kernel["id"], "print(6 * 7)") == "42"
            return await cull_at()

        # the broker read a cell's activity through CurveZMQ: the idle clock moved (cells until its follower,
        # which joins the kernel's iopub on its own time, has seen one)
        await eventually_async(run_a_cell, timeout=90, interval=1, until=lambda at: at is not None and at > before)
