"""Park and resume on the local backend: a real server, real kernels, the local vGPU pool.

A kernel's namespace is parked into the owner's data folder, the kernel stopped and its slot freed;
a resume starts a new kernel (any spec the user may start) and brings the variables back. Each
refusal says why and loses nothing: the kernel keeps running, the snapshot stays as it was.
"""

import asyncio
import hashlib
import json
import os
import stat
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from traitlets.config import Config

from orion_jupyter import kernelspecs
from orion_jupyter.local import VGPU_RESOURCE, LocalPool
from orion_jupyter.progress import PROGRESS
from orion_jupyter.vgpu import VGPURequest
from tests.helpers import eventually_async, fetch_json
from tests.kernel_io import run_in_kernel
from tests.test_hardening_local import TokenUsers  # alice and bob, told apart by their tokens

GPU_SPEC, CPU_SPEC = "orion-1x1gi", "orion-cpu"
POOL = {"gpus": 0, "cpu_slots": 2, "cpu_slot_memory": "4Gi"}

# The cells of a student's notebook: data, a model after one training step, cell code, and what cannot be saved.
CELLS = """
import numpy as np
import torch
torch.manual_seed(0)
data = np.arange(24, dtype=np.float64).reshape(4, 6) / 7
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
    def forward(self, x):
        return self.layer(x)
model = Net()
opt = torch.optim.Adam(model.parameters(), lr=0.1)
inputs = torch.linspace(-1, 1, 12).reshape(4, 3)
targets = inputs.sum(dim=1, keepdim=True)
def train_step():
    opt.zero_grad()
    loss = ((model(inputs) - targets) ** 2).mean()
    loss.backward()
    opt.step()
    return loss.item()
train_step()
factor = 3
def scaled(value):
    return value * factor
class Point:
    def __init__(self, x):
        self.x = x
    def norm(self):
        return abs(self.x) * factor
p = Point(-2)
squares = (i * i for i in range(3))
"""

FINGERPRINT = """
import hashlib, json
print(json.dumps({"data": hashlib.sha256(data.tobytes()).hexdigest(),
                  "model": [hashlib.sha256(t.detach().numpy().tobytes()).hexdigest()
                            for t in model.state_dict().values()],
                  "step": int(opt.state_dict()["state"][0]["step"])}))
"""


# After a resume: one more training step, and what the cells' code sees.
TRAIN_AGAIN = """
train_step()
import hashlib, json
factor = 10
print(json.dumps({"params": [hashlib.sha256(t.detach().numpy().tobytes()).hexdigest()
                             for t in model.state_dict().values()],
                  "step": int(opt.state_dict()["state"][0]["step"]),
                  "shared": opt.param_groups[0]["params"][0] is model.layer.weight,
                  "np": float(np.sqrt(16.0)), "scaled": scaled(2), "norm": p.norm(),
                  "same_class": type(p) is Point and type(model) is Net}))
"""


def reference_after_two_steps() -> list[str]:
    """The model's parameters after two training steps, computed here without any park."""
    space: dict = {"__name__": "reference"}
    exec(CELLS.replace("squares = (i * i for i in range(3))", ""), space)  # noqa: S102 - the test's own cells
    space["train_step"]()
    return [hashlib.sha256(t.detach().numpy().tobytes()).hexdigest() for t in space["model"].state_dict().values()]


@pytest.fixture
def snapshot_extra(request, tmp_path):
    """Snapshots settings of the test ("{tmp}" in a value: the test's own temporary folder)."""
    return {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in getattr(request, "param", {}).items()}


@pytest.fixture
def server_extra(request):
    """Config sections a test adds (instructors, a course)."""
    return getattr(request, "param", {})


