"""The fair queue of hub mode in a real browser (Debian's chromium) against a real JupyterHub and the
broker on the simulated cluster, no mocks: a course of one vGPU, ann holds it; ben, logged in to the hub,
starts "New vGPU notebook…" in JupyterLab and sees his place in line; ann's kernel stops, and ben's
notebook opens on his new vGPU kernel (tests/browser/hub_queue.mjs)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.classroom import BROKER, COURSE, SPEC, class_hub_with, start_vgpu_kernel
from tests.helpers import eventually_async

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSER_DIR = Path(__file__).parent / "browser"


@pytest.fixture
def one_vgpu_hub(hub_factory, sim_cluster, tmp_path):
    config = [f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 1, 'queue': True}}}}", "c.Broker.queue_keepalive = 1.0"]
    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=["ann", "ben", "teacher"]) as hub_broker:
        yield hub_broker


async def _lines(stream, timeout: float):
    """The browser script's stdout, one decoded line at a time (each bounded by ``timeout``); a plain
    pipe read in a thread, so no asyncio subprocess transport outlives the test's event loop."""
    while True:
        raw = await asyncio.wait_for(asyncio.to_thread(stream.readline), timeout)
        if not raw:
            return
        yield raw.decode(errors="replace").strip()


@pytest.mark.timeout(240)
async def test_queue_position_then_notebook_opens_in_real_hub(one_vgpu_hub, tmp_path):
    hub, _broker = one_vgpu_hub
    began = time.monotonic()
    await hub.wait_for_service(BROKER, "metrics")
    await asyncio.gather(hub.start_server("ann"), hub.start_server("ben"))
    held = await start_vgpu_kernel(hub, "ann")  # the course's one vGPU
    setup_s = time.monotonic() - began

    stderr_path = tmp_path / "hub_queue.stderr"
    with open(stderr_path, "wb") as stderr_file:  # a file: a chatty stderr never blocks the browser
        node = subprocess.Popen(
            ["node", str(BROWSER_DIR / "hub_queue.mjs"), hub.url, "ben", hub.password, SPEC, str(tmp_path)],
            cwd=BROWSER_DIR, stdout=subprocess.PIPE, stderr=stderr_file)
    lines, waiting, ben_place, released_at = [], None, None, None
    try:
        async for line in _lines(node.stdout, timeout=180):
            lines.append(line)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "waiting" in message and waiting is None:
                waiting = message["waiting"]
                # The broker's queue as ben's server says it (through the proxy, ben's token), then
                # the release: ann's kernel stops, its vGPU goes to the head of the line.
                [ben_place] = (await hub.server_api("ben", "GET", "orion/api/queue"))["waiting"]
                assert ben_place["kernel_id"] == waiting["kernel_id"] and ben_place["position"] == 1, ben_place
                await hub.server_api("ann", "DELETE", f"api/kernels/{held['id']}")
                released_at = time.monotonic() - began
        await asyncio.to_thread(node.wait, 30)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        node.stdout.close()
    stderr = stderr_path.read_text(errors="replace")
    assert node.returncode == 0, stderr
    assert lines, stderr
    result = json.loads(lines[-1])
    assert result["ok"], (result["step"], result.get("error"), result, stderr)
    assert result["errors"] == [], result["errors"]
    print(json.dumps({"setup_s": round(setup_s, 1), "released_at_s": round(released_at or -1, 1),
                      "total_s": round(time.monotonic() - began, 1), "browser_times": result["times"],
                      "failed_requests": result["failed_requests"]}))

    # Ben reached his own JupyterLab through the hub's login and OAuth.
    assert result["lab_url"].startswith("/user/ben/lab"), result["lab_url"]
    assert result["queue_before"] == {"waiting": []}, result["queue_before"]
    kernel_id = result["kernel_id"]
    assert result["request"]["spec"] == SPEC and re.fullmatch(r"[0-9a-f-]{36}", kernel_id), result["request"]

    # 1. While ann holds the vGPU: ben's place in the notification (with Cancel) and the status bar,
    #    and in GET orion/api/queue as the page reads it (its cookies, its XSRF token).
    assert "Starting a vGPU kernel" in result["toast"], result["toast"]
    assert "Waiting for a vGPU: 1st in line" in result["toast"], result["toast"]
    assert "Cancel" in result["toast_buttons"], result["toast_buttons"]
    assert result["queue_status"] == "vGPU queue: 1st", result["queue_status"]
    assert f"course {COURSE}" in result["queue_status_title"], result["queue_status_title"]
    assert result["queue_status_code"] == 200
    [place] = result["queue"]["waiting"]
    assert place["kernel_id"] == kernel_id and place["position"] == 1 and place["ahead"] == 0, place
    assert place["course"] == COURSE and place["kernel_spec_name"] == SPEC and place["vgpus"] == 1, place
    assert waiting == {"kernel_id": kernel_id, "position": 1} and ben_place is not None, waiting

    # 2. Ann's kernel stopped: ben's launch left the queue and his new notebook opened on that kernel.
    assert re.fullmatch(r"Untitled\d*\.ipynb", result["tab"]), result["tab"]
    assert result["kernel_item"] == "Python\u00a03 · 1\u00a0vGPU · 1\u00a0GiB | Idle", result["kernel_item"]
    assert result["kernel_status"] == "idle"
    assert result["cell_output"] == "ben", result["cell_output"]
    assert {"path": result["tab"], "kernel": kernel_id} in result["sessions"], result["sessions"]
    [mine] = [k for k in result["allocations"] if k["kernel_id"] == kernel_id]
    assert mine["user"] == "ben" and mine["vgpus"] == 1 and mine["kernel_spec"] == SPEC and mine["pod"], mine
    assert result["queue_status_hidden"] and result["queue_after"] == {"waiting": []}
    # Nothing the page asked of ben's server was refused (the XSRF check through the proxy included);
    # events may be 404 only before the server took the launch.
    refused = [r for r in result["failed_requests"]
               if not (r["status"] == 404 and r["path"].endswith("/orion/api/events"))]
    assert refused == [], refused

    # The kernel is ben's vGPU kernel on the cluster, and ann's is gone from her server.
    assert await hub.kernel_ws_execute("ben", kernel_id, "import os; print(os.environ['ORION_JUPYTER_USER'])") == "ben"
    await eventually_async(lambda: hub.server_api("ann", "GET", "orion/api/allocations"), timeout=30,
                           until=lambda found: not any(k["kernel_id"] == held["id"] for k in found["kernels"]))
    for shot in ("hub-queue-waiting", "hub-queue-opened"):
        assert (tmp_path / f"{shot}.png").stat().st_size > 10_000, shot
