"""Hub mode against a hostile student (issue 24), shown without a hub where a unit shows it: a claimed
kernel's NetworkPolicy still selects its pod, reports cannot switch culling off, a cap on kernels,
bodies refused before they are read."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from kubesim.fixtures import sim_cluster  # noqa: F401 - the fixture
from orion_jupyter.backends import get_backend
from orion_jupyter.broker.idle import broker_culler
from orion_jupyter.core.idle import CullRules, reported_time
from orion_jupyter.core.warm import WarmKernels
from orion_jupyter.core.warm_config import WarmConfig
from orion_jupyter.errors import KernelLaunchError
from orion_jupyter.k8s.client import api_client
from orion_jupyter.k8s.cluster import KubeCluster
from orion_jupyter.k8s.hub_manifests import selects
from orion_jupyter.k8s.launcher import KernelPolicies, PodSite
from orion_jupyter.names import (
    ANNOTATION_CLAIMED,
    ANNOTATION_LAST_ACTIVITY,
    ANNOTATION_REQUEST,
    ANNOTATION_USER,
    LABEL_KERNEL_ID,
    LABEL_MANAGED_BY,
    MANAGED_BY,
)
from orion_jupyter.protocols import ClaimRequest
from orion_jupyter.wire import PORT_NAMES, iopub_port

NS = "default"
WARM_ID = "warm-0123456789abcdef"
NEW_ID = "0b5e8c2e-5d1f-4a57-9d6e-1e2f3a4b5c6d"


def test_a_selector_is_read_as_kubernetes_reads_it():
    labels = {LABEL_KERNEL_ID: "a", "x": "1"}
    assert selects({"matchLabels": {LABEL_KERNEL_ID: "a"}}, labels)
    assert selects({"matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In", "values": ["a", "b"]}]}, labels)
    # what a merge patch left behind: the old matchLabels ANDed with the new expressions selects nothing
    assert not selects({"matchLabels": {LABEL_KERNEL_ID: "b"},
                        "matchExpressions": [{"key": LABEL_KERNEL_ID, "operator": "In", "values": ["a", "b"]}]},
                       labels)
    assert not selects({"matchExpressions": [{"key": "y", "operator": "Exists"}]}, labels)
    assert selects({"matchExpressions": [{"key": "y", "operator": "DoesNotExist"}]}, labels)
    assert not selects({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}, labels)


@pytest.mark.parametrize("user", ["", "roster-student"], ids=["pool", "roster"])
async def test_a_claimed_kernels_policy_selects_its_pod(sim_cluster, user):  # noqa: F811
    """Pool (a warm kernel nobody owns) and roster (one pre-started for a student): after the claim the
    stored policy selects the relabelled pod, and admits the claimer's server."""
    cluster = KubeCluster(api_client(sim_cluster.kubeconfig_path), NS, watch_nodes=False)
    policies = KernelPolicies(cluster, {"app": "jupyterhub", "component": "hub"})
    site = PodSite(cluster, get_backend("orion"), pod_settings=lambda image: None, policies=policies)
    name = "orion-kernel-warm"
    ports = (50000, 50001, 50002, 50003, 50004)
    await policies.create(policies.build(name, WARM_ID, user, ports))
    await cluster.request(cluster.core.create_namespaced_pod, NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL_KERNEL_ID: WARM_ID, LABEL_MANAGED_BY: MANAGED_BY,
                                               "orion-jupyter.io/warm": "gpu"}},
        "spec": {"containers": [{"name": "kernel", "image": "python"}]}})
    await site.hand_over(name, WARM_ID, ClaimRequest(NEW_ID, "", "", ""), "alice", "AI_101", ports)
    pod = sim_cluster.get("pods", NS, name)
    policy = sim_cluster.get("networkpolicies", NS, name)
    assert pod["metadata"]["labels"][LABEL_KERNEL_ID] == NEW_ID
    assert selects(policy["spec"]["podSelector"], pod["metadata"]["labels"]), policy["spec"]["podSelector"]
    peers = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"hub.jupyter.org/username": "alice", "component": "singleuser-server"} in peers