@pytest.fixture
def jp_server_config(tmp_path, snapshot_extra, server_extra):
    config = Config({
        "ServerApp": {"jpserver_extensions": {"orion_jupyter": True}, "identity_provider_class": TokenUsers},
        "VGPUProvisioner": {"cluster": "local"},
        "LocalPool": {**POOL, "state_file": str(tmp_path / "pool" / "slots.json")},
        "OrionJupyter": {"activity_report_interval": 0, "usage_sample_interval": 0},
        "Snapshots": snapshot_extra,
    })
    config.merge(Config(server_extra))
    return config


@pytest.fixture
def pool(tmp_path):
    return LocalPool(config=Config({"LocalPool": {**POOL, "state_file": str(tmp_path / "pool" / "slots.json")}}))


@pytest.fixture
def api(jp_fetch, jp_serverapp, jp_environ, jp_asyncio_loop):
    for name, vgpus in ((GPU_SPEC, 1), (CPU_SPEC, 0)):
        kernelspecs.install(kernelspecs.VGPUKernelSpec(name=name, request=VGPURequest.parse(vgpus, "1Gi")), user=True)

    async def call(method: str, path: str, body=None, user: str = "alice"):
        kwargs = {"method": method, "headers": {"Authorization": f"token {user}-token"}}
        if body is not None or method == "POST":
            kwargs["body"] = json.dumps(body or {})
        return await fetch_json(jp_fetch, "orion", "api", *path.split("/"), **kwargs)

    yield call
    jp_asyncio_loop.run_until_complete(jp_serverapp.kernel_manager.shutdown_all(now=True))


async def run(serverapp, kernel_id: str, code: str) -> str:
    return await run_in_kernel(serverapp.kernel_manager.get_kernel(kernel_id), code)


async def start(api, spec: str = CPU_SPEC, user: str = "alice") -> str:
    code, model = await api("POST", "kernels", {"spec": spec}, user=user)
    assert code == 201, model
    return model["id"]


def snapshot_folder(user: str = "alice") -> Path:
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "orion-snapshots" / user


