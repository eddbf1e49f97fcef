"""Idle vGPU kernels given back with a warning: the server extension on the simulated cluster.

Most tests drive the culler with a fake clock (``run_once(now=...)``) under a long idle time that
the extension's own loop never reaches; the busy test runs the real loop with short times.
"""

import asyncio
from datetime import datetime, timedelta

import pytest

from orion_jupyter.core.idle import duration, iso
from tests.helpers import eventually_async
from tests.kernel_io import run_in_kernel
from tests.test_server import NS, kernel_pods, server_config
from tests.test_server import api as api  # noqa: F401 - the fixture, on this module's server config
from tests.test_server import specs as specs  # noqa: F401

LONG = {"cull_idle_seconds": 600.0, "cull_warning_seconds": 60.0, "cull_interval_seconds": 0.2, "cull_max_keeps": 3}
SHORT = {"cull_idle_seconds": 2.0, "cull_warning_seconds": 1.0, "cull_interval_seconds": 0.2, "cull_max_keeps": 3}


@pytest.fixture
def culling():
    return LONG


@pytest.fixture
def jp_server_config(sim_cluster, culling):
    return server_config(culling)


@pytest.fixture
def culler(jp_serverapp):
    return jp_serverapp.web_app.settings["orion_jupyter_culler"]


@pytest.fixture
def started(jp_serverapp, jp_asyncio_loop):
    """The extension started as a running server starts it (pytest-jupyter's server never does): its loops run."""
    [app] = jp_serverapp.extension_manager.extension_apps["orion_jupyter"]
    jp_asyncio_loop.run_until_complete(app._start_jupyter_server_extension(jp_serverapp))
    yield app
    jp_asyncio_loop.run_until_complete(app.stop_extension())


async def start(api, jp_serverapp, **body):
    code, kernel = await api("POST", "kernels", {"spec": "orion-1x4gi", **body})
    assert code == 201, kernel
    km = jp_serverapp.kernel_manager.get_kernel(kernel["id"])
    await settled(km)
    return kernel, km


async def settled(km):
    """Not busy, and its last activity no longer moving (the start-up's messages are in). A kernel no client
    has talked to yet stays "starting" in jupyter_server's eyes: idle all the same."""
    seen = []

    def probe():
        seen.append((km.execution_state, km.last_activity))
        return seen[-3:]

    await eventually_async(probe, timeout=20, interval=0.25,
                           until=lambda last: len(last) == 3 and len(set(last)) == 1 and last[0][0] != "busy")


async def row(api, kernel_id, user="alice"):
    code, body = await api("GET", "allocations", user=user)
    assert code == 200
    return {k["kernel_id"]: k for k in body["kernels"]}.get(kernel_id)


async def events(api, kernel_id, user="alice"):
    code, body = await api("GET", "events", user=user, kernel=kernel_id)
    return code, (body or {}).get("events", [])


def cull_events(found):
    return [e for e in found if e.get("stage") == "cull"]


async def test_an_idle_kernel_is_warned_then_stopped_at_its_time(api, jp_serverapp, sim_cluster, culler):
    kernel, km = await start(api, jp_serverapp)
    kernel_id, pod = kernel["id"], kernel["vgpu"]["pod_name"]
    shown = await row(api, kernel_id)
    assert shown["cull_at"] == iso(km.last_activity + timedelta(seconds=600)), shown
    assert (shown["cull_warning"], shown["keeps_left"], shown["exempt"]) == (False, 3, False)
    cull_at = datetime.fromisoformat(shown["cull_at"])

    # inside the warning window: warned once (progress event, allocations row), not stopped
    soon = cull_at - timedelta(seconds=40)
    assert await culler.run_once(now=soon) == []
    assert await culler.run_once(now=soon) == []
    assert culler.fields(kernel_id, now=soon)["cull_warning"] is True
    code, found = await events(api, kernel_id)
    [warning] = cull_events(found)
    assert warning["level"] == "warning" and warning["cull_at"] == shown["cull_at"]
    assert warning["message"] == f"idle for 9 min: stops in 40 s ({shown['cull_at']}) to free its vGPU unless kept " \
                                 "(3 keeps left)"
    assert kernel_id in jp_serverapp.kernel_manager and len(kernel_pods(sim_cluster)) == 1

    # its time: shut down through the kernel manager, the pod deleted, the vGPU free again
    assert await culler.run_once(now=cull_at + timedelta(seconds=1)) == [kernel_id]
    assert kernel_id not in jp_serverapp.kernel_manager
    await eventually_async(lambda: kernel_pods(sim_cluster), timeout=10, until=lambda pods: pods == [])
    assert sim_cluster.get("pods", NS, pod) is None
    assert await row(api, kernel_id) is None
    await eventually_async(lambda: api("GET", "pool"), timeout=10,
                           until=lambda reply: reply[1]["totals"]["virtaitech.com/gpu"]["free"] == 4)

    # its owner reads why (the kernel is gone); nobody else does
    code, found = await events(api, kernel_id)
    assert code == 200
    assert cull_events(found)[-1]["message"] == "stopped after 10 min idle, its vGPU is free again"
    assert (await events(api, kernel_id, user="bob"))[0] == 404
    assert (await events(api, kernel_id, user="teacher"))[0] == 200


