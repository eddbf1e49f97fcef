"""Park and resume in direct mode on the simulated cluster: kernel pods mount the snapshot storage
(c.VGPUProvisioner.volumes, a hostPath bind-mounted in the pod's own mount namespace), the server reads
the same folder at c.Snapshots.location, the kernel writes it at c.Snapshots.kernel_location."""

import hashlib
import json
from datetime import timedelta
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import numpy as np
import pytest
from traitlets.config import Config

from orion_jupyter.server.snapshots import Snapshots, SnapshotService
from orion_jupyter.snapshot import HOME_FOLDER, SnapshotError
from tests.helpers import eventually_async
from tests.kernel_io import run_in_kernel
from tests.test_park import CELLS as STUDENT_CELLS
from tests.test_park import FINGERPRINT, TRAIN_AGAIN, reference_after_two_steps
from tests.test_server import NS, kernel_pods, server_config
from tests.test_server import api as api  # noqa: F401 - the fixture, on this module's server config
from tests.test_server import specs as specs  # noqa: F401

SPEC = "orion-1x4gi"
MOUNT = "/home/jovyan"  # where kernel pods see the storage
LIMIT = 1_000_000  # bytes one snapshot may take

# The student's notebook of tests/test_park.py (data, a torch model and its optimizer after one training step,
# cell-defined functions and classes, `import numpy as np`, a generator), an open file, and a large array.
CELLS = STUDENT_CELLS + f"""
notes = open({MOUNT + '/notes.txt'!r}, 'w')
big = np.ones(200_000)  # 1.6 MB: over the limit
"""


def storage_config(storage: Path) -> Config:
    """The server on the simulated cluster, kernel pods mounting ``storage`` at MOUNT."""
    config = server_config(Snapshots={"location": str(storage / HOME_FOLDER), "max_snapshot_bytes": LIMIT,
                                      "kernel_location": f"{MOUNT}/{HOME_FOLDER}"})
    config.VGPUProvisioner.volumes = [{"name": "home", "hostPath": {"path": str(storage)}}]
    config.VGPUProvisioner.volume_mounts = [{"name": "home", "mountPath": MOUNT}]
    return config


@pytest.fixture
def storage(tmp_path):
    folder = tmp_path / "storage"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def jp_server_config(request, sim_cluster, storage, tmp_path):
    config = storage_config(storage)
    if getattr(request, "param", None) == "no mount":  # kernel_location where no pod mounts the storage
        config.VGPUProvisioner.volumes = config.VGPUProvisioner.volume_mounts = []
        config.Snapshots.kernel_location = str(tmp_path / "pod-disk" / HOME_FOLDER)
    return config


async def run(serverapp, kernel_id: str, code: str) -> str:
    return await run_in_kernel(serverapp.kernel_manager.get_kernel(kernel_id), code)


async def free_vgpus(api) -> int:
    code, pool = await api("GET", "pool")
    return pool["totals"]["virtaitech.com/gpu"]["free"]