async def test_park_then_resume_on_a_vgpu_kernel(api, jp_serverapp, pool, tmp_path):
    kernel_id = await start(api, CPU_SPEC)  # prepared on a CPU-only kernel
    opened = tmp_path / "notes.txt"
    await run(jp_serverapp, kernel_id, CELLS + f"notes = open({str(opened)!r}, 'w')")
    before = json.loads(await run(jp_serverapp, kernel_id, FINGERPRINT))
    assert before["step"] == 1

    code, parked = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 201, parked
    assert {"data", "model", "opt", "np", "torch", "train_step", "scaled", "Net", "Point", "p", "factor"} <= set(
        parked["saved"])
    assert parked["not_saved"]["squares"].startswith("a generator: ")
    assert parked["not_saved"]["notes"].startswith("an open file: ")
    assert kernel_id not in jp_serverapp.kernel_manager  # the kernel is gone
    code, listing = await api("GET", "snapshots")
    assert [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]]
    assert listing["snapshots"][0]["spec"] == CPU_SPEC and listing["snapshots"][0]["bytes"] == parked["bytes"]

    folder = snapshot_folder() / parked["snapshot"]  # private to its owner
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in folder.iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["owner"] == "alice" and manifest["kernel"]["spec"] == CPU_SPEC
    assert manifest["modules"] == {"np": "numpy", "torch": "torch", "hashlib": "hashlib", "json": "json"}
    assert manifest["serializer"].startswith("dill ")

    used = pool.holders()
    code, resumed = await api("POST", f"snapshots/{parked['snapshot']}/resume", {"spec": GPU_SPEC})
    assert code == 200, resumed
    new_id = resumed["kernel_id"]
    assert set(pool.holders()) == set(used) | {new_id}  # on a vGPU slot
    assert set(resumed["not_restored"]) == {"squares", "notes"}
    assert "a generator" in resumed["not_restored"]["squares"] and resumed["snapshot_kept"] is False

    after = json.loads(await run(jp_serverapp, new_id, FINGERPRINT))
    assert after == before  # equal values, checked by checksums
    result = json.loads(await run(jp_serverapp, new_id, TRAIN_AGAIN))
    assert result["step"] == 2 and result["shared"] is True  # training continues from the same step
    assert result["params"] == reference_after_two_steps()
    assert result["np"] == 4.0 and result["same_class"] is True
    assert result["scaled"] == 20 and result["norm"] == 20  # cell code sees today's globals
    assert not snapshot_folder().joinpath(parked["snapshot"]).exists()  # all came back: the snapshot is done


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_park_frees_the_vgpu_and_resume_is_refused_while_the_pool_is_full(api, jp_serverapp, pool):
    parks, written = metric("orion_jupyter_snapshot_seconds_count", action="park", outcome="ok"), metric(
        "orion_jupyter_snapshot_bytes_total", action="park")
    refusals = metric("orion_jupyter_snapshot_seconds_count", action="resume", outcome="unschedulable")
    kernel_id = await start(api, GPU_SPEC)
    await run(jp_serverapp, kernel_id, "answer = 42")
    code, parked = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 201 and parked["saved"] == ["answer"], parked
    assert kernel_id not in pool.holders()  # its vGPU slot is free
    code, pool_view = await api("GET", "pool")
    assert pool_view["totals"][VGPU_RESOURCE]["free"] == POOL["cpu_slots"]

    others = [await start(api, GPU_SPEC, user="bob") for _ in range(POOL["cpu_slots"])]
    code, refused = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 409 and "Not enough vGPUs free" in refused["message"], refused
    code, listing = await api("GET", "snapshots")
    assert [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]]  # nothing lost
    assert set(pool.holders()) == set(others)
    assert metric("orion_jupyter_snapshot_seconds_count", action="park", outcome="ok") == parks + 1
    assert metric("orion_jupyter_snapshot_bytes_total", action="park") == written + parked["bytes"]
    assert metric("orion_jupyter_snapshot_seconds_count", action="resume", outcome="unschedulable") > refusals

    await jp_serverapp.kernel_manager.shutdown_kernel(others[0])
    code, resumed = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 200 and resumed["restored"] == ["answer"] and resumed["spec"] == GPU_SPEC, resumed
    assert await run(jp_serverapp, resumed["kernel_id"], "print(answer)") == "42"


async def test_idle_culling_parks_the_kernel_and_says_so(api, jp_serverapp, jp_fetch, pool):
    culler = jp_serverapp.web_app.settings["orion_jupyter_culler"]
    kernel_id = await start(api, GPU_SPEC)
    await run(jp_serverapp, kernel_id, "answer = 42")
    await eventually_async(lambda: asyncio.sleep(0, culler.cull_at(kernel_id)), timeout=20,
                           until=lambda at: at is not None)  # idle once the cell's messages are in
    cull_at = culler.cull_at(kernel_id)

    def cull_events():
        return [e for e in PROGRESS.events(kernel_id) if e["stage"] == "cull"]

    assert await culler.run_once(now=cull_at - timedelta(seconds=60)) == []
    [warning] = cull_events()
    assert warning["message"].startswith("idle for 29 min: parks in 60 s"), warning
    code, rows = await api("GET", "allocations")
    assert [r["cull_parks"] for r in rows["kernels"] if r["kernel_id"] == kernel_id] == [True]  # the page says "parks"
    assert await culler.run_once(now=cull_at + timedelta(seconds=1)) == [kernel_id]
    assert kernel_id not in jp_serverapp.kernel_manager and kernel_id not in pool.holders()  # its vGPU is free
    parked = cull_events()[-1]
    code, listing = await api("GET", "snapshots")
    assert [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]] and listing["snapshots"][0]["saved"] == [
        "answer"], listing
    assert parked["message"].startswith("parked after 30 min idle") and parked["snapshot"] in parked["message"]
    code, found = await fetch_json(jp_fetch, "orion", "api", "events", params={"kernel": kernel_id},
                                   headers={"Authorization": "token alice-token"})
    assert code == 200 and found["events"][-1]["snapshot"] == parked["snapshot"]  # its owner reads where it went
    code, resumed = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 200 and await run(jp_serverapp, resumed["kernel_id"], "print(answer)") == "42"


