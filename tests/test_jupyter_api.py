"""vGPU kernels through Jupyter's own API (local mode, a real jupyter_server): refusals answer like the
extension's API, kernels from the dialog and the demo cards connect like stock ones."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.session import Session
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually, fetch_json

SPEC = "orion-1x1gi"


@pytest.fixture
def state_file(tmp_path):
    return tmp_path / "pool" / "slots.json"


@pytest.fixture
def jp_server_config(state_file):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}},
        "VGPUProvisioner": {"cluster": "local"},
        "LocalPool": {"gpus": 0, "cpu_slots": 1, "cpu_slot_memory": "1Gi", "state_file": str(state_file)},
        "OrionJupyter": {"activity_report_interval": 0, "usage_sample_interval": 0},
    })


@pytest.fixture
def spec(jp_environ):
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name=SPEC, request=VGPURequest.parse(1, "1Gi")), user=True)
    return SPEC


@pytest.fixture
def server(jp_serverapp, jp_asyncio_loop, spec):
    yield jp_serverapp
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


async def post(jp_fetch, *path, body):
    return await fetch_json(jp_fetch, *path, method="POST", body=json.dumps(body))


def problems(caplog):
    """Log records of errors or with a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info or "Traceback" in r.getMessage()]


async def kernel_info_over_websocket(jp_ws_fetch, kernel_id):
    session = Session()
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels", params={"session_id": session.session})
    try:
        request = session.msg("kernel_info_request")
        request["channel"] = "shell"
        ws.write_message(json.dumps(request, default=str))
        while True:
            reply = json.loads(await ws.read_message())
            if reply["header"]["msg_type"] == "kernel_info_reply" \
                    and reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                return reply
    finally:
        ws.close()


async def test_dialog_kernel_connects_without_a_logged_exception(server, jp_fetch, jp_ws_fetch, caplog):
    caplog.set_level(logging.INFO)
    code, model = await post(jp_fetch, "orion", "api", "kernels", body={"spec": SPEC, "path": "lab1.ipynb"})
    assert code == 201, model
    reply = await kernel_info_over_websocket(jp_ws_fetch, model["id"])
    assert reply["content"]["status"] == "ok"
    assert problems(caplog) == []



async def test_refused_start_through_jupyters_api_is_a_409_with_the_reason(server, jp_fetch, caplog, state_file):
    caplog.set_level(logging.INFO)
    code, first = await post(jp_fetch, "api", "kernels", body={"name": SPEC})
    assert code == 201, first
    caplog.clear()
    for path, body in ((("api", "kernels"), {"name": SPEC}),
                       (("api", "sessions"), {"path": "lab2.ipynb", "type": "notebook", "kernel": {"name": SPEC}})):
        code, refusal = await post(jp_fetch, *path, body=body)
        assert code == 409, refusal
        assert "0 of 1 are free" in refusal["message"], refusal
    assert problems(caplog) == []
    assert any(refusal["message"] in r.getMessage() for r in caplog.records)
    km = server.kernel_manager
    assert km.list_kernel_ids() == [first["id"]] and list(km._pending_kernels) == []
    await km.shutdown_all()  # what the server's exit does: nothing refused trips it
    assert first["id"] not in state_file.read_text()


def test_server_exits_on_the_first_sigterm_after_a_refusal(tmp_path, state_file):
    """What JupyterHub does to stop a server: one SIGTERM; the server exits and leaves nothing running."""
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_PATH": str(tmp_path / "data")}
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name=SPEC, request=VGPURequest.parse(1, "1Gi")),
                        manager=KernelSpecManager(data_dir=str(tmp_path / "data")), user=True)
    port, token = free_port(), uuid.uuid4().hex
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}",
         f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={tmp_path}", "--VGPUProvisioner.cluster=local", "--LocalPool.gpus=0",
         "--LocalPool.cpu_slots=1", "--LocalPool.cpu_slot_memory=1Gi", f"--LocalPool.state_file={state_file}",
         "--OrionJupyter.usage_sample_interval=0", "--OrionJupyter.activity_report_interval=0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/kernels?token={token}"
        eventually(lambda: urllib.request.urlopen(url, timeout=2), timeout=60, retry_on=(OSError,))
        started = json.loads(http_post(url, {"name": SPEC}).read())
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_post(url, {"name": SPEC})
        assert refused.value.code == 409
        kernel_pid = json.loads(state_file.read_text())[started["id"]]["pid"]
        client = BlockingKernelClient(connection_file=str(tmp_path / "rt" / f"kernel-{started['id']}.json"))
        client.load_connection_file()
        client.start_channels()
        # the kernel runs (a kernel stopped while it imports prints a traceback); on a busy machine its heartbeat
        # may answer late, which wait_for_ready takes for a dead kernel
        eventually(lambda: client.wait_for_ready(timeout=30) or True, timeout=90, retry_on=(RuntimeError,))
        client.stop_channels()
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, log
    assert not [line for line in log.splitlines() if line.startswith("[E ")], log  # no error lines at all
    after_refusal = log[log.index("409 POST /api/kernels"):]
    assert "Traceback" not in after_refusal and "404" not in after_refusal, log
    assert log.count("0 of 1 are free") == 2, log  # tornado's line and the API's "wrote error", no traceback
    assert not pid_alive(kernel_pid)
    assert started["id"] not in state_file.read_text()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=60)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_jupyter_run_prints_the_output_only_and_frees_the_slot(tmp_path, state_file):
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_PATH": str(tmp_path / "data")}
    kernelspecs.install(kernelspecs.VGPUKernelSpec(name=SPEC, request=VGPURequest.parse(1, "1Gi")),
                        manager=KernelSpecManager(data_dir=str(tmp_path / "data")), user=True)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "jupyter_config.json").write_text(json.dumps({
        "VGPUProvisioner": {"cluster": "local"},
        "LocalPool": {"gpus": 0, "cpu_slots": 1, "cpu_slot_memory": "1Gi", "state_file": str(state_file)}}))
    (tmp_path / "job.py").write_text("import os\nprint('hello', os.environ['CUDA_VISIBLE_DEVICES'] == '', 6 * 7)\n")
    run = subprocess.run([sys.executable, "-m", "jupyter_client.runapp", "--kernel", SPEC, "job.py"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello True 42\n"
    # ipykernel's own warning about plain TCP is all (the stock python3 kernel prints it too)
    assert [line for line in run.stderr.splitlines() if not line.startswith("[IPKernelApp] WARNING")] == [], \
        run.stderr
    assert json.loads(state_file.read_text()) == {}  # released before `jupyter run` returned