async def test_cpu_only_kernels_are_never_culled(api, jp_serverapp, culler):
    kernel, km = await start(api, jp_serverapp, vgpus=0)
    shown = await row(api, kernel["id"])
    assert (shown["cull_at"], shown["keeps_left"], shown["exempt"]) == (None, None, False)
    assert await culler.run_once(now=km.last_activity + timedelta(days=1)) == []
    assert kernel["id"] in jp_serverapp.kernel_manager
    code, refused = await api("POST", f"kernels/{kernel['id']}/keep")
    assert code == 409 and refused["message"] == (
        f'kernel "{kernel["id"]}" is never stopped for being idle; there is nothing to keep')


async def test_keep_restarts_the_idle_clock_a_bounded_number_of_times(api, jp_serverapp, sim_cluster, culler):
    kernel, km = await start(api, jp_serverapp)
    kernel_id = kernel["id"]
    first = (await row(api, kernel_id))["cull_at"]

    code, refused = await api("POST", f"kernels/{kernel_id}/keep", user="bob")
    assert code == 404 and refused["message"] == f'no vGPU kernel "{kernel_id}" of yours'
    code, refused = await api("POST", "kernels/no-such-kernel/keep")
    assert code == 404

    latest = first
    for user, left in (("alice", 2), ("teacher", 1), ("alice", 0)):  # the owner, or an instructor
        await asyncio.sleep(0.01)  # a later keep, a later time (to the millisecond)
        code, kept = await api("POST", f"kernels/{kernel_id}/keep", user=user)
        assert code == 200, kept
        assert kept["keeps_left"] == left and kept["cull_at"] > latest and kept["exempt"] is False
        latest = kept["cull_at"]
        assert (await row(api, kernel_id))["cull_at"] == latest
    code, refused = await api("POST", f"kernels/{kernel_id}/keep")
    assert code == 409
    assert refused["message"] == (f'kernel "{kernel_id}" was kept 3 times already (the limit is 3); run something '
                                  f"in it to keep it, or it stops at {latest} to free its vGPU")
    assert (await row(api, kernel_id))["cull_at"] == latest

    # the kept kernel is stopped at its new time, not the first one
    first_at, latest_at = datetime.fromisoformat(first), datetime.fromisoformat(latest)
    assert await culler.run_once(now=first_at + (latest_at - first_at) / 2) == []
    assert kernel_id in jp_serverapp.kernel_manager

    # activity in the kernel starts a new idle stretch: the keeps come back
    assert await run_in_kernel(km, "print(6 * 7)") == "42"
    await settled(km)
    shown = await row(api, kernel_id)
    assert shown["keeps_left"] == 3 and shown["cull_at"] == iso(km.last_activity + timedelta(seconds=600))
    assert await culler.run_once(now=datetime.fromisoformat(latest)) == []  # activity came after the keeps
    assert await culler.run_once(now=datetime.fromisoformat(shown["cull_at"]) + timedelta(seconds=1)) == [kernel_id]
    await eventually_async(lambda: kernel_pods(sim_cluster), timeout=10, until=lambda pods: pods == [])