@pytest.mark.parametrize("snapshot_extra", [{"max_snapshot_bytes": 1000}], indirect=True)
async def test_an_idle_kernel_that_cannot_be_parked_is_stopped_all_the_same(api, jp_serverapp, pool):
    culler = jp_serverapp.web_app.settings["orion_jupyter_culler"]
    kernel_id = await start(api, GPU_SPEC)
    await run(jp_serverapp, kernel_id, "import numpy as np\nbig = np.ones(10_000)")  # over the 1000-byte limit
    await eventually_async(lambda: asyncio.sleep(0, culler.cull_at(kernel_id)), timeout=20,
                           until=lambda at: at is not None)
    assert await culler.run_once(now=culler.cull_at(kernel_id) + timedelta(seconds=1)) == [kernel_id]
    assert kernel_id not in jp_serverapp.kernel_manager and kernel_id not in pool.holders()
    last = [e for e in PROGRESS.events(kernel_id) if e["stage"] == "cull"][-1]
    assert last["message"].startswith("stopped after ") and "snapshot" not in last
    code, listing = await api("GET", "snapshots")
    assert listing["snapshots"] == []


async def test_unknown_and_other_users_snapshots_answer_404(api, jp_serverapp):
    kernel_id = await start(api)
    await run(jp_serverapp, kernel_id, "secret = 'alice only'")
    code, parked = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 201, parked
    sid = parked["snapshot"]
    for method, path, body in (("POST", f"snapshots/{sid}/resume", {}), ("DELETE", f"snapshots/{sid}", None)):
        code, refused = await api(method, path, body, user="bob")
        assert code == 404 and refused["message"] == f'no snapshot "{sid}" of yours', refused
    assert (await api("GET", "snapshots", user="bob"))[1] == {"snapshots": [], "supported": True}
    for bad in ("20260101T000000Z-00000000", "..", "%2e%2e%2Fetc", "x" * 300):
        code, refused = await api("POST", f"snapshots/{bad}/resume")
        assert code == 404, (bad, refused)
    code, refused = await api("POST", f"kernels/{uuid.uuid4()}/park")
    assert code == 404
    other = await start(api, user="bob")
    code, refused = await api("POST", f"kernels/{other}/park")  # bob's kernel is not alice's to park
    assert code == 404 and other in jp_serverapp.kernel_manager
    code, refused = await api("POST", f"snapshots/{sid}/resume", {"spec": "no-such-spec"})
    assert code == 400 and refused["message"] == 'no kernel spec named "no-such-spec" to resume on', refused
    code, refused = await api("POST", f"snapshots/{sid}/resume", {"spec": 3, "path": "/etc/passwd"})
    assert code == 400 and refused["field"] == "spec", refused
    code, deleted = await api("DELETE", f"snapshots/{sid}")
    assert code == 200 and not snapshot_folder().joinpath(sid).exists()


@pytest.mark.parametrize("server_extra", [{"OrionJupyter": {"instructors": ["bob"]},
                                           "VGPUProvisioner": {"course": "ai101"}}], indirect=True)
