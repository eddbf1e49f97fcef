"""Direct-mode vGPU-hour budgets (c.OrionJupyter.budgets): the broker's engine (core/budgets.py) metered from
this server's own kernels. A real server on the local backend, real kernels; the meter's clock is the test's.

A budget warned (a progress event of the kernel, ``warning`` in GET budget), exhausted (the kernel parked where
snapshots are kept, else stopped, the reason its last event, never more than one interval over), a launch then
refused with when the budget resets (the extension's API and Jupyter's own), topped up by an instructor only,
and kept across a server restart; GET budget answers the broker's shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.core.budgets import Budgets
from orion_jupyter.progress import PROGRESS
from orion_jupyter.server.budgets import BudgetFile, ServerBudgets
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import fetch_json
from tests.kernel_io import run_in_kernel
from tests.test_hardening_local import TokenUsers  # alice and bob, told apart by their tokens

GPU_SPEC, CPU_SPEC = "orion-1x1gi", "orion-cpu"
POOL = {"gpus": 0, "cpu_slots": 3, "cpu_slot_memory": "4Gi"}
BUDGET = {"student": 1, "reset": {"weekly": "tue 09:00"}, "interval": 60}  # 1 vGPU-hour a week per user
# GET /orion/api/budget's fields, in direct mode and (tests/test_hub_budgets.py) hub mode alike.
BUDGET_FIELDS = {"budget", "used", "left", "unit", "course", "resets", "resets_text", "period", "text", "warning"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def budget_extra(request):
    return getattr(request, "param", {})


@pytest.fixture
def jp_server_config(tmp_path, budget_extra):
    return Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}, "identity_provider_class": TokenUsers},
        # Kernels started through Jupyter's own API are alice's (the server's user).
        "VGPUProvisioner": {"cluster": "local", "user": "alice"},
        "LocalPool": {**POOL, "state_file": str(tmp_path / "pool" / "slots.json")},
        "OrionJupyter": {"activity_report_interval": 0, "usage_sample_interval": 0, "instructors": ["bob"],
                         "budgets": budget_extra.get("budgets", BUDGET), "lab_timezone": "Europe/Berlin"},
        "Snapshots": budget_extra.get("snapshots", {}),
    })


@pytest.fixture
def api(jp_fetch, jp_serverapp, jp_environ, jp_asyncio_loop):
    for name, vgpus in ((GPU_SPEC, 1), (CPU_SPEC, 0)):
        kernelspecs.install(kernelspecs.VGPUKernelSpec(name=name, request=VGPURequest.parse(vgpus, "1Gi")), user=True)

    async def call(method: str, path: str, body=None, user: str = "alice", prefix=("orion", "api"), **params):
        kwargs = {"method": method, "headers": {"Authorization": f"token {user}-token"}, "params": params}
        if body is not None or method == "POST":
            kwargs["body"] = json.dumps(body or {})
        return await fetch_json(jp_fetch, *prefix, *path.split("/"), **kwargs)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


@pytest.fixture
def meter(jp_serverapp) -> ServerBudgets:
    [app] = jp_serverapp.extension_manager.extension_apps["orion_jupyter"]
    return app.state.budgets


@pytest.fixture
def clock(meter) -> Clock:
    clock = Clock()
    meter.budgets.clock = clock
    return clock


async def start(api, spec: str = GPU_SPEC, user: str = "alice") -> str:
    code, model = await api("POST", "kernels", {"spec": spec}, user=user)
    assert code == 201, model
    return model["id"]


def budget_events(kernel_id: str) -> list[dict]:
    return [e for e in PROGRESS.events(kernel_id) if e["stage"] == "budget"]


async def run_out(meter, clock, minutes: int) -> list[str]:
    """Meter once a minute for ``minutes``; the kernels given back."""
    out = []
    for _ in range(minutes):
        clock.now += 60
        out += await meter.meter()
    return out


async def test_warned_then_parked_with_the_reason_then_refused_with_the_reset_time(api, jp_serverapp, meter, clock):
    code, mine = await api("GET", "budget")
    assert code == 200 and set(mine) == BUDGET_FIELDS, mine
    assert mine["budget"] == 1 and mine["unit"] == "vGPU-hours" and mine["warning"] is None, mine
    assert mine["text"] == "1.0 of 1 vGPU-hours left this week · resets Tue 09:00", mine
    kernel_id = await start(api)
    cpu_kernel = await start(api, CPU_SPEC)  # CPU-only kernels cost nothing
    await run_in_kernel(jp_serverapp.kernel_manager.get_kernel(kernel_id), "answer = 42")

    assert await meter.meter() == []  # charged from here on
    assert await run_out(meter, clock, 49) == []  # 0.82 vGPU-hours
    [warning] = budget_events(kernel_id)
    assert warning["level"] == "warning" and re.match(
        r"80% of your vGPU-hour budget is used \(0\.(20|18) vGPU-hours left; it resets Tue 09:00\)", warning["message"])
    assert warning["message"].endswith("at zero vGPU kernels are parked"), warning
    code, mine = await api("GET", "budget")
    assert mine["warning"] == {"level": 0.8, "message": "80% of your budget is used"}, mine
    assert mine["text"] == "0.2 of 1 vGPU-hours left this week · resets Tue 09:00", mine

    assert await run_out(meter, clock, 10) == []  # 0.98
    assert await run_out(meter, clock, 1) == [kernel_id]  # 1.0: used up at this metering
    assert kernel_id not in jp_serverapp.kernel_manager and cpu_kernel in jp_serverapp.kernel_manager
    parked = budget_events(kernel_id)[-1]
    assert parked["message"].startswith("parked: your budget of 1 vGPU-hours is used up; it resets Tue 09:00"), parked
    code, listing = await api("GET", "snapshots")
    assert [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]] and listing["snapshots"][0]["saved"] == [
        "answer"], listing
    code, found = await api("GET", "events", kernel=kernel_id)
    assert code == 200 and found["events"][-1]["message"] == parked["message"]  # its owner reads why it went
    code, mine = await api("GET", "budget")
    assert mine["left"] == 0 and 1 <= mine["used"] <= 1 + 60 / 3600, mine  # at most one interval over

    # Out of budget: refused with when it resets, through every way of starting a kernel; nothing started.
    code, refused = await api("POST", "kernels", {"spec": GPU_SPEC})
    assert code == 400 and refused["field"] == "budget", refused
    assert "your budget of 1 vGPU-hours is used up" in refused["message"] and "resets Tue 09:00" in refused["message"]
    code, refused = await api("POST", "kernels", {"name": GPU_SPEC}, prefix=("api",))
    assert code == 400 and "resets Tue 09:00" in refused["message"], refused
    code, refused = await api("POST", "sessions", {"path": "a.ipynb", "type": "notebook", "name": "a.ipynb",
                                                   "kernel": {"name": GPU_SPEC}}, prefix=("api",))
    assert code == 409 and "resets Tue 09:00" in refused["message"], refused
    assert list(jp_serverapp.kernel_manager.list_kernel_ids()) == [cpu_kernel]
    code, specs = await api("GET", "specs")
    [gpu] = [s for s in specs["specs"] if s["name"] == GPU_SPEC]
    assert gpu["can_start"] is False and "resets Tue 09:00" in gpu["why_not"], gpu
    assert await start(api, CPU_SPEC)  # a CPU-only kernel still starts


@pytest.mark.parametrize("budget_extra", [{"snapshots": {"park_idle": False}}], indirect=True)
async def test_stopped_with_the_reason_where_nothing_is_parked(api, jp_serverapp, meter, clock):
    kernel_id = await start(api)
    assert await run_out(meter, clock, 62) == [kernel_id]
    assert kernel_id not in jp_serverapp.kernel_manager
    stopped = budget_events(kernel_id)
    assert stopped[0]["message"].endswith("at zero vGPU kernels are stopped"), stopped
    assert stopped[-1]["message"] == "stopped: your budget of 1 vGPU-hours is used up; it resets Tue 09:00"
    code, listing = await api("GET", "snapshots")
    assert listing["snapshots"] == []


async def test_only_an_instructor_tops_up_and_sees_everyones_use(api, meter, clock):
    kernel_id = await start(api)
    assert await run_out(meter, clock, 62) == [kernel_id]
    code, refused = await api("POST", "budgets/alice/topup", {"hours": 2}, user="alice")
    assert code == 403 and refused["message"] == "only instructors may top up a budget", refused
    code, refused = await api("POST", "budgets/alice/topup", {"hours": 0}, user="bob")
    assert code == 400 and refused["field"] == "hours", refused
    assert "more than 0 and at most 10000" in refused["message"]
    code, refused = await api("POST", "budgets/alice/topup", {"hours": 1, "more": True}, user="bob")
    assert code == 400 and refused["field"] == "hours", refused
    code, topped = await api("POST", "budgets/alice/topup", {"hours": 2}, user="bob")
    assert code == 200 and topped["user"] == "alice" and topped["budget"] == 3 and topped["left"] == pytest.approx(2)
    code, klass = await api("GET", "class", user="bob")
    [row] = klass["budgets"]
    assert row["user"] == "alice" and row["used"] == pytest.approx(1) and row["left"] == pytest.approx(2), row
    code, klass = await api("GET", "class", user="alice")
    assert klass["budgets"] == []  # a student sees no one's use
    assert kernel_id != await start(api)  # the top-up lets alice start again


@pytest.mark.parametrize("budget_extra", [{"budgets": {}}], indirect=True)
async def test_no_budget_says_so_in_the_same_shape(api):
    code, mine = await api("GET", "budget")
    assert code == 200 and mine == {"budget": None, "text": "no vGPU-hour budget on this server"}
    code, refused = await api("POST", "budgets/alice/topup", {"hours": 1}, user="bob")
    assert code == 409 and "c.OrionJupyter.budgets" in refused["message"], refused


def test_a_restarted_server_continues_use_and_top_ups(tmp_path, meter):
    """The meter's state in its file: a new meter (a restarted server) reads it back."""
    store = BudgetFile(tmp_path / "budgets.json")
    meter.budgets.used["user:alice"] = 0.75
    meter.budgets.topup("alice", 2)
    meter.store = store
    meter.save()

    class Settings:
        budgets, lab_timezone = BUDGET, "Europe/Berlin"

    again = ServerBudgets.configured(Settings, meter.kernels, meter.target, PROGRESS, "alice", "", store)
    assert isinstance(again.budgets, Budgets) and again.summary("alice")["used"] == 0.75
    assert again.summary("alice")["budget"] == 3
    store.path.write_text("{not json")
    assert ServerBudgets.configured(Settings, meter.kernels, meter.target, PROGRESS, "alice", "", store).summary(
        "alice")["used"] == 0  # an unreadable file: the window starts from nothing


def test_a_bad_budget_stops_the_server_at_start_naming_the_value(tmp_path):
    """Not a server without the extension (its kernels would start unmetered): one line, exit 2."""
    config = tmp_path / "jupyter_server_config.json"
    config.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {"orion_jupyter": True}},
                                  "VGPUProvisioner": {"cluster": "local"},
                                  "OrionJupyter": {"budgets": {"student": -1}}}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "jupyter_server", "--no-browser", "--port=0",
                          f"--ServerApp.root_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    [line] = [x for x in run.stderr.splitlines() if "c.OrionJupyter.budgets" in x]
    assert "c.OrionJupyter.budgets.student must be a number of hours, 0 or more" in line, run.stderr[-2000:]
