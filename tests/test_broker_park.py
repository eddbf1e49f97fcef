"""The broker's park path (broker/parking.py) with injected collaborators: a fake kernel answering on its
shell, fake pods; then ask_kernel against a real kernel. Who parks (culling, a budget, an instructor),
what a failed or lying park leaves (the kernel running, or stopped with the reason), and what the class
view counts across a restart."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from orion_jupyter import snapshot
from orion_jupyter.broker.budgets import STOPPED_FOR_BUDGET, BudgetMeter
from orion_jupyter.broker.idle import STOPPED_BY_IDLE, BrokerKernels, broker_culler
from orion_jupyter.broker.parking import BrokerParking, KernelConnection, ParkLimits, ask_kernel, checked_report
from orion_jupyter.core.idle import CullRules
from orion_jupyter.core.ledger import Holding
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.launcher import KernelPolicies
from orion_jupyter.k8s.state_store import ConfigMapStore, Section
from orion_jupyter.names import (
    ANNOTATION_COURSE,
    ANNOTATION_KERNEL_SPEC,
    ANNOTATION_PARKED,
    ANNOTATION_REQUEST,
    ANNOTATION_USER,
    LABEL_KERNEL_ID,
    LABEL_USER,
)
from orion_jupyter.snapshot import SnapshotError
from orion_jupyter.wire import PORT_NAMES
from tests.helpers import eventually_async

HOME = "/home/jovyan"
PORTS = (41001, 41002, 41003, 41004, 41005)
USER = "Ann.Lee@uni.example"  # the exact hub user: the label is only a slug of it


class FakeSite:
    def __init__(self, pods: FakePods):
        self.pods = pods
        self.stopped: list[dict] = []

    async def stop(self, pod_name: str, stopped_by: str, grace_seconds: int = 5, annotations=None) -> None:
        self.stopped.append({"pod": pod_name, "by": stopped_by, "grace": grace_seconds, **(annotations or {})})
        self.pods.gone.add(pod_name)


class FakePods:
    """What BrokerKernels and BrokerParking read of ClassPods: the pod cache and the site that stops pods."""

    def __init__(self, kernel_ids: list[str]):
        self.gone: set[str] = set()
        self.site = FakeSite(self)
        self.cluster = self
        self.pods = {f"pod-{k}": {"metadata": {
            "name": f"pod-{k}", "labels": {LABEL_KERNEL_ID: k, LABEL_USER: "someone-else"},
            "annotations": {ANNOTATION_USER: USER, ANNOTATION_COURSE: "AI_101", ANNOTATION_KERNEL_SPEC: "orion-1x1gi",
                            ANNOTATION_REQUEST: json.dumps({"vgpus": 1, "memory_mib": 1024})}},
            "status": {"phase": "Running"}} for k in kernel_ids}

    def kernel_pods(self) -> list[dict]:
        return [p for name, p in self.pods.items() if name not in self.gone]

    def pod(self, name: str) -> dict | None:
        return None if name in self.gone else self.pods.get(name)

    def is_warm(self, name: str) -> bool:
        return False


class FakeKernel:
    """A kernel's answer to the broker's park request: ``answer(arguments)`` (a report, or a refusal raised)."""

    def __init__(self, answer=None):
        self.calls: list[dict] = []
        self.answer = answer or (lambda args: {"snapshot": args["folder"].rsplit("/", 1)[1], "saved": ["model", "x"],
                                               "not_saved": {"batches": "a generator"}, "bytes": 1234})

    async def __call__(self, connection, session_id, arguments, timeout):
        self.calls.append({"connection": connection, "session": session_id, "timeout": timeout, **arguments})
        await asyncio.sleep(0.01)
        return self.answer(arguments)


def setup(kernel_ids=("k1",), kernel: FakeKernel | None = None, home: str = HOME, watched: bool = True,
          store: Section | None = None, idle_seconds: float = 60):
    pods = FakePods(list(kernel_ids))
    culler = broker_culler(pods, CullRules(idle_seconds, 10, 3), {}, 30, changed=lambda kernel_id: None)
    kernels: BrokerKernels = culler.target
    parking = kernels.parking = BrokerParking(pods, kernels, ParkLimits(home, 1 << 20, 4 << 20, 30.0),
                                              store, ask=kernel or FakeKernel())
    for kernel_id in kernel_ids:
        if watched:  # as a launch through this broker: its connection known (no real iopub to follow here)
            kernels.kernels[kernel_id] = kernels_observed(kernel_id)
        else:  # a kernel a broker before a restart started: known from the pod cache only
            kernels.get_kernel(kernel_id)
    return pods, culler, kernels, parking


def kernels_observed(kernel_id: str):
    from orion_jupyter.broker.idle import Observed

    return Observed(f"pod-{kernel_id}", USER, "AI_101", 1, last_activity=datetime.now(UTC) - timedelta(hours=1),
                    connection=KernelConnection("10.0.0.7", "k" * 32, PORTS))


async def test_a_park_saves_into_the_users_own_storage_then_stops_the_pod_at_once_and_is_counted(sim_cluster):
    kube = KubeCluster(sim_cluster.api_client(), "default", watch_nodes=False)
    kernel, store = FakeKernel(), Section(ConfigMapStore(kube, "default", "orion-broker-state"), "parks")
    pods, _culler, kernels, parking = setup(kernel=kernel, store=store)
    assert parking.why_not("k1") is None and kernels.parks("k1")
    report = await parking.park("k1", "instructor", "teacher")
    [call] = kernel.calls
    snapshot_id = report["snapshot"]
    assert snapshot.is_id(snapshot_id)
    # the exact user from the pod's annotation (never its label), in the folder the user's server reads
    assert call["owner"] == USER
    assert call["folder"] == f"{HOME}/.orion-snapshots/{snapshot.user_part(USER)}/{snapshot_id}"
    assert (call["limit_bytes"], call["user_limit_bytes"], call["timeout"]) == (1 << 20, 4 << 20, 30.0)
    assert call["info"]["spec"] == "orion-1x1gi" and call["info"]["parked_by"] == "instructor"
    assert call["connection"].ip == "10.0.0.7" and call["session"].startswith("orion-broker-park-")
    assert report == {"snapshot": snapshot_id, "saved": ["model", "x"], "not_saved": {"batches": "a generator"},
                      "bytes": 1234, "kernel_id": "k1", "user": USER, "course": "AI_101", "pod": "pod-k1",
                      "stopped": True}
    [stop] = pods.site.stopped
    assert stop["pod"] == "pod-k1" and stop["grace"] == 0 and stop[ANNOTATION_PARKED] == snapshot_id
    assert stop["by"].startswith(f"teacher, parked as snapshot {snapshot_id}")
    assert "k1" not in kernels.kernels
    [row] = parking.rows()
    assert (row["user"], row["snapshots"], row["bytes"], row["last_snapshot"]) == (USER, 1, 1234, snapshot_id)
    # a restarted broker keeps counting, from its state ConfigMap
    again = BrokerParking(pods, kernels, parking.limits, Section(ConfigMapStore(kube, "default", "orion-broker-state"),
                                                                 "parks"))
    await again.start()
    assert again.rows() == parking.rows()
    kube.close()


@pytest.mark.parametrize("answer", [
    lambda args: (_ for _ in ()).throw(SnapshotError("disk", "the snapshot could not be written (No space left)")),
    lambda args: {"snapshot": snapshot.new_id(), "saved": [], "not_saved": {}, "bytes": 1},  # another snapshot
    lambda args: {"snapshot": args["folder"].rsplit("/", 1)[1], "saved": "everything", "not_saved": {}, "bytes": 1},
    lambda args: {"snapshot": args["folder"].rsplit("/", 1)[1], "saved": [], "not_saved": {}, "bytes": True},
    lambda args: ["not", "a", "report"],
    lambda args: 1 / 0,  # the call itself broke
], ids=["disk-full", "other-snapshot", "saved-not-a-list", "bytes-not-a-number", "not-a-dict", "broken-call"])
async def test_an_instructors_park_that_fails_answers_why_and_the_kernel_keeps_running(answer):
    pods, _culler, kernels, parking = setup(kernel=FakeKernel(answer))
    with pytest.raises(SnapshotError) as caught:
        await parking.park("k1", "instructor", "teacher")
    expected = "disk" if "No space" in str(caught.value) else "kernel"
    assert caught.value.reason == expected and ("keeps running" in str(caught.value) or expected == "disk")
    assert pods.site.stopped == [] and "k1" in kernels.kernels and parking.rows() == []


async def test_culling_parks_and_a_failed_park_stops_with_the_reason():
    kernel = FakeKernel()
    pods, culler, kernels, parking = setup(("k1", "k2"), kernel=kernel)
    culler._warn("k1", datetime.now(UTC), datetime.now(UTC))  # the warning words it from parks()
    assert "parks in" in culler.progress.events("k1")[-1]["message"]
    kernel.answer = lambda args: (
        {"snapshot": args["folder"].rsplit("/", 1)[1], "saved": [], "not_saved": {}, "bytes": 0}
        if "k1" == args["info"]["kernel_id"] else {"error": "nope"})
    culled = await culler.run_once()
    assert sorted(culled) == ["k1", "k2"]
    stops = {s["pod"]: s for s in pods.site.stopped}
    assert stops["pod-k1"]["by"].startswith(f"{STOPPED_BY_IDLE}, parked as snapshot") and stops["pod-k1"]["grace"] == 0
    assert stops["pod-k2"]["by"].startswith(f"{STOPPED_BY_IDLE}; it could not be parked (the kernel's answer")
    assert ANNOTATION_PARKED not in stops["pod-k2"]
    parked = [e for e in culler.progress.events("k1") if e.get("culled")]
    assert parked and parked[-1]["snapshot"] == stops["pod-k1"][ANNOTATION_PARKED]
    assert kernels.kernels == {}


async def test_without_user_storage_or_a_connection_the_broker_only_stops():
    for options, why in (({"home": ""}, "c.Broker.home_mount_path"), ({"watched": False}, "no connection")):
        kernel = FakeKernel()
        pods, culler, kernels, parking = setup(kernel=kernel, **options)
        assert not kernels.parks("k1") and why in parking.why_not("k1")
        assert culler.fields("k1")["cull_parks"] is False
        with pytest.raises(SnapshotError) as caught:
            await parking.park("k1", "instructor", "teacher")
        assert caught.value.reason == "unsupported" and pods.site.stopped == []
        assert await kernels.stop_idle("k1") is None
        assert [s["by"] for s in pods.site.stopped] == [STOPPED_BY_IDLE] and kernel.calls == []


async def test_a_busy_kernel_is_not_parked_and_two_parks_of_one_kernel_are_one():
    kernel = FakeKernel()
    pods, _culler, kernels, parking = setup(kernel=kernel)
    kernels.kernels["k1"].execution_state = "busy"
    with pytest.raises(SnapshotError) as caught:
        await parking.park("k1", "instructor", "teacher")
    assert caught.value.reason == "busy" and kernel.calls == []
    kernels.kernels["k1"].execution_state = "idle"
    first, second = await asyncio.gather(parking.park("k1", "instructor", "teacher"), parking.park("k1", "idle", "x"))
    assert first == second and len(kernel.calls) == 1 and len(pods.site.stopped) == 1


async def test_the_brokers_own_park_request_is_not_the_users_activity():
    _pods, _culler, kernels, _parking = setup()
    kernel = kernels.kernels["k1"]
    before = kernel.last_activity
    kernel.parking_session = "orion-broker-park-1"
    busy = {"header": {"msg_type": "status"}, "content": {"execution_state": "busy"},
            "parent_header": {"msg_type": "execute_request", "session": "orion-broker-park-1"}}
    assert BrokerKernels._observe(kernel, busy) is False
    assert kernel.execution_state == "idle" and kernel.last_activity == before
    busy["parent_header"]["session"] = "the-users-server"
    assert BrokerKernels._observe(kernel, busy) is True and kernel.last_activity > before


async def test_a_used_up_budget_parks_where_it_can():
    pods, _culler, _kernels, parking = setup(("k1", "k2"), kernel=FakeKernel())
    pods.gone.add("pod-k2")  # k2 stays unknown to the broker's kernels: stopped only
    pods.pods["pod-k3"] = {**pods.pods["pod-k2"], "metadata": {**pods.pods["pod-k2"]["metadata"], "name": "pod-k3",
                                                               "labels": {LABEL_KERNEL_ID: "k3"}}}
    meter = BudgetMeter(SimpleNamespace(), pods, give_back=lambda kernel_id, why: parking.give_back(kernel_id, why,
                                                                                                    "budget"))
    for kernel_id in ("k1", "k3"):
        await meter.give_back_for_budget(Holding(kernel_id, USER, "AI_101", 1, 1024))
    stops = {s["pod"]: s for s in pods.site.stopped}
    assert stops["pod-k1"]["by"].startswith(f"{STOPPED_FOR_BUDGET}, parked as snapshot")
    assert stops["pod-k3"]["by"] == STOPPED_FOR_BUDGET and meter.given_back == ["k1", "k3"]


async def test_parking_many_reports_each():
    kernel = FakeKernel()
    pods, _culler, kernels, parking = setup(("k1", "k2", "k3"), kernel=kernel)
    kernels.kernels["k2"].execution_state = "busy"
    result = await parking.park_many(["k1", "k2", "k3"], "course", "teacher")
    assert sorted(r["kernel_id"] for r in result["parked"]) == ["k1", "k3"]
    assert result["not_parked"] == [{"kernel_id": "k2", "user": USER, "reason": "busy",
                                     "message": "kernel k2 is running a cell; park it once it is idle (or interrupt "
                                                "it first)"}]
    assert parking.rows()[0]["snapshots"] == 2 and "k2" in kernels.kernels


async def test_a_kernel_cannot_claim_more_bytes_than_its_limit():
    _pods, _culler, _kernels, parking = setup(kernel=FakeKernel(lambda args: {
        "snapshot": args["folder"].rsplit("/", 1)[1], "saved": [], "not_saved": {}, "bytes": 10**18}))
    assert (await parking.park("k1", "owner", USER))["bytes"] == 1 << 20
    assert parking.rows()[0]["bytes"] == 1 << 20


def test_a_report_is_read_as_data():
    good = {"snapshot": "20261207T000000Z-0000abcd", "saved": ["a" * 5000], "not_saved": {"f": "file"}, "bytes": 3,
            "extra": "ignored"}
    assert checked_report(good, "20261207T000000Z-0000abcd") == {
        "snapshot": "20261207T000000Z-0000abcd", "saved": ["a" * 1000], "not_saved": {"f": "file"}, "bytes": 3}
    for bad in ({**good, "bytes": -1}, {**good, "not_saved": {"f": 1}}, {**good, "saved": list(range(3))}, None):
        with pytest.raises(SnapshotError):
            checked_report(bad, "20261207T000000Z-0000abcd")


def test_the_kernels_policy_admits_the_broker_on_shell_and_iopub_only():
    policies = KernelPolicies(SimpleNamespace(namespace="ns", api=None), {"app": "jupyterhub", "component": "hub"})
    policy = policies.build("orion-kernel-1", "k1", "ann", PORTS)
    server, host = policy["spec"]["ingress"]
    named = dict(zip(PORT_NAMES, PORTS, strict=True))
    assert sorted(p["port"] for p in host["ports"]) == sorted([named["shell_port"], named["iopub_port"]])
    assert host["from"] == [{"podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}}}]
    assert sorted(p["port"] for p in server["ports"]) == sorted(PORTS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "curve"])
async def test_ask_kernel_parks_a_real_kernel_over_its_shell_port(tmp_path, encrypted):
    """The broker's own client (a shell socket with its own identity and key pair, a cap on the answer) against a
    real ipykernel, plaintext or CurveZMQ (the broker knows only the kernel's public key): the snapshot lands in
    the user's folder, private, with the manifest naming its owner."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    spec = tmp_path / "kernels" / "curvy"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "curvy",
        "language": "python", "metadata": {"supported_encryption": ["curve"]}}))
    km = AsyncKernelManager(kernel_name="curvy", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
                            transport_encryption="required" if encrypted else "disabled")
    await km.start_kernel()
    try:
        client = km.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        await client.execute("x = 41 + 1\nrows = [1, 2, 3]\nbatches = (i for i in range(3))", reply=True,
                             timeout=30)
        client.stop_channels()
        info = km.get_connection_info()
        assert bool(km.curve_publickey) is encrypted
        connection = KernelConnection(info["ip"], info["key"].decode(), tuple(info[name] for name in PORT_NAMES),
                                      km.curve_publickey.decode() if encrypted else "")
        snapshot_id = snapshot.new_id()
        folder = home / ".orion-snapshots" / "ann" / snapshot_id
        report = await ask_kernel(connection, "orion-broker-park-test",
                                  {"folder": str(folder), "owner": "ann", "limit_bytes": 1 << 20,
                                   "user_limit_bytes": 4 << 20, "info": {"parked_by": "idle"}}, 60)
        assert checked_report(report, snapshot_id)["saved"] == ["rows", "x"]
        assert "batches" in report["not_saved"]
        manifest = snapshot.read_manifest(folder)
        assert manifest["owner"] == "ann" and manifest["kernel"] == {"parked_by": "idle"}
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    finally:
        await km.shutdown_kernel(now=True)


