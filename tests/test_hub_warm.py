"""Warm kernels in hub mode, through a real JupyterHub: a pool of 4 for a preset serves 4 launches by
hand-over and refills; a roster pre-warms one kernel per student at the window's start, each
student's first launch claims theirs, and the unclaimed one is stopped after the grace period."""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from kubesim import SimCluster, SimNode
from kubesim.fixtures import GPU_NODE
from orion_jupyter.core.warm_config import roster_label
from orion_jupyter.k8s.hub_manifests import selects
from tests.classroom import BROKER, COURSE, NS, class_hub_with, start_vgpu_kernel
from tests.helpers import eventually_async

WARM = "orion-jupyter.io/warm"
CODE = ("import os; print(os.environ['ORION_JUPYTER_USER'], os.environ['ORION_JUPYTER_KERNEL_ID'], "
        "open('data.csv').read())")


@pytest.fixture
def big_cluster(monkeypatch):
    """A process-kubelet node with 10 vGPUs: room for a full pool and its refill."""
    cluster = SimCluster(nodes=[SimNode("gpu-1", allocatable={**GPU_NODE, "virtaitech.com/gpu": 10})],
                         python=sys.executable).start()
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def warm_pods(cluster, pool: str | None = None) -> list[dict]:
    return [p for p in cluster.objects("pods", NS) if (p["metadata"].get("labels") or {}).get(WARM)
            and (pool is None or p["metadata"]["labels"][WARM] == pool)]


async def warm_summary(hub, user: str) -> dict:
    """The warm kernels as the student's own server's pool view shows them (from the broker)."""
    return (await hub.server_api(user, "GET", "orion/api/pool")).get("warm", {})


async def own_pod(hub, user: str, kernel_id: str) -> str:
    rows = (await hub.server_api(user, "GET", "orion/api/allocations"))["kernels"]
    return next(row["pod"] for row in rows if row["kernel_id"] == kernel_id)


@pytest.mark.timeout(300)
async def test_a_pool_of_four_serves_four_launches_by_hand_over_and_refills(hub_factory, big_cluster, tmp_path):
    students = ["alice", "bob", "carol", "dave"]
    home_root = tmp_path / "home"
    home_root.mkdir()  # the class-shared volume the pool's kernels mount
    config = [
        f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 8}}}}",
        "c.Broker.warm_interval = 0.5",
        "c.Broker.warm_pools = [{'name': 'gpu-1x1gi', 'vgpus': 1, 'memory': '1Gi', 'size': 4, "
        f"'volumes': [{{'name': 'homes', 'hostPath': {{'path': {str(home_root)!r}}}}}], "
        "'volume_mounts': [{'name': 'homes', 'mountPath': '/home/class'}], 'workdir': '/home/class/{username}'}]",
    ]
    with class_hub_with(hub_factory, big_cluster, tmp_path, config, users=[*students, "teacher"]) as (hub, broker):
        await hub.wait_for_service(BROKER, "metrics")
        await asyncio.gather(*(hub.start_server(user) for user in students))
        for user in students:
            (hub.home(user) / "data.csv").write_text(f"{user}-rows")
        summary = await eventually_async(lambda: warm_summary(hub, "alice"), timeout=60,
                                         until=lambda s: s.get("gpu-1x1gi", {}).get("ready") == 4)
        assert summary["gpu-1x1gi"]["size"] == 4
        before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in warm_pods(big_cluster, "gpu-1x1gi")}
        assert len(before) == 4

        kernels = await asyncio.gather(*(start_vgpu_kernel(hub, user) for user in students))
        pods = {user: await own_pod(hub, user, kernel["id"]) for user, kernel in zip(students, kernels, strict=True)}
        # every launch was a hand-over: its pod is one that was warm before anyone asked
        assert set(pods.values()) == set(before), (pods, before)
        for user, kernel in zip(students, kernels, strict=True):
            pod = big_cluster.get("pods", NS, pods[user])
            assert pod["metadata"]["uid"] == before[pods[user]]
            assert WARM not in pod["metadata"]["labels"]
            assert pod["metadata"]["annotations"]["orion-jupyter.io/user"] == user
            assert pod["metadata"]["labels"]["orion-jupyter.io/kernel-id"] == kernel["id"]
            policy = big_cluster.get("networkpolicies", NS, pods[user])
            peer = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            assert peer["hub.jupyter.org/username"] == user  # the kernel's ports: only from its user's server
            assert selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])  # and it still covers the pod
            # the kernel knows who claimed it, and works in its user's folder
            assert await hub.kernel_ws_execute(user, kernel["id"], CODE) == f"{user} {kernel['id']} {user}-rows"

        # the pool refills to 4 with new pods, beside the 4 handed over
        await eventually_async(lambda: warm_summary(hub, "alice"), timeout=60,
                               until=lambda s: s["gpu-1x1gi"]["ready"] == 4)
        refilled = {p["metadata"]["name"] for p in warm_pods(big_cluster, "gpu-1x1gi")}
        assert len(refilled) == 4 and not refilled & set(before)
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"{hub.service_direct_url(BROKER)}/services/{BROKER}/metrics", timeout=10).read().decode())
        assert 'orion_jupyter_broker_warm_claims_total{kind="pool"} 4.0' in metrics