@pytest.mark.timeout(180)
async def test_park_and_resume_a_kernel_pod(api, jp_serverapp, sim_cluster, storage):
    code, kernel = await api("POST", "kernels", {"spec": SPEC})
    assert code == 201, kernel
    kernel_id, pod_name = kernel["id"], kernel["vgpu"]["pod_name"]
    pod = sim_cluster.get("pods", NS, pod_name)
    assert {"name": "home", "hostPath": {"path": str(storage)}} in pod["spec"]["volumes"]
    await run(jp_serverapp, kernel_id, CELLS)
    before = json.loads(await run(jp_serverapp, kernel_id, FINGERPRINT))

    # over the size limit: refused, nothing left, the kernel keeps running with its variables
    code, refused = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 413 and refused["reason"] == "too_big" and "while saving 'big'" in refused["message"], refused
    assert kernel_id in jp_serverapp.kernel_manager and sim_cluster.get("pods", NS, pod_name) is not None
    assert await run(jp_serverapp, kernel_id, "print(big.sum())") == "200000.0"
    assert list((storage / HOME_FOLDER / "alice").iterdir()) == []

    await run(jp_serverapp, kernel_id, "del big")
    assert await free_vgpus(api) == 3
    code, parked = await api("POST", f"kernels/{kernel_id}/park")
    assert code == 201, parked
    assert {"data", "model", "opt", "np", "torch", "train_step", "scaled", "Net", "Point", "p"} <= set(parked["saved"])
    assert parked["not_saved"]["squares"].startswith("a generator: ")
    assert parked["not_saved"]["notes"].startswith("an open file: ")
    folder = storage / HOME_FOLDER / "alice" / parked["snapshot"]  # the pod wrote it into the storage it mounts
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["owner"] == "alice" and manifest["kernel"]["spec"] == SPEC
    assert manifest["kernel"]["vgpu"]["pod_name"] == pod_name
    # the kernel is gone, its pod too, and its vGPU is free in the pool
    assert kernel_id not in jp_serverapp.kernel_manager
    await eventually_async(lambda: api("GET", "pool"), timeout=30,
                           until=lambda reply: reply[1]["totals"]["virtaitech.com/gpu"]["free"] == 4)
    assert sim_cluster.get("pods", NS, pod_name) is None and kernel_pods(sim_cluster) == []
    code, listing = await api("GET", "snapshots")
    assert listing["supported"] is True and [s["id"] for s in listing["snapshots"]] == [parked["snapshot"]]

    # another user's id is not found, and nothing of alice's is touched
    snapshot_id = parked["snapshot"]
    for method, path in (("POST", f"snapshots/{snapshot_id}/resume"), ("DELETE", f"snapshots/{snapshot_id}")):
        code, refused = await api(method, path, user="bob")
        assert code == 404 and refused["message"] == f'no snapshot "{snapshot_id}" of yours', refused
    assert (await api("GET", "snapshots", user="bob"))[1] == {"snapshots": [], "supported": True}

    code, resumed = await api("POST", f"snapshots/{parked['snapshot']}/resume")
    assert code == 200, resumed
    new_id = resumed["kernel_id"]
    assert set(resumed["not_restored"]) == {"squares", "notes"}
    assert resumed["not_restored"]["squares"].startswith("a generator: ")
    assert resumed["not_restored"]["notes"].startswith("an open file: ")
    assert await free_vgpus(api) == 3  # the new kernel holds a vGPU again
    after = json.loads(await run(jp_serverapp, new_id, FINGERPRINT))
    data = np.arange(24, dtype=np.float64).reshape(4, 6) / 7
    assert after == before and after["data"] == hashlib.sha256(data.tobytes()).hexdigest()  # equal checksums
    trained = json.loads(await run(jp_serverapp, new_id, TRAIN_AGAIN))
    assert trained["step"] == 2 and trained["shared"] is True  # training continues from the same step
    assert trained["params"] == reference_after_two_steps()
    assert trained["np"] == 4.0 and trained["same_class"] is True and trained["scaled"] == 20
    assert not folder.exists() and resumed["snapshot_kept"] is False  # all came back: the snapshot is done