async def test_an_instructor_parks_a_students_kernel_and_a_course_from_the_class_view(api, jp_serverapp):
    first, second = await start(api), await start(api)
    await run(jp_serverapp, first, "answer = 42")
    teachers = await start(api, user="bob")
    code, refused = await api("POST", f"class/kernels/{teachers}/park")  # alice is a student
    assert code == 404 and teachers in jp_serverapp.kernel_manager, refused
    code, refused = await api("POST", "class/park", {"course": "ai101"})
    assert code == 403 and refused["message"] == "only instructors may park a course's kernels", refused
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == {first, second, teachers}

    code, parked = await api("POST", f"class/kernels/{first}/park", user="bob")
    assert code == 201 and parked["saved"] == ["answer"] and first not in jp_serverapp.kernel_manager, parked
    assert snapshot_folder("alice").joinpath(parked["snapshot"], "manifest.json").exists()  # the student's own
    for body in ({}, {"course": 3}, {"course": "ai101", "path": "/"}):
        code, refused = await api("POST", "class/park", body, user="bob")
        assert code == 400 and refused["field"] == "course", refused
    code, refused = await api("POST", "class/park", {"course": "ai999"}, user="bob")
    assert code == 404 and "ai999" in refused["message"], refused
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == {second, teachers}  # nothing parked

    code, course = await api("POST", "class/park", {"course": "ai101"}, user="bob")
    assert code == 200 and course["not_parked"] == [], course
    assert sorted((p["user"], p["kernel_id"]) for p in course["parked"]) == sorted(
        [("alice", second), ("bob", teachers)])
    assert not jp_serverapp.kernel_manager.list_kernel_ids()
    code, listing = await api("GET", "snapshots")
    assert {s["id"] for s in listing["snapshots"]} == {parked["snapshot"]} | {
        p["snapshot"] for p in course["parked"] if p["user"] == "alice"}


async def test_corrupt_and_truncated_snapshots(api, jp_serverapp):
    kernel_id = await start(api)
    await run(jp_serverapp, kernel_id, "import numpy as np\nbig = np.arange(50000)\nsmall = 'kept'")
    code, parked = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 201, parked
    folder = snapshot_folder() / parked["snapshot"]
    manifest = json.loads((folder / "manifest.json").read_text())
    [big_file] = [e["file"] for e in manifest["entries"] if e["names"] == ["big"]]
    with open(folder / big_file, "r+b") as fh:  # truncated
        fh.truncate(1000)

    code, resumed = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 200, resumed
    assert resumed["restored"] == ["np", "small"]
    assert resumed["not_restored"]["big"].startswith(f"damaged: its file {big_file} is 1000 bytes")
    assert resumed["snapshot_kept"] is True and folder.is_dir()  # nothing lost
    assert await run(jp_serverapp, resumed["kernel_id"], "print(small, 'big' in dir())") == "kept False"

    (folder / "manifest.json").write_text('{"format": 1, "entries": [')  # a damaged manifest
    kernels = set(jp_serverapp.kernel_manager.list_kernel_ids())
    code, refused = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 422 and "is damaged" in refused["message"] and refused["reason"] == "damaged", refused
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == kernels  # no kernel started
    code, listing = await api("GET", "snapshots")
    assert "damaged" in listing["snapshots"][0]["error"]


@pytest.mark.parametrize("snapshot_extra", [{"max_snapshot_bytes": 200_000, "max_user_bytes": 300_000}],
                         indirect=True)
async def test_size_limits_refuse_and_the_kernel_keeps_running(api, jp_serverapp):
    kernel_id = await start(api)
    await run(jp_serverapp, kernel_id, "import numpy as np\nbig = np.ones(100_000)")
    code, refused = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 413 and refused["reason"] == "too_big", refused
    assert "passed its limit of 195.3 KiB while saving 'big'" in refused["message"]
    assert kernel_id in jp_serverapp.kernel_manager
    assert await run(jp_serverapp, kernel_id, "print(big.sum())") == "100000.0"
    assert list(snapshot_folder().iterdir()) == []  # no partial snapshot left

    await run(jp_serverapp, kernel_id, "big = np.ones(20_000)")  # 160 kB: fits one snapshot
    left = snapshot_folder() / "20260101T000000Z-0badf00d.partial"  # what a kernel killed while parking left
    left.mkdir()
    (left / "v0.pkl").write_bytes(b"x" * 250_000)
    code, first = await api("POST", f"kernels/{kernel_id}/park")
    assert not left.exists()  # removed, so it does not count against the limit
    assert code == 201, first
    second = await start(api)
    await run(jp_serverapp, second, "import numpy as np\nbig = np.ones(20_000)")
    code, refused = await api("POST", f"kernels/{second}/park")  # the user's 300 kB would be passed
    assert code == 413 and "already used by your snapshots" in refused["message"], refused
    assert second in jp_serverapp.kernel_manager