def lab_zone() -> str:
    """An Etc/GMT zone where it is about noon now, so a window of a few minutes never crosses midnight."""
    offset = 12 - datetime.now(UTC).hour
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


@pytest.mark.timeout(300)
async def test_a_roster_is_prewarmed_at_the_window_start_and_the_unclaimed_kernel_goes(hub_factory, sim_cluster,
                                                                                        tmp_path):
    from zoneinfo import ZoneInfo

    students = ["alice", "bob", "carol"]
    zone = lab_zone()

    def config():  # written when the broker starts: the window opens 30 s later (the servers start meanwhile)
        now = datetime.now(ZoneInfo(zone))
        start, end = now + timedelta(seconds=30), now + timedelta(minutes=30)
        return [
            f"c.Broker.courses = {{{COURSE!r}: {{'vgpus': 4}}}}",
            "c.Broker.warm_interval = 0.5",
            f"c.Broker.lab_timezone = {zone!r}",
            f"c.Broker.rosters = {{{COURSE!r}: {{'vgpus': 1, 'memory': '1Gi', 'grace': 30, "
            f"'hours': {{'start': {start.strftime('%H:%M:%S')!r}, 'end': {end.strftime('%H:%M:%S')!r}}}}}}}",
        ]

    with class_hub_with(hub_factory, sim_cluster, tmp_path, config, users=[*students, "teacher"]) as (hub, broker):
        await hub.wait_for_service(BROKER, "metrics")
        assert not warm_pods(sim_cluster)  # the window has not opened yet (it opens 30 s after the broker starts)
        await asyncio.gather(*(hub.start_server(user) for user in students))
        for user in students:
            (hub.home(user) / "data.csv").write_text(f"{user}-rows")
        # at the window's start: one kernel per student of the course, with their storage
        await eventually_async(lambda: warm_summary(hub, "alice"), timeout=90,
                               until=lambda s: s.get(roster_label(COURSE), {}).get("ready") == 3)
        roster = {p["metadata"]["annotations"]["orion-jupyter.io/user"]: p["metadata"]["name"]
                  for p in warm_pods(sim_cluster, roster_label(COURSE))}
        assert sorted(roster) == students

        # each student's first launch is a claim of their own kernel
        for user in ("alice", "bob"):
            kernel = await start_vgpu_kernel(hub, user)
            assert await own_pod(hub, user, kernel["id"]) == roster[user]
            pod, policy = (sim_cluster.get(kind, NS, roster[user]) for kind in ("pods", "networkpolicies"))
            assert selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])  # the claim kept it isolated
            assert await hub.kernel_ws_execute(user, kernel["id"], CODE) == f"{user} {kernel['id']} {user}-rows"

        # carol never came: her kernel is stopped after the grace period; the claimed ones stay
        def pod_names():
            return asyncio.sleep(0, {p["metadata"]["name"] for p in sim_cluster.objects("pods", NS)})

        await eventually_async(pod_names, timeout=60, until=lambda names: roster["carol"] not in names)
        names = await pod_names()
        assert {roster["alice"], roster["bob"]} <= names and not warm_pods(sim_cluster)