# -- culling that no student can switch off --------------------------------------------------------------

class FakeSite:
    def __init__(self):
        self.stopped: list[str] = []

    async def stop(self, pod_name: str, stopped_by: str, grace_seconds: int = 5) -> None:
        self.stopped.append(pod_name)


class FakeClassPods:
    """The ClassPods a BrokerKernels reads: running kernel pods with their reported last activity."""

    def __init__(self, reports: dict[str, str]):
        self.site = FakeSite()
        self.pods = [{"metadata": {"name": f"pod-{kernel_id}", "labels": {LABEL_KERNEL_ID: kernel_id},
                                   "annotations": {ANNOTATION_USER: kernel_id, ANNOTATION_LAST_ACTIVITY: report,
                                                   ANNOTATION_REQUEST: json.dumps({"vgpus": 1, "memory_mib": 1024})}},
                      "status": {"phase": "Running"}} for kernel_id, report in reports.items()]

    def kernel_pods(self) -> list[dict]:
        return [p for p in self.pods if p["metadata"]["name"] not in self.site.stopped]

    def is_warm(self, name: str) -> bool:
        return False


async def test_a_poisoned_or_naive_report_changes_nothing_for_others_and_culling_goes_on():
    now = datetime.now(UTC)
    pods = FakeClassPods({"evil": "9999-12-31T23:59:59+00:00", "naive": "2026-01-01T00:00:00",
                          "junk": "yesterday", "honest": (now - timedelta(hours=1)).isoformat()})
    culler = broker_culler(pods, CullRules(60, 10, 3), {}, 30, changed=lambda kernel_id: None)
    # a restarted broker knows a kernel at once (exempt, keep), not only after its first round
    assert culler.target.get_kernel("honest") is not None
    assert culler.exempt("honest", True)["exempt"] and not culler.exempt("honest", False)["exempt"]
    # the class view: every row has its fields (no OverflowError, no TypeError)
    for kernel_id in ("evil", "naive", "junk", "honest"):
        fields = culler.fields(kernel_id)
        assert fields["cull_at"] is not None and datetime.fromisoformat(fields["cull_at"].replace("Z", "+00:00")) \
            <= now + timedelta(seconds=61), (kernel_id, fields)
    # a round later than everyone's idle time culls every kernel, the one whose owner lied included
    assert sorted(await culler.run_once(now + timedelta(hours=2))) == ["evil", "honest", "junk", "naive"]
    assert sorted(pods.site.stopped) == ["pod-evil", "pod-honest", "pod-junk", "pod-naive"]


def test_a_reported_time_counts_only_with_a_zone_and_never_after_now():
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert reported_time("9999-12-31T23:59:59+00:00", now) == now
    assert reported_time("2026-12-07T11:00:00Z", now) == now - timedelta(hours=1)
    assert reported_time("2026-12-07T13:00:00+02:00", now) == now - timedelta(hours=1)
    for bad in ("2026-12-07T11:00:00", "", "soon", "²"):
        assert reported_time(bad, now) is None