async def test_a_write_failure_during_park_leaves_the_kernel_running(api, jp_serverapp):
    kernel_id = await start(api)
    # The kernel's files may not grow past 64 KiB (as a full disk or quota would stop them).
    await run(jp_serverapp, kernel_id, """
import resource, signal
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
big = np.ones(100_000)
""")
    code, refused = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 507 and refused["reason"] == "disk", refused
    assert "File too large" in refused["message"] and "the kernel keeps running" in refused["message"]
    assert kernel_id in jp_serverapp.kernel_manager
    assert await run(jp_serverapp, kernel_id, "print(big.shape)") == "(100000,)"
    assert list(snapshot_folder().iterdir()) == []


async def test_a_busy_kernel_is_not_parked(api, jp_serverapp):
    kernel_id = await start(api)
    await run(jp_serverapp, kernel_id, "x = 1")
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    client = km.client()
    client.start_channels()
    try:
        client.execute("import time\nwhile True: time.sleep(0.05)")
        await eventually_async(lambda: km.execution_state == "busy", timeout=30)
        code, refused = await api("POST", f"kernels/{kernel_id}/park")
        assert code == 409 and refused["reason"] == "busy" and "is running a cell" in refused["message"], refused
        assert kernel_id in jp_serverapp.kernel_manager
        await km.interrupt_kernel()
        await eventually_async(lambda: km.execution_state == "idle", timeout=30)
        code, parked = await api("POST", f"kernels/{kernel_id}/park")
        assert code == 201 and parked["saved"] == ["time", "x"], parked
    finally:
        client.stop_channels()


@pytest.mark.parametrize("snapshot_extra", [{"location": "{tmp}/class-volume/snapshots"}], indirect=True)
async def test_a_location_other_users_can_write_is_refused(api, jp_serverapp, snapshot_extra):
    shared = Path(snapshot_extra["location"]).parent
    shared.mkdir()
    shared.chmod(0o1777)  # a class-shared volume: everyone may write, sticky
    kernel_id = await start(api)
    await run(jp_serverapp, kernel_id, "x = 1")
    code, refused = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 409 and refused["reason"] == "location", refused
    assert f"{shared} is writable by other users" in refused["message"]
    assert kernel_id in jp_serverapp.kernel_manager
    assert not any(shared.iterdir())


# -- the kernel-side engine alone ----------------------------------------------------------------
def test_the_kernels_answer_is_read_as_json_or_a_literal():
    from orion_jupyter.kernel_calls import answer_of
    from orion_jupyter.snapshot import Report, SnapshotError

    report = Report(snapshot="x", saved=["a"], not_saved={})
    assert answer_of({"application/json": report._repr_json_()}) == report
    assert answer_of({"text/plain": repr(report)}) == report  # a kernel without the JSON formatter
    with pytest.raises(SnapshotError, match="could not be read"):
        answer_of({"text/plain": "__import__('os').system('true')"})  # never evaluated


