"""`orion-jupyter gc` on the simulated cluster, and the README's run command (`scripts/lab`)."""

import asyncio
import json
import uuid

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from orion_jupyter.backends import get_backend
from orion_jupyter.cli import main
from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests
from orion_jupyter.vgpu import VGPURequest


def test_gc_removes_finished_pods_and_orphan_secrets(sim_cluster, capsys):
    def manifests(kernel_id):
        return build_kernel_manifests(KernelPodOptions(
            kernel_id=kernel_id, user="dana", request=VGPURequest(1, 1024), backend=get_backend("orion"),
            image="img", namespace="lab", connection_info={"key": "k", "shell_port": 1}, name_suffix="s"))

    finished, orphan, alive = manifests("finished"), manifests("orphan"), manifests("alive")
    for m, command in ((finished, ["true"]), (alive, ["sleep", "60"])):
        sim_cluster.create_object("secrets", "lab", m.secret)
        container = {**m.pod["spec"]["containers"][0], "command": command, "readinessProbe": None}
        sim_cluster.create_object("pods", "lab", {**m.pod, "spec": {**m.pod["spec"], "containers": [container]}})
    sim_cluster.create_object("secrets", "lab", orphan.secret)
    sim_cluster.wait_for("pods", "lab", finished.name, lambda p: p and p["status"].get("phase") == "Succeeded")

    assert main(["gc", "--namespace", "lab", "--dry-run", "--min-age", "0"]) == 0
    assert sim_cluster.get("secrets", "lab", orphan.name) is not None
    out = capsys.readouterr().out
    assert f"Would delete Pod lab/{finished.name}: the kernel has ended (Succeeded)" in out
    assert main(["gc", "--namespace", "lab", "--min-age", "0"]) == 0
    assert sim_cluster.get("pods", "lab", finished.name) is None
    assert sim_cluster.get("secrets", "lab", finished.name) is None
    assert sim_cluster.get("secrets", "lab", orphan.name) is None
    assert sim_cluster.get("pods", "lab", alive.name) is not None and sim_cluster.get("secrets", "lab", alive.name)
    sim_cluster.delete_object("pods", "lab", alive.name, grace_period_seconds=0)


async def execute_over_websocket(base: str, token: str, kernel_id: str, code: str) -> str:
    ws = await websocket_connect(HTTPRequest(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels",
                                             headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": uuid.uuid4().hex,
                   "username": "test", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False},
    }))
    output = ""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.read_message(), 60))
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            output += msg["content"]["text"]
        if msg["msg_type"] == "error":
            raise AssertionError(msg["content"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            ws.close()
            return output.strip()


async def test_readme_run_command_brings_up_jupyterlab(lab_server):
    base, token, headers = lab_server.base, lab_server.token, lab_server.headers
    http = AsyncHTTPClient()
    lab = await http.fetch(f"{base}/lab", headers=headers)
    assert b"JupyterLab" in lab.body
    news = json.loads((await http.fetch(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification",
                                        headers=headers)).body)
    defaults = news["schema"]["properties"]
    # offline rooms
    assert defaults["fetchNews"]["default"] == "false" and defaults["checkForUpdates"]["default"] is False

    session = json.loads((await http.fetch(f"{base}/api/sessions", method="POST", headers=headers, body=json.dumps(
        {"path": "demo.ipynb", "type": "notebook", "kernel": {"name": "orion-1x2gi"}}))).body)
    kernel_id = session["kernel"]["id"]
    out = await execute_over_websocket(
        base, token, kernel_id, "import os\nprint(os.environ['ORION_GMEM'], os.environ['ORION_JUPYTER_CLUSTER'])")
    assert out == "2048 local"

    allocations = json.loads((await http.fetch(f"{base}/orion/api/allocations", headers=headers)).body)
    [kernel] = allocations["kernels"]
    assert (kernel["kernel_id"], kernel["memory_mib"], kernel["path"]) == (kernel_id, 2048, "demo.ipynb")
    pool = json.loads((await http.fetch(f"{base}/orion/api/pool", headers=headers)).body)
    assert pool["source"] == "local" and pool["totals"]["orion-jupyter.io/vgpu"]["allocated"] == 1
    await http.fetch(f"{base}/api/sessions/{session['id']}", method="DELETE", headers=headers)
    pool = json.loads((await http.fetch(f"{base}/orion/api/pool", headers=headers)).body)
    assert pool["totals"]["orion-jupyter.io/vgpu"]["allocated"] == 0