async def test_idle_culling_parks_a_kernel_pod_into_its_storage(api, jp_serverapp, sim_cluster, storage):
    culler = jp_serverapp.web_app.settings["orion_jupyter_culler"]
    code, kernel = await api("POST", "kernels", {"spec": SPEC})
    assert code == 201, kernel
    await run(jp_serverapp, kernel["id"], "answer = 42")
    code, rows = await api("GET", "allocations")
    assert [r["cull_parks"] for r in rows["kernels"] if r["kernel_id"] == kernel["id"]] == [True]

    async def cull_when_due() -> list[str]:  # idle once the cell's last messages are in; then at its time
        at = culler.cull_at(kernel["id"])
        return await culler.run_once(now=at + timedelta(seconds=1)) if at is not None else []

    await eventually_async(cull_when_due, timeout=20, until=lambda culled: culled == [kernel["id"]])
    assert kernel["id"] not in jp_serverapp.kernel_manager
    assert sim_cluster.get("pods", NS, kernel["vgpu"]["pod_name"]) is None
    [parked] = (storage / HOME_FOLDER / "alice").iterdir()
    assert json.loads((parked / "manifest.json").read_text())["entries"][0]["names"] == ["answer"]
    code, resumed = await api("POST", f"snapshots/{parked.name}/resume")
    assert code == 200 and await run(jp_serverapp, resumed["kernel_id"], "print(answer)") == "42"


async def park_refused_for_location(api, serverapp) -> dict:
    """A new kernel's park refused for where its snapshot would go (409); the kernel keeps its variable."""
    code, kernel = await api("POST", "kernels", {"spec": SPEC})
    assert code == 201, kernel
    await run(serverapp, kernel["id"], "x = 41")
    code, refused = await api("POST", f"kernels/{kernel['id']}/park")
    assert code == 409 and refused["reason"] == "location", refused
    assert kernel["id"] in serverapp.kernel_manager and await run(serverapp, kernel["id"], "print(x)") == "41"
    return refused


async def test_a_shared_location_is_refused_and_the_kernel_keeps_running(api, jp_serverapp, storage):
    storage.chmod(0o1777)  # a class-shared volume anyone may write
    refused = await park_refused_for_location(api, jp_serverapp)
    assert f"{storage} is writable by other users" in refused["message"]
    assert list(storage.iterdir()) == []


async def test_a_volume_root_its_group_may_write_holds_private_snapshot_folders(api, jp_serverapp, storage):
    storage.chmod(0o2775)  # as Kubernetes' fsGroup leaves a volume's root (z2jh's homes)
    code, kernel = await api("POST", "kernels", {"spec": SPEC})
    assert code == 201, kernel
    await run(jp_serverapp, kernel["id"], "x = 41")
    code, parked = await api("POST", f"kernels/{kernel['id']}/park")
    assert code == 201 and parked["saved"] == ["x"], parked
    folders = [storage / HOME_FOLDER, *(storage / HOME_FOLDER).iterdir()]
    assert all(folder.stat().st_mode & 0o077 == 0 for folder in folders), folders  # the user's alone


@pytest.mark.parametrize("jp_server_config", ["no mount"], indirect=True)
async def test_a_kernel_pod_without_the_storage_neither_parks_nor_resumes(api, jp_serverapp, storage, tmp_path):
    """kernel_location set, but no volume mounted there: the pod writes its own disk (here: the host's, as
    kubesim runs a pod without mounts), which this server does not read."""
    pod_disk = tmp_path / "pod-disk" / HOME_FOLDER
    refused = await park_refused_for_location(api, jp_serverapp)
    assert f"which is not this server's {storage / HOME_FOLDER / 'alice'}/" in refused["message"]
    assert "its pod does not mount the snapshot storage (c.VGPUProvisioner.volumes" in refused["message"]
    assert list((storage / HOME_FOLDER / "alice").iterdir()) == []

    # the snapshot where this server keeps them, but not where a new pod looks: the resume says so, keeps it
    [written] = (pod_disk / "alice").iterdir()
    written.rename(storage / HOME_FOLDER / "alice" / written.name)
    kernels = set(jp_serverapp.kernel_manager.list_kernel_ids())
    code, refused = await api("POST", f"snapshots/{written.name}/resume")
    assert code == 409 and "the new kernel does not see the snapshot at " in refused["message"], refused
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == kernels  # the new kernel is stopped
    assert (storage / HOME_FOLDER / "alice" / written.name / "manifest.json").is_file()