async def test_a_follower_survives_a_list_status_and_a_broken_one_leaves_the_kernel_to_reports():
    import zmq
    import zmq.asyncio
    from jupyter_client.session import Session

    key = "k" * 32
    session = Session(key=key.encode(), signature_scheme="hmac-sha256")
    pub = zmq.asyncio.Context.instance().socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ports = tuple(port if name == "iopub_port" else 1 for name in PORT_NAMES)
    assert iopub_port(ports) == port
    pods = FakeClassPods({})
    kernels = broker_culler(pods, CullRules(60, 10, 3), {}, 30, changed=lambda kernel_id: None).target
    kernels.watch("k1", "pod-k1", "alice", "", 1, "127.0.0.1", key, ports)
    kernel = kernels.kernels["k1"]
    try:
        cell = session.msg("execute_request", {})  # the kernel's status while it runs a cell

        async def publish_until(content, done) -> None:
            for _ in range(200):
                session.send(pub, "status", content, parent=cell)
                await asyncio.sleep(0.02)
                if done():
                    return
            raise AssertionError(f"the follower never saw {content!r}")

        await publish_until({"execution_state": "busy"}, lambda: kernel.execution_state == "busy")
        session.send(pub, "status", json.dumps(["not", "an", "object"]).encode(), parent=cell)  # a signed list
        await publish_until({"execution_state": "idle"}, lambda: kernel.execution_state == "idle")
        await publish_until({"execution_state": "busy"}, lambda: kernel.execution_state == "busy")
        assert kernel.watcher is not None  # the list did not end the follower
        # a signed message the follower cannot read ends it while the kernel was busy: reports judge it now
        broken = session.serialize({"header": {}, "parent_header": {}, "metadata": {}, "content": {}})
        for _ in range(100):
            await pub.send_multipart(broken)
            await asyncio.sleep(0.02)
            if kernel.watcher is None:
                break
        assert kernel.watcher is None and kernel.execution_state == "idle"
    finally:
        kernels.forget("k1")
        pub.close(0)


# -- a broker restart inside a roster window -----------------------------------------------------------------

class FakeWarmHost:
    """A WarmHost whose cluster has ``pods``; started plans are recorded, never run."""

    user_volumes: tuple = ()
    user_volume_mounts: tuple = ()
    home_mount_path = ""

    def __init__(self, pods: list[dict], members: list[str]):
        self.pods, self.members, self.started = pods, members, []

    def pod(self, name):
        return next((p for p in self.pods if p["metadata"]["name"] == name), None)

    def kernel_pods(self):
        return self.pods

    async def has_room(self, request):
        return True

    async def roster_members(self, course):
        return self.members

    async def start_pod(self, plan):
        self.started.append(plan.user)
        raise KernelLaunchError("api", "not in this test")

    async def hand_over(self, *args):
        raise AssertionError("no claims here")

    async def delete_kernel(self, name):
        pass


async def test_a_restart_inside_a_roster_window_prewarms_only_those_not_served_yet():
    config = WarmConfig.parse([], {"AI_101": {"vgpus": 1, "memory": "1Gi", "hours": {"start": "09:00", "end": "11:00"},
                                              "grace": 3600}}, "python:3.11", "UTC")
    now = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
    claimed = {"metadata": {"name": "p-alice", "labels": {LABEL_KERNEL_ID: "a"}, "creationTimestamp":
                            "2026-12-07T08:59:00Z", "annotations": {ANNOTATION_USER: "alice",
                                                                    ANNOTATION_CLAIMED: "2026-12-07T09:05:00+00:00"}},
               "status": {"phase": "Running"}}
    cold = {"metadata": {"name": "p-bob", "labels": {LABEL_KERNEL_ID: "b"}, "creationTimestamp": "2026-12-07T09:10:00Z",
                         "annotations": {ANNOTATION_USER: "bob"}}, "status": {"phase": "Running"}}
    yesterday = {"metadata": {"name": "p-cem", "labels": {LABEL_KERNEL_ID: "c"}, "creationTimestamp":
                              "2026-12-06T09:10:00Z", "annotations": {ANNOTATION_USER: "cem"}},
                 "status": {"phase": "Running"}}
    host = FakeWarmHost([claimed, cold, yesterday], ["alice", "bob", "cem", "dan"])
    warm = WarmKernels(host, config)  # a fresh process: nothing pre-warmed as far as it knows
    await warm.tick(now)
    await asyncio.gather(*warm._starting)
    assert sorted(host.started) == ["cem", "dan"]  # alice claimed hers, bob started one: not again


# -- safe defaults an operator loosens on purpose ------------------------------------------------------------