async def test_an_instructor_exempts_a_kernel(api, jp_serverapp, culler):
    kernel, km = await start(api, jp_serverapp)
    kernel_id = kernel["id"]
    for user in ("bob", "alice"):  # another user, and the owner too: exempting is the instructor's
        code, refused = await api("POST", f"kernels/{kernel_id}/exempt", {"exempt": True}, user=user)
        assert code == 403 and refused["message"] == "only instructors may exempt a kernel from being stopped when idle"
    code, refused = await api("POST", "kernels/no-such-kernel/exempt", {"exempt": True}, user="teacher")
    assert code == 404
    for body in ({}, {"exempt": "yes"}, {"exempt": True, "also": 1}):
        code, refused = await api("POST", f"kernels/{kernel_id}/exempt", body, user="teacher")
        assert code == 400 and refused["field"] == "exempt", body

    code, exempted = await api("POST", f"kernels/{kernel_id}/exempt", {"exempt": True}, user="teacher")
    assert code == 200 and exempted["exempt"] is True and exempted["cull_at"] is None
    shown = await row(api, kernel_id)
    assert (shown["cull_at"], shown["exempt"], shown["cull_warning"]) == (None, True, False)
    assert await culler.run_once(now=km.last_activity + timedelta(days=1)) == []
    assert kernel_id in jp_serverapp.kernel_manager

    code, again = await api("POST", f"kernels/{kernel_id}/exempt", {"exempt": False}, user="teacher")
    assert code == 200 and again["exempt"] is False
    assert again["cull_at"] == iso(km.last_activity + timedelta(seconds=600))


@pytest.mark.parametrize("culling", [SHORT], ids=["short"])
async def test_a_busy_kernel_survives_and_is_stopped_once_idle(api, jp_serverapp, sim_cluster, culler, started):
    """The extension's own loop (every 0.2 s), with a 2 s idle time, against a cell that runs for 5 s."""
    culler.idle_seconds = 600.0  # while the kernel starts and the client connects
    kernel, km = await start(api, jp_serverapp)
    kernel_id = kernel["id"]
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=30)
        msg_id = client.execute("import time; time.sleep(5)")
        await eventually_async(lambda: km.execution_state, timeout=10, until=lambda state: state == "busy")
        culler.idle_seconds = SHORT["cull_idle_seconds"]
        shown = await row(api, kernel_id)
        assert shown["execution_state"] == "busy" and shown["cull_at"] is None
        assert await culler.run_once(now=km.last_activity + timedelta(days=1)) == []
        while True:  # the loop runs every 0.2 s meanwhile; a busy kernel is not idle, whatever its last activity
            reply = await client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
    assert kernel_id in jp_serverapp.kernel_manager and len(kernel_pods(sim_cluster)) == 1

    # idle now: the loop stops it (after a warning), the pod goes
    await eventually_async(lambda: kernel_id in jp_serverapp.kernel_manager, timeout=20, until=lambda alive: not alive)
    await eventually_async(lambda: kernel_pods(sim_cluster), timeout=10, until=lambda pods: pods == [])
    code, found = await events(api, kernel_id)
    messages = [(e["level"], e["message"]) for e in cull_events(found)]
    assert {level for level, _ in messages[:-1]} <= {"warning"} and messages[-1][0] == "info", messages
    assert messages[-1][1].startswith("stopped after ") and messages[-1][1].endswith(" idle, its vGPU is free again")


async def test_culling_off_shows_nothing(api, jp_serverapp, culler):
    culler.idle_seconds = 0  # c.OrionJupyter.cull_idle_seconds = 0
    kernel, km = await start(api, jp_serverapp)
    shown = await row(api, kernel["id"])
    assert (shown["cull_at"], shown["keeps_left"]) == (None, None)
    assert await culler.run_once(now=km.last_activity + timedelta(days=1)) == []
    assert (await api("POST", f"kernels/{kernel['id']}/keep"))[0] == 409


def test_durations_read_well():
    assert [duration(s) for s in (0, 2.4, 119, 120, 1800, 5400, 7200, 9000)] == [
        "0 s", "2 s", "119 s", "2 min", "30 min", "90 min", "2 h", "2 h 30 min"]


async def test_the_loop_starts_and_stops_with_the_extension(jp_serverapp, culler):
    assert (culler.idle_seconds, culler.warning_seconds, culler.max_keeps) == (600.0, 60.0, 3)
    [app] = jp_serverapp.extension_manager.extension_apps["orion_jupyter"]
    assert culler._timer is None  # pytest-jupyter's server does not start its extensions
    await app._start_jupyter_server_extension(jp_serverapp)
    assert culler._timer is not None and culler._timer.is_running()
    await app.stop_extension()
    assert culler._timer is None