def test_user_folders_are_one_per_exact_name(tmp_path):
    from orion_jupyter import snapshot

    names = ["alice", "Alice", "../alice", "alice/..", "u-" + "0" * 40, "ålice", ""]
    parts = [snapshot.user_part(name) for name in names]
    assert len(set(parts)) == len(names) and parts[0] == "alice"
    assert all("/" not in part and part not in ("", ".", "..") for part in parts)
    folder = snapshot.user_folder(tmp_path / "snapshots", "../alice")
    assert folder.parent == tmp_path / "snapshots" and stat.S_IMODE(folder.stat().st_mode) == 0o700
    with pytest.raises(snapshot.SnapshotError, match="not an absolute path"):
        snapshot.user_folder("relative/snapshots", "alice")
    (tmp_path / "snapshots").chmod(0o770)  # group-writable: refused, not repaired
    with pytest.raises(snapshot.SnapshotError, match="is writable by other users"):
        snapshot.user_folder(tmp_path / "snapshots", "alice")


class Handle:
    """A handle whose pickling fails with an OSError of its own."""

    def __reduce__(self):
        raise OSError("the device is gone")


def test_what_cannot_be_saved_loses_only_itself(tmp_path):
    import socket
    import threading

    from orion_jupyter import snapshot

    folder = tmp_path / "partial"
    folder.mkdir()
    with open(tmp_path / "log.txt", "w") as fh, socket.socket() as sock:
        thread = threading.Thread(target=print)
        names = {"kept": [1, 2.5, "three", {"four": (4,)}], "fh": fh, "sock": sock, "thread": thread,
                 "it": iter([1, 2]), "inside": {"log": fh}, "handle": Handle()}
        manifest = snapshot._save(folder, names, {"used": 0, "limit": 1 << 20, "why": "test"})
    assert [e["names"] for e in manifest["entries"]] == [["kept"]]
    why = manifest["not_saved"]
    assert why["fh"].startswith("an open file") and why["sock"].startswith("a network socket")
    assert why["thread"].startswith("a thread") and why["it"].startswith("a live iterator (list_iterator)")
    assert "it holds an open file" in why["inside"]
    assert why["handle"] == "could not be saved (OSError: the device is gone)"  # its own error, not a disk's
    assert (tmp_path / "log.txt").exists() and sorted(p.name for p in folder.iterdir()) == ["v0.pkl"]


def test_a_gpu_tensor_comes_back_on_the_cpu_where_the_gpu_is_missing():
    import torch

    from orion_jupyter import snapshot

    snapshot.MOVED.clear()
    restored = snapshot._tensor_on(torch.ones(3), "cuda:0", True, True)
    assert isinstance(restored, torch.nn.Parameter) and restored.requires_grad and restored.device.type == "cpu"
    assert snapshot.MOVED == ([] if torch.cuda.is_available() else ["cuda:0"])


@pytest.mark.parametrize("snapshot_extra", [{"park_idle": False}], indirect=True)
async def test_without_park_idle_the_page_is_told_culling_stops(api, jp_serverapp, pool):
    kernel_id = await start(api, GPU_SPEC)
    code, rows = await api("GET", "allocations")
    assert [r["cull_parks"] for r in rows["kernels"] if r["kernel_id"] == kernel_id] == [False]


def test_the_folder_holding_snapshots_may_be_group_writable_as_a_kubernetes_volume_root_is(tmp_path):
    from orion_jupyter import snapshot

    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o2775)  # fsGroup's mode for a volume's root (z2jh's home of each user)
    folder = snapshot.user_folder(home / snapshot.HOME_FOLDER, "ann")
    assert folder == home / snapshot.HOME_FOLDER / "ann" and folder.stat().st_mode & 0o777 == 0o700  # setgid kept
    home.chmod(0o777)  # anyone may write it: refused
    with pytest.raises(snapshot.SnapshotError, match=f"{home} is writable by other users"):
        snapshot.user_folder(home / snapshot.HOME_FOLDER, "ann")
    home.chmod(0o2775)
    (home / snapshot.HOME_FOLDER).chmod(0o770)  # the snapshot folder itself stays private
    with pytest.raises(snapshot.SnapshotError, match="is writable by other users"):
        snapshot.user_folder(home / snapshot.HOME_FOLDER, "ann")