def test_the_broker_defaults_allow_only_its_images_a_largest_slice_and_a_per_user_limit():
    from traitlets.config import Config

    from orion_jupyter.broker.service import Broker, safe_policy
    from orion_jupyter.config import KernelPolicy
    from orion_jupyter.vgpu import VGPURequest, VGPURequestError

    policy = safe_policy(KernelPolicy(), ["img:1", "warm:2", "img:1"])
    assert policy.allowed_images == ["img:1", "warm:2"]
    for request, image, field in ((VGPURequest.parse(1, "100Gi"), "img:1", "memory"),
                                  (VGPURequest.parse(8, "1Gi"), "img:1", "vgpus"),
                                  (VGPURequest.parse(1, "1Gi"), "evil/miner:latest", "image")):
        with pytest.raises(VGPURequestError) as caught:
            policy.policy().check(request, image)
        assert caught.value.field == field, caught.value
    policy.policy().check(VGPURequest.parse(1, "4Gi"), "warm:2")
    # what the operator set stays as set
    config = Config({"KernelPolicy": {"allowed_images": ["quay.io/jupyter/*"], "max_memory": "80Gi"}})
    loosened = safe_policy(KernelPolicy(config=config), ["img:1"])
    assert loosened.allowed_images == ["quay.io/jupyter/*"] and loosened.max_memory == "80Gi"
    assert Broker().max_vgpus_per_user == 4 and Broker().max_kernels_per_user == 8


async def test_an_instructor_removed_from_the_group_loses_the_class_view_promptly(monkeypatch):
    from orion_jupyter.broker import hub as hub_module
    from orion_jupyter.broker.hub import HubClient

    groups = {"teacher": ["instructors"]}

    class Hub(HubClient):
        async def _get(self, path, token=None):
            return {"name": "teacher", "groups": list(groups["teacher"]), "servers": {"": {}}}

    clock = [100.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: clock[0])
    client = Hub("http://hub/api", "t")  # the broker's default cache (c.Broker.hub_cache_seconds)
    assert await client.groups("teacher") == ["instructors"] and await client.servers("teacher") == {""}
    groups["teacher"] = []  # removed from the group in the hub
    clock[0] += 6
    assert await client.groups("teacher") == []


async def test_a_token_owner_is_reused_briefly_and_a_revoked_token_stops_working(monkeypatch):
    from tornado.httpclient import HTTPClientError

    from orion_jupyter.broker import hub as hub_module
    from orion_jupyter.broker.hub import HubClient

    known = {"good": {"kind": "user", "name": "ann", "scopes": ["access:services"]}}
    asked: list[str] = []

    class Hub(HubClient):
        async def _get(self, path, token=None):
            asked.append(token)
            if token not in known:
                raise HTTPClientError(403)
            return known[token]

    clock = [100.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: clock[0])
    client = Hub("http://hub/api", "t", token_cache_seconds=30)
    assert (await client.identify("good"))["name"] == "ann" and (await client.identify("good"))["name"] == "ann"
    assert asked == ["good"]  # the second launch of a burst does not ask the hub again
    assert await client.identify("guess") is None and await client.identify("guess") is None
    assert asked == ["good", "guess", "guess"]  # what the hub refused is asked again, never kept
    assert all(b"good" not in key for key in client._owners)  # kept by digest, not the token itself
    assert (await client.identify("good", fresh=True))["name"] == "ann" and len(asked) == 4  # a stream's re-check
    del known["good"]  # revoked in the hub
    clock[0] += 29
    assert (await client.identify("good"))["name"] == "ann" and len(asked) == 4
    clock[0] += 2
    assert await client.identify("good") is None and asked[-1] == "good"


@pytest.mark.parametrize("value", ["yes", 1, None, {"a": 1}])
def test_a_launch_body_s_own_storage_is_true_or_false_only(value):
    from orion_jupyter.vgpu import VGPURequestError
    from orion_jupyter.wire import PORT_NAMES, parse_launch

    body = {"kernel_id": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "vgpus": 1, "memory": "1Gi", "key": "k" * 32,
            "ports": {name: 50_000 + i for i, name in enumerate(PORT_NAMES)}}
    assert parse_launch(body).own_storage is False and parse_launch({**body, "own_storage": True}).own_storage
    with pytest.raises(VGPURequestError) as caught:
        parse_launch({**body, "own_storage": value})
    assert caught.value.field == "own_storage" and "true or false" in str(caught.value)