def test_park_all_without_a_running_broker_or_its_token_says_so(capsys, monkeypatch):
    from orion_jupyter.broker.app import main
    from tests.hub import free_port

    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--park-all", f"--Broker.url={url}"]) == 2
    assert "the broker's token is needed" in capsys.readouterr().err
    assert main(["--park-all", f"--Broker.url={url}", "--Broker.api_token=t0ken"]) == 2
    assert f"no broker answers at {url}/services/orion-broker/api/park-all" in capsys.readouterr().err


async def test_a_kernel_slow_to_park_holds_back_no_other_culling():
    """A student's kernel that never answers the park keeps its round waiting up to the time limit; the timer's
    next rounds still cull the others (and do not judge the slow one again)."""
    answered = asyncio.Event()
    kernel = FakeKernel()

    async def ask(connection, session_id, arguments, timeout):
        if arguments["info"]["kernel_id"] == "slow":
            await answered.wait()
        return await kernel(connection, session_id, arguments, timeout)

    pods, culler, kernels, _parking = setup(("slow", "k2"), kernel=ask)
    culler.interval_seconds = 0.05
    culler.start()
    try:
        await eventually_async(lambda: [s["pod"] for s in pods.site.stopped], timeout=10,
                               until=lambda stopped: stopped == ["pod-k2"])
        pods.pods["pod-k3"] = {**pods.pods["pod-k2"], "metadata": {**pods.pods["pod-k2"]["metadata"], "name": "pod-k3",
                                                                   "labels": {LABEL_KERNEL_ID: "k3"}}}
        kernels.kernels["k3"] = kernels_observed("k3")  # a kernel that went idle long ago, while slow still parks
        await eventually_async(lambda: [s["pod"] for s in pods.site.stopped], timeout=10,
                               until=lambda stopped: stopped == ["pod-k2", "pod-k3"])
        assert [call["info"]["kernel_id"] for call in kernel.calls] == ["k2", "k3"]  # slow was asked once only
        answered.set()
        await eventually_async(lambda: [s["pod"] for s in pods.site.stopped], timeout=10,
                               until=lambda stopped: stopped == ["pod-k2", "pod-k3", "pod-slow"])
    finally:
        culler.stop()
        answered.set()


def test_a_parked_kernels_watch_line_names_its_snapshot():
    from orion_jupyter.broker.handlers import kernel_state

    pod = FakePods(["k1"]).pods["pod-k1"]
    assert kernel_state("MODIFIED", pod)["snapshot"] is None
    pod["metadata"]["annotations"][ANNOTATION_PARKED] = "20261207T000000Z-0000abcd"
    line = kernel_state("DELETED", pod)
    assert line["snapshot"] == "20261207T000000Z-0000abcd" and line["deleted"] is True and line["kernel_id"] == "k1"