# -- where each mode keeps snapshots, without a cluster ------------------------------------------------
class BrokerView:
    kind = "broker"

    def __init__(self, home: str):
        self.home = home

    async def kernel_home(self) -> str:
        return self.home


def service(view, root: Path, **settings) -> SnapshotService:
    kernels = SimpleNamespace(kernel_manager=None, serverapp=SimpleNamespace(root_dir=str(root)))
    return SnapshotService(SimpleNamespace(view=view, kernels=kernels), Snapshots(**settings))


async def test_hub_mode_keeps_snapshots_in_the_users_storage_or_says_why_not(tmp_path):
    where = await service(BrokerView("/home/jovyan"), tmp_path).where()
    assert where.server == tmp_path / HOME_FOLDER and where.kernel == PurePosixPath("/home/jovyan") / HOME_FOLDER
    assert where.kernel_path("ann", "20260101T000000Z-0badf00d") == \
        f"/home/jovyan/{HOME_FOLDER}/ann/20260101T000000Z-0badf00d"
    with pytest.raises(SnapshotError, match=r"kernel pods mount none of yours: its operator sets "
                                            r"c.Broker.home_mount_path with c.Broker.volumes") as caught:
        await service(BrokerView(""), tmp_path).where()
    assert caught.value.reason == "unsupported"
    assert not service(BrokerView("/home/jovyan"), tmp_path).parks_idle()  # the broker culls in hub mode


def test_direct_mode_on_kubernetes_needs_both_sides_of_the_folder(tmp_path):
    kubernetes = SimpleNamespace(kind="kubernetes")
    with pytest.raises(SnapshotError, match=r"\(c.Snapshots.kernel_location not set\)"):
        service(kubernetes, tmp_path, location=str(tmp_path)).direct_where()
    with pytest.raises(SnapshotError, match="'snapshots' is not an absolute path"):
        service(kubernetes, tmp_path, location=str(tmp_path), kernel_location="snapshots").direct_where()
    configured = service(kubernetes, tmp_path, location=str(tmp_path), kernel_location="/srv/snapshots")
    assert configured.parks_idle() and configured.direct_where().kernel == PurePosixPath("/srv/snapshots")


async def test_a_kernel_that_mounts_the_users_storage_never_takes_a_warm_kernel():
    from orion_jupyter.backends import get_backend
    from orion_jupyter.k8s.driver import KubernetesDriver
    from orion_jupyter.launch import KernelLaunch, PodSettings
    from orion_jupyter.vgpu import VGPURequest

    class Warm:  # a warm pool that would hand over any kernel asked for
        asked: list = []

        def reserve(self, *args):
            self.asked.append(args)
            return True

    warm = Warm()
    driver = KubernetesDriver(None, None, warm=warm)  # type: ignore[arg-type]
    launch = KernelLaunch(kernel_id="k", user="alice", request=VGPURequest.parse(1, "4Gi"),
                          backend=get_backend("orion"), pod=PodSettings(image="img"),
                          volumes=({"name": "home", "hostPath": {"path": "/srv/alice"}},),
                          volume_mounts=({"name": "home", "mountPath": MOUNT},))
    assert await driver._claim_warm(launch) is None and warm.asked == []


def test_a_park_under_way_in_the_same_storage_is_left_alone(tmp_path):
    """Hub mode: the broker may be parking another kernel of the user into the same folder right now."""
    from orion_jupyter import snapshot

    folder = snapshot.user_folder(tmp_path / HOME_FOLDER, "ann")
    under_way, dead, odd = (folder / (name + snapshot.PARTIAL) for name in (
        snapshot.new_id(), "20260101T000000Z-0badf00d", "20261399T000000Z-0badf00d"))
    for path in (under_way, dead, odd):
        path.mkdir()
    service(SimpleNamespace(kind="local"), tmp_path, timeout_seconds=600).forget_partial(folder)
    assert under_way.is_dir() and not dead.exists() and not odd.exists()
