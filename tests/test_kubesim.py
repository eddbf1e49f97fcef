"""The simulated cluster, through the official kubernetes client: API, watches, scheduler, kubelet, faults."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from kubesim import SimCluster, SimNode
from tests.helpers import eventually

# The sim_cluster fixture comes from kubesim.fixtures, loaded by tests/conftest.py.

NS = "default"
GPU = "virtaitech.com/gpu"


@pytest.fixture
def v1(sim_cluster):
    return client.CoreV1Api(sim_cluster.api_client())


@pytest.fixture
def fake_cluster():
    """Two fake-kubelet nodes: bound pods turn Running at once, no processes."""
    nodes = [
        SimNode("fake-a", allocatable={GPU: 2}, labels={"pool": "a"}, kubelet="fake"),
        SimNode("fake-b", allocatable={GPU: 2}, labels={"pool": "b"}, kubelet="fake"),
    ]
    with SimCluster(nodes=nodes) as cluster:
        yield cluster


@pytest.fixture
def fv1(fake_cluster):
    return client.CoreV1Api(fake_cluster.api_client())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pod_body(name: str, command: list[str] | None = None, gpus: int = 0, labels=None, env=None, mounts=None,
             volumes=None, image: str = "python:3.11", restart: str = "Never", working_dir=None, **spec) -> dict:
    container = {"name": "main", "image": image, "command": command or ["sleep", "300"]}
    if working_dir:
        container["workingDir"] = working_dir
    if gpus:
        container["resources"] = {"limits": {GPU: str(gpus)}, "requests": {GPU: str(gpus)}}
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": restart, "containers": [container], **spec}}
    if volumes:
        body["spec"]["volumes"] = volumes
    return body


def phase_in(*phases):
    return lambda pod: pod is not None and pod["status"].get("phase") in phases


def gone(obj) -> bool:
    return obj is None


def status_body(exc: ApiException) -> dict:
    return json.loads(exc.body)


# ---------------------------------------------------------------- API basics


def test_kubeconfig_and_discovery(sim_cluster):
    assert os.environ["KUBECONFIG"] == sim_cluster.kubeconfig_path
    api = config.new_client_from_config(config_file=sim_cluster.kubeconfig_path)
    core = client.CoreV1Api(api)
    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == ["gpu-1"]
    assert nodes[0].status.allocatable[GPU] == "4"
    assert nodes[0].status.allocatable["nvidia.com/gpumem"] == "81920"
    assert client.VersionApi(api).get_code().major == "1"
    assert "default" in [n.metadata.name for n in core.list_namespace().items]


def test_create_get_list_with_selectors(fake_cluster, fv1):
    for i, (app, pool) in enumerate([("web", "a"), ("web", "b"), ("db", "a")]):
        fv1.create_namespaced_pod(NS, pod_body(f"p{i}", labels={"app": app, "tier": str(i)},
                                               nodeSelector={"pool": pool}))
    fv1.create_namespaced_pod("other", pod_body("elsewhere", labels={"app": "web"}))
    for i in range(3):
        fake_cluster.wait_for("pods", NS, f"p{i}", phase_in("Running"))

    def names(**kw):
        return sorted(p.metadata.name for p in fv1.list_namespaced_pod(NS, **kw).items)

    pod = fv1.read_namespaced_pod("p0", NS)
    assert pod.metadata.uid and pod.metadata.creation_timestamp and int(pod.metadata.resource_version) > 0
    assert pod.status.pod_ip.startswith("127.") and pod.status.host_ip == "127.0.0.1"
    assert names(label_selector="app=web") == ["p0", "p1"]
    assert names(label_selector="app==web,tier!=0") == ["p1"]
    assert names(label_selector="tier in (0,2)") == ["p0", "p2"]
    assert names(label_selector="app notin (web)") == ["p2"]
    assert names(label_selector="tier,!missing") == ["p0", "p1", "p2"]
    assert names(label_selector="missing") == []
    assert names(field_selector="metadata.name=p1") == ["p1"]
    assert names(field_selector="spec.nodeName=fake-a") == ["p0", "p2"]
    assert names(field_selector="status.phase=Running,spec.nodeName!=fake-a") == ["p1"]
    everywhere = fv1.list_pod_for_all_namespaces(label_selector="app=web").items
    assert sorted(p.metadata.name for p in everywhere) == ["elsewhere", "p0", "p1"]
    page = fv1.list_namespaced_pod(NS, limit=2)
    assert len(page.items) == 2 and page.metadata._continue
    rest = fv1.list_namespaced_pod(NS, limit=2, _continue=page.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2"]
    with urllib.request.urlopen(fake_cluster.url + "/api/v1/namespaces/default/pods", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["kind"] == "PodList" and body["items"][0]["kind"] == "Pod" and body["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        fv1.list_namespaced_pod(NS, field_selector="spec.unknown=x")
    assert err.value.status == 400


def test_generate_name_patch_and_update(fake_cluster, fv1):
    body = pod_body("")
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "gen-"
    pod = fv1.create_namespaced_pod(NS, body)
    name = pod.metadata.name
    assert name.startswith("gen-") and len(name) == 9
    patched = fv1.patch_namespaced_pod(name, NS, {"metadata": {"labels": {"a": "1"}}})  # strategic merge
    assert patched.metadata.labels == {"a": "1"}
    patched = fv1.patch_namespaced_pod(name, NS, [{"op": "add", "path": "/metadata/labels/b", "value": "2"}])
    assert patched.metadata.labels == {"a": "1", "b": "2"}
    patched = fv1.patch_namespaced_pod(name, NS, {"metadata": {"labels": {"a": None}}},
                                       _content_type="application/merge-patch+json")
    assert patched.metadata.labels == {"b": "2"}
    stale = patched.metadata.resource_version
    fv1.patch_namespaced_pod(name, NS, {"metadata": {"annotations": {"x": "y"}}})
    with pytest.raises(ApiException) as err:
        fv1.patch_namespaced_pod(name, NS, {"metadata": {"resourceVersion": stale, "labels": {"c": "3"}}})
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:  # pod specs are immutable
        fv1.patch_namespaced_pod(name, NS, {"spec": {"restartPolicy": "Always"}})
    assert err.value.status == 422


def test_error_statuses(sim_cluster, v1):
    v1.create_namespaced_secret(NS, {"metadata": {"name": "dup"}, "data": {"k": b64("v")}})
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "dup"}, "data": {"k": b64("v")}})
    assert err.value.status == 409 and status_body(err.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("missing", NS)
    assert err.value.status == 404
    body = status_body(err.value)
    assert (body["kind"], body["reason"], body["message"]) == ("Status", "NotFound", 'pods "missing" not found')
    with pytest.raises(ApiException) as err:
        v1.delete_namespaced_secret("missing", NS)
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod(NS, pod_body("Bad_Name"))
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "x" * 64}})
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "notb64"}, "data": {"k": "not base64!"}})
    assert err.value.status == 400

    def create_with(resources):
        body = pod_body("gpu-pod")
        body["spec"]["containers"][0]["resources"] = resources
        with pytest.raises(ApiException) as err:
            v1.create_namespaced_pod(NS, body)
        assert err.value.status == 422
        return status_body(err.value)["message"]

    assert create_with({"requests": {GPU: "1"}}) == (
        'Pod "gpu-pod" is invalid: spec.containers[0].resources.limits: '
        "Required value: Limit must be set for non overcommitable resources"
    )
    assert "must be equal to virtaitech.com/gpu limit of 2" in create_with({"requests": {GPU: "1"},
                                                                           "limits": {GPU: "2"}})
    assert "must be an integer" in create_with({"limits": {GPU: "1500m"}})
    assert "quantities must match" in create_with({"limits": {"cpu": "lots"}})
    request = urllib.request.Request(f"{sim_cluster.url}/api/v1/namespaces/default/pods", data=b"{not json",
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(request, timeout=5)
    assert http_err.value.code == 400 and json.loads(http_err.value.read())["kind"] == "Status"


# ---------------------------------------------------------------- watches


def test_watch_from_resource_version_with_selector(sim_cluster, v1):
    v1.create_namespaced_secret(NS, {"metadata": {"name": "before", "labels": {"w": "1"}}})
    rv = v1.list_namespaced_secret(NS).metadata.resource_version
    v1.create_namespaced_secret(NS, {"metadata": {"name": "after", "labels": {"w": "1"}}})
    v1.create_namespaced_secret(NS, {"metadata": {"name": "unlabelled"}})
    v1.patch_namespaced_secret("after", NS, {"metadata": {"labels": {"w": "2"}}})  # leaves the selector
    v1.delete_namespaced_secret("before", NS)
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_namespaced_secret, NS, label_selector="w=1", resource_version=rv, timeout_seconds=1)]
    assert events == [("ADDED", "after"), ("DELETED", "after"), ("DELETED", "before")]
    initial = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_namespaced_secret, NS, timeout_seconds=1, _request_timeout=5)]
    assert initial == [("ADDED", "after"), ("ADDED", "unlabelled")]


def test_watch_resumes_after_dropped_stream(sim_cluster, v1):
    rv = v1.list_namespaced_secret(NS).metadata.resource_version
    seen: list[tuple[str, str]] = []
    w = watch.Watch()

    def consume():
        for event in w.stream(v1.list_namespaced_secret, NS, resource_version=rv, _request_timeout=30):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 2:
                w.stop()

    thread = threading.Thread(target=consume)
    thread.start()
    v1.create_namespaced_secret(NS, {"metadata": {"name": "one"}})
    eventually(lambda: seen, timeout=10, interval=0.01)
    assert sim_cluster.faults.drop_watches() == 1
    v1.create_namespaced_secret(NS, {"metadata": {"name": "two"}})
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [("ADDED", "one"), ("ADDED", "two")]
    assert sim_cluster.count_requests(verb="watch", resource="secrets") == 2


def test_watch_gets_410_after_history_expires(sim_cluster, v1):
    old = v1.list_namespaced_secret(NS).metadata.resource_version
    v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    sim_cluster.faults.expire_history()
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(v1.list_namespaced_secret, NS, resource_version=old, _request_timeout=10):
            pass
    assert err.value.status == 410 and "too old resource version" in err.value.reason
    current = v1.list_namespaced_secret(NS).metadata.resource_version  # relist, then watch again
    v1.create_namespaced_secret(NS, {"metadata": {"name": "s2"}})
    events = [e["object"].metadata.name for e in watch.Watch().stream(
        v1.list_namespaced_secret, NS, resource_version=current, timeout_seconds=1)]
    assert events == ["s2"]


def test_watch_bookmarks_and_timeout(sim_cluster, v1):
    sim_cluster.bookmark_interval = 0.2
    start = time.monotonic()
    w = watch.Watch()
    types = [e["type"] for e in w.stream(v1.list_namespaced_pod, NS, allow_watch_bookmarks=True, timeout_seconds=1)]
    assert 0.9 < time.monotonic() - start < 3
    assert types and set(types) == {"BOOKMARK"}
    assert int(w.resource_version) == sim_cluster.store.rv


# ---------------------------------------------------------------- scheduler


def test_scheduler_accounts_extended_resources(sim_cluster, v1):
    for i in range(5):
        v1.create_namespaced_pod(NS, pod_body(f"gpu-{i}", gpus=1))
    for i in range(4):
        sim_cluster.wait_for("pods", NS, f"gpu-{i}", phase_in("Running"))
    message = "0/1 nodes are available: 1 Insufficient virtaitech.com/gpu."

    def unschedulable(pod):
        return any(c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
                   for c in pod["status"].get("conditions", []))

    waiting = sim_cluster.wait_for("pods", NS, "gpu-4", unschedulable)
    condition = next(c for c in waiting["status"]["conditions"] if c["type"] == "PodScheduled")
    assert condition["message"] == message and not waiting["spec"].get("nodeName")
    events = v1.list_namespaced_event(NS, field_selector="involvedObject.name=gpu-4,reason=FailedScheduling").items
    assert [(e.type, e.message, e.source.component) for e in events] == [("Warning", message, "default-scheduler")]
    assert events[0].involved_object.kind == "Pod" and events[0].involved_object.uid == waiting["metadata"]["uid"]
    scheduled = v1.list_namespaced_event(NS, field_selector="reason=Scheduled").items
    assert sorted(e.message for e in scheduled) == [f"Successfully assigned default/gpu-{i} to gpu-1" for i in range(4)]
    v1.delete_namespaced_pod("gpu-0", NS, grace_period_seconds=0)
    pod = sim_cluster.wait_for("pods", NS, "gpu-4", phase_in("Running"))
    assert pod["spec"]["nodeName"] == "gpu-1"
    selector = "involvedObject.name=gpu-4,reason=FailedScheduling"
    assert len(v1.list_namespaced_event(NS, field_selector=selector).items) == 1


def test_scheduler_reasons_and_new_nodes():
    nodes = [
        SimNode("a", allocatable={GPU: 4}, labels={"pool": "gpu"}, taints=["dedicated=ml:NoSchedule"], kubelet="fake"),
        SimNode("b", allocatable={GPU: 4}, labels={"pool": "cpu"}, kubelet="fake"),
        SimNode("c", allocatable={GPU: 1}, labels={"pool": "gpu"}, kubelet="fake"),
        SimNode("d", allocatable={}, labels={"pool": "gpu"}, kubelet="fake"),
    ]
    with SimCluster(nodes=nodes) as cluster:
        cluster.create_object("pods", NS, pod_body("big", gpus=2, nodeSelector={"pool": "gpu"}))
        pod = cluster.wait_for("pods", NS, "big", lambda p: p["status"].get("conditions"))
        assert pod["status"]["conditions"][0]["message"] == (
            "0/4 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
            "1 node(s) had untolerated taint {dedicated: ml}, 2 Insufficient virtaitech.com/gpu."
        )
        tolerated = pod_body("tolerant", gpus=2, tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml",
                                                              "effect": "NoSchedule"}])
        cluster.create_object("pods", NS, tolerated)
        assert cluster.wait_for("pods", NS, "tolerant", phase_in("Running"))["spec"]["nodeName"] == "a"
        cluster.add_node(SimNode("e", allocatable={GPU: 1}, labels={"pool": "gpu"}, kubelet="fake"))  # a retry
        retried = "0/5 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, " \
                  "1 node(s) had untolerated taint {dedicated: ml}, 3 Insufficient virtaitech.com/gpu."
        event = cluster.wait_until(
            lambda: [e for e in cluster.events(NS, "big", "FailedScheduling") if e["count"] == 2])
        assert len(cluster.events(NS, "big", "FailedScheduling")) == 1 and event[0]["message"] == retried
        assert cluster.get("pods", NS, "big")["status"]["conditions"][0]["message"] == retried
        cluster.add_node(SimNode("f", allocatable={GPU: 2}, labels={"pool": "gpu"}, kubelet="fake"))
        assert cluster.wait_for("pods", NS, "big", phase_in("Running"))["spec"]["nodeName"] == "f"


def test_schedule_delay():
    with SimCluster(nodes=[SimNode("n", kubelet="fake")]) as cluster:
        cluster.faults.schedule_delay = 0.5
        start = time.monotonic()
        cluster.create_object("pods", NS, pod_body("slow"))
        cluster.wait_for("pods", NS, "slow", lambda p: p["spec"].get("nodeName"))
        assert time.monotonic() - start >= 0.45


# ---------------------------------------------------------------- process kubelet


def test_process_pod_env_secret_mount_and_log(sim_cluster, v1):
    host_had_dir = os.path.exists("/etc/sim-test")
    v1.create_namespaced_secret(NS, {"metadata": {"name": "sim-test"}, "data": {"key": b64("s3cret")}})
    script = (
        "import os, sys\n"
        "print(os.environ['MY_IP'], os.environ['MY_NAME'], open('/etc/sim-test/key').read())\n"
        "try:\n    open('/etc/sim-test/new', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n"
        "print('leaked' if 'PYTEST_CURRENT_TEST' in os.environ else 'clean',"
        " os.environ['HOME'] != os.environ.get('X'))\n"
        "print(sys.argv[1:])\n"
        "open('/sim-scratch/f', 'w').write('ok'); print(os.listdir('/sim-scratch'), os.getcwd())\n"
    )
    env = [
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi-$(MY_NAME)"},
    ]
    body = pod_body("runner", ["python", "-c", script, "$(GREETING)", "$$(GREETING)", "$(UNDEFINED)"], env=env,
                    mounts=[{"name": "conn", "mountPath": "/etc/sim-test", "readOnly": True},
                            {"name": "scratch", "mountPath": "/sim-scratch"}],
                    volumes=[{"name": "conn", "secret": {"secretName": "sim-test", "defaultMode": 0o440}},
                             {"name": "scratch", "emptyDir": {}}], working_dir="/sim-scratch")
    v1.create_namespaced_pod(NS, body)
    pod = sim_cluster.wait_for("pods", NS, "runner", phase_in("Succeeded", "Failed"))
    log = v1.read_namespaced_pod_log("runner", NS)
    ip = pod["status"]["podIP"]
    assert pod["status"]["phase"] == "Succeeded", log
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert log.splitlines() == [f"{ip} runner s3cret", "read-only 30", "clean True",
                                "['hi-runner', '$(GREETING)', '$(UNDEFINED)']", "['f'] /sim-scratch"]
    assert v1.read_namespaced_pod_log("runner", NS, tail_lines=1) == "['f'] /sim-scratch\n"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    reasons = [e.reason for e in v1.list_namespaced_event(NS, field_selector="involvedObject.name=runner").items]
    assert {"Scheduled", "Pulling", "Pulled", "Created", "Started"} <= set(reasons)
    assert os.path.exists("/etc/sim-test") == host_had_dir  # the mount points were private to the pod
    assert not os.path.exists("/sim-scratch")


def test_pods_get_distinct_ips_and_run_until_deleted(sim_cluster, v1):
    for name in ("ip-a", "ip-b"):
        v1.create_namespaced_pod(NS, pod_body(name))
    pods = [sim_cluster.wait_for("pods", NS, n, phase_in("Running")) for n in ("ip-a", "ip-b")]
    assert pods[0]["status"]["podIP"] != pods[1]["status"]["podIP"]
    for pod in pods:
        conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert conditions["Ready"] == conditions["ContainersReady"] == conditions["Initialized"] == "True"
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert len(sim_cluster.running_processes()) == 2


def test_failing_command_reports_exit_code(sim_cluster, v1):
    v1.create_namespaced_pod(NS, pod_body("fails", ["python", "-c", "import sys; print('bye'); sys.exit(3)"]))
    pod = sim_cluster.wait_for("pods", NS, "fails", phase_in("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert v1.read_namespaced_pod_log("fails", NS) == "bye\n"


def test_missing_secret_waits_with_failed_mount(sim_cluster, v1):
    body = pod_body("mounts", ["python", "-c", "print(open('/etc/late/k').read())"],
                    mounts=[{"name": "late", "mountPath": "/etc/late"}],
                    volumes=[{"name": "late", "secret": {"secretName": "late"}}])
    v1.create_namespaced_pod(NS, body)
    event = sim_cluster.wait_until(lambda: sim_cluster.events(NS, "mounts", "FailedMount"))[0]
    assert event["type"] == "Warning" and 'secret "late" not found' in event["message"]
    assert sim_cluster.get("pods", NS, "mounts")["status"]["phase"] == "Pending"
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod_log("mounts", NS)
    assert err.value.status == 400
    v1.create_namespaced_secret(NS, {"metadata": {"name": "late"}, "stringData": {"k": "now"}})
    assert sim_cluster.wait_for("pods", NS, "mounts", phase_in("Succeeded"))
    assert sim_cluster.pod_log(NS, "mounts") == "now\n"


def test_graceful_delete_collects_owned_secret(sim_cluster, v1):
    pod = v1.create_namespaced_pod(NS, pod_body("sleeper"))
    v1.create_namespaced_secret(NS, {"metadata": {"name": "sleeper"}, "data": {"k": b64("v")}})
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "sleeper", "uid": pod.metadata.uid, "blockOwnerDeletion": False}
    v1.patch_namespaced_secret("sleeper", NS, {"metadata": {"ownerReferences": [owner]}})
    sim_cluster.wait_for("pods", NS, "sleeper", phase_in("Running"))
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    deleted = v1.delete_namespaced_pod("sleeper", NS, grace_period_seconds=10)
    assert deleted.metadata.deletion_timestamp is not None
    sim_cluster.wait_for("pods", NS, "sleeper", gone, timeout=5)  # sleep exits on SIGTERM, well before the grace
    sim_cluster.wait_for("secrets", NS, "sleeper", gone, timeout=5)
    events = [(e["type"], bool(e["object"].metadata.deletion_timestamp)) for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=1)]
    assert events[0] == ("MODIFIED", True) and events[-1][0] == "DELETED"
    terminated = [e for e in events if e[0] == "MODIFIED"]
    assert len(terminated) >= 2  # marked for deletion, then the container's exit
    assert sim_cluster.events(NS, "sleeper", "Killing")
    assert sim_cluster.running_processes() == []


def test_grace_period_ends_with_sigkill(sim_cluster, v1):
    script = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
              "time.sleep(60)\n")
    v1.create_namespaced_pod(NS, pod_body("stubborn", ["python", "-c", script]))
    sim_cluster.wait_for("pods", NS, "stubborn", phase_in("Running"))
    eventually(lambda: sim_cluster.pod_log(NS, "stubborn"), timeout=10, interval=0.02, until=lambda log: "ready" in log)
    start = time.monotonic()
    v1.delete_namespaced_pod("stubborn", NS, body=client.V1DeleteOptions(grace_period_seconds=1))
    sim_cluster.wait_for("pods", NS, "stubborn", gone, timeout=5)
    assert 0.9 < time.monotonic() - start < 4


def test_pending_pod_is_deleted_at_once(sim_cluster, v1):
    v1.create_namespaced_pod(NS, pod_body("too-big", gpus=9))
    sim_cluster.wait_for("pods", NS, "too-big", lambda p: p["status"].get("conditions"))
    v1.delete_namespaced_pod("too-big", NS)
    assert sim_cluster.get("pods", NS, "too-big") is None


def test_image_pull_error(sim_cluster, v1):
    sim_cluster.faults.image_pull_error("bad/image:*")
    v1.create_namespaced_pod(NS, pod_body("pull", image="bad/image:1"))

    def backing_off(pod):
        statuses = pod["status"].get("containerStatuses") or []
        return statuses and statuses[0]["state"].get("waiting", {}).get("reason") == "ImagePullBackOff"

    pod = sim_cluster.wait_for("pods", NS, "pull", backing_off)
    assert pod["status"]["phase"] == "Pending"
    failed = [e["message"] for e in sim_cluster.events(NS, "pull", "Failed")]
    assert any(m.startswith('Failed to pull image "bad/image:1"') and "not found" in m for m in failed)
    assert "Error: ErrImagePull" in failed and "Error: ImagePullBackOff" in failed
    assert [e["message"] for e in sim_cluster.events(NS, "pull", "BackOff")] == ['Back-off pulling image "bad/image:1"']
    assert sim_cluster.running_processes() == []


def test_kill_and_evict(sim_cluster, v1):
    for name in ("killed", "evicted"):
        v1.create_namespaced_pod(NS, pod_body(name))
        sim_cluster.wait_for("pods", NS, name, phase_in("Running"))
    assert sim_cluster.kill_pod_process(NS, "killed", signal.SIGKILL)
    pod = sim_cluster.wait_for("pods", NS, "killed", phase_in("Failed"))
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    sim_cluster.evict(NS, "evicted", message="The node was low on resource: memory.")
    pod = sim_cluster.wait_for("pods", NS, "evicted", phase_in("Failed"))
    assert (pod["status"]["reason"], pod["status"]["message"]) == ("Evicted", "The node was low on resource: memory.")
    assert sim_cluster.events(NS, "evicted", "Evicted")


def test_orphans_are_collected():
    """Like Kubernetes' garbage collector: an object whose every (known-kind) owner is gone is deleted."""
    with SimCluster() as cluster:
        owner = {"apiVersion": "v1", "kind": "Pod", "name": "nobody", "uid": "00000000-0000-0000-0000-000000000000"}
        cluster.create_object("secrets", NS, {"metadata": {"name": "orphan", "ownerReferences": [owner]}})
        cluster.wait_for("secrets", NS, "orphan", gone, timeout=5)


def test_kernel_manifest_pod_runs(sim_cluster, v1):
    """The provisioner's own Pod and Secret: the kernel binds to the pod IP and reads the mounted Secret."""
    from orion_jupyter.backends import get_backend
    from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests, secret_owner_patch
    from orion_jupyter.vgpu import VGPURequest

    ports = []
    for _ in range(5):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    connection = {"transport": "tcp", "ip": "0.0.0.0", "key": "k3y", "signature_scheme": "hmac-sha256",
                  **dict(zip(("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"), ports,
                             strict=True))}
    manifests = build_kernel_manifests(KernelPodOptions(
        kernel_id="3f2a9c1d-7b8e-4c1a-9d2e-5f6a7b8c9d0e", user="alice", request=VGPURequest.parse(1, "4Gi"),
        backend=get_backend("orion"), image="quay.io/jupyter/base-notebook:python-3.11", namespace=NS,
        connection_info=connection, name_suffix="t1",
    ))
    pod = v1.create_namespaced_pod(NS, manifests.pod)
    v1.create_namespaced_secret(NS, manifests.secret)
    v1.patch_namespaced_secret(manifests.name, NS, secret_owner_patch(v1.api_client.sanitize_for_serialization(pod)))
    running = sim_cluster.wait_for("pods", NS, manifests.name, phase_in("Running", "Failed"))
    ip = running["status"]["podIP"]

    def heartbeat_accepts() -> bool:
        try:
            socket.create_connection((ip, connection["hb_port"]), timeout=1).close()
            return True
        except OSError:
            assert sim_cluster.get("pods", NS, manifests.name)["status"]["phase"] == "Running", \
                sim_cluster.pod_log(NS, manifests.name)
            return False

    eventually(heartbeat_accepts, timeout=30, interval=0.1, message=lambda: sim_cluster.pod_log(NS, manifests.name))
    v1.delete_namespaced_pod(manifests.name, NS, grace_period_seconds=5)
    sim_cluster.wait_for("pods", NS, manifests.name, gone, timeout=10)
    sim_cluster.wait_for("secrets", NS, manifests.name, gone, timeout=5)


# ---------------------------------------------------------------- faults and accounting


def test_fail_once_then_work_and_count_requests(sim_cluster, v1):
    sim_cluster.reset_requests()
    sim_cluster.faults.fail("list", "pods", status=500)
    with pytest.raises(ApiException) as err:
        v1.list_namespaced_pod(NS)
    assert err.value.status == 500 and status_body(err.value)["reason"] == "InternalError"
    assert v1.list_namespaced_pod(NS).items == []
    sim_cluster.faults.fail("create", "secrets", status=503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
        assert err.value.status == 503
    v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    v1.read_namespaced_secret("s", NS)
    assert sim_cluster.count_requests(verb="list", resource="pods") == 2
    assert sim_cluster.count_requests(verb="create") == 3
    assert sim_cluster.count_requests(resource="secrets", watch=False) == 4
    assert [r.status for r in sim_cluster.requests] == [500, 200, 503, 503, 201, 200]
    sim_cluster.reset_requests()
    assert sim_cluster.count_requests() == 0


def test_stop_leaves_no_process():
    cluster = SimCluster(nodes=[SimNode("n")], python=sys.executable).start()
    core = client.CoreV1Api(cluster.api_client())
    core.list_node()  # leaves a keep-alive connection in the client's pool
    for i in range(3):
        cluster.create_object("pods", NS, pod_body(f"p{i}", restart="Always"))
    for i in range(3):
        cluster.wait_for("pods", NS, f"p{i}", phase_in("Running"))
    assert len(cluster.running_processes()) == 3
    cluster.stop()
    assert cluster.running_processes() == []
    with pytest.raises(OSError):
        urllib.request.urlopen(cluster.url + "/version", timeout=2)
    with pytest.raises(urllib3.exceptions.HTTPError):  # refused: MaxRetryError (or ProtocolError)
        core.list_node(_request_timeout=2)


# ---------------------------------------------------------------- shared clusters and node faults


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj or {}).get("status", {}).get("conditions") or [] if c["type"] == kind), {})


def test_pods_of_other_namespaces_count_for_scheduling(sim_cluster, v1):
    v1.create_namespaced_pod("other-team", pod_body("trainer", gpus=3))
    sim_cluster.wait_for("pods", "other-team", "trainer", phase_in("Running"))
    v1.create_namespaced_pod(NS, pod_body("wants-two", gpus=2))
    pod = sim_cluster.wait_for("pods", NS, "wants-two", lambda p: _condition(p, "PodScheduled").get("reason"))
    assert _condition(pod, "PodScheduled")["message"] == "0/1 nodes are available: 1 Insufficient virtaitech.com/gpu."


def test_forbidden_cluster_wide_reads(sim_cluster, v1):
    sim_cluster.faults.forbid("*", "pods", cluster_scope=True)
    for call in (v1.list_pod_for_all_namespaces, lambda: v1.list_pod_for_all_namespaces(watch=True, timeout_seconds=1,
                                                                                         _preload_content=False)):
        with pytest.raises(ApiException) as err:
            call()
        assert err.value.status == 403 and status_body(err.value)["reason"] == "Forbidden"
    assert status_body(err.value)["message"] == ('pods is forbidden: User "system:serviceaccount:default:kubesim" '
                                                 'cannot watch resource "pods" in API group "" at the cluster scope')
    assert v1.list_namespaced_pod(NS).items == []  # the namespace's own pods stay readable
    assert v1.list_node().items
    sim_cluster.faults.clear()
    assert v1.list_pod_for_all_namespaces().items == []


def test_deleting_a_node_collects_its_pods(sim_cluster, v1):
    v1.create_namespaced_pod(NS, pod_body("on-node", gpus=1))
    sim_cluster.wait_for("pods", NS, "on-node", phase_in("Running"))
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.delete_node("gpu-1")
    sim_cluster.wait_for("pods", NS, "on-node", gone, timeout=5)
    events = [(e["type"], e["raw_object"]) for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=1)]
    assert [t for t, _ in events] == ["MODIFIED", "DELETED"]
    final = events[-1][1]
    assert final["status"]["phase"] == "Failed"
    assert _condition(final, "DisruptionTarget") | {"lastTransitionTime": None, "lastProbeTime": None} == {
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
        "message": "PodGC: node no longer exists", "lastTransitionTime": None, "lastProbeTime": None}
    eventually(lambda: sim_cluster.running_processes() == [], timeout=5)
    v1.create_namespaced_pod(NS, pod_body("no-node"))
    pod = sim_cluster.wait_for("pods", NS, "no-node", lambda p: _condition(p, "PodScheduled").get("reason"))
    assert _condition(pod, "PodScheduled")["message"] == "no nodes available to schedule pods"


def test_not_ready_node_marks_taints_and_evicts_after_the_toleration(sim_cluster, v1):
    quick = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
              "tolerationSeconds": 1}]
    v1.create_namespaced_pod(NS, pod_body("quick", tolerations=quick))
    v1.create_namespaced_pod(NS, pod_body("patient"))  # the default toleration: 300 s
    for name in ("quick", "patient"):
        sim_cluster.wait_for("pods", NS, name, lambda p: _condition(p, "Ready").get("status") == "True")
    sim_cluster.set_node_ready("gpu-1", False)
    node = sim_cluster.wait_for("nodes", None, "gpu-1", lambda n: _condition(n, "Ready").get("status") == "Unknown")
    assert _condition(node, "Ready")["reason"] == "NodeStatusUnknown"
    assert {(t["key"], t["effect"]) for t in node["spec"]["taints"]} == {
        ("node.kubernetes.io/unreachable", "NoSchedule"), ("node.kubernetes.io/unreachable", "NoExecute")}
    for name in ("quick", "patient"):
        pod = sim_cluster.wait_for("pods", NS, name, lambda p: _condition(p, "Ready").get("status") == "False")
        assert pod["status"]["phase"] == "Running"
        assert [e["message"] for e in sim_cluster.events(NS, name, "NodeNotReady")] == ["Node is not ready"]
    # after its 1 s toleration the taint manager evicts "quick"; the unreachable kubelet cannot finish it
    quick_pod = sim_cluster.wait_for("pods", NS, "quick", lambda p: p["metadata"].get("deletionTimestamp"), timeout=5)
    assert _condition(quick_pod, "DisruptionTarget")["reason"] == "DeletionByTaintManager"
    assert sim_cluster.events(NS, "quick", "TaintManagerEviction")
    time.sleep(0.5)
    assert sim_cluster.get("pods", NS, "quick") is not None and not sim_cluster.get("pods", NS, "patient")[
        "metadata"].get("deletionTimestamp")
    v1.create_namespaced_pod(NS, pod_body("newcomer"))
    pod = sim_cluster.wait_for("pods", NS, "newcomer", lambda p: _condition(p, "PodScheduled").get("reason"))
    assert "untolerated taint {node.kubernetes.io/unreachable: }" in _condition(pod, "PodScheduled")["message"]
    # the node is back: the pending deletion is carried out, the other pod is Ready again, the newcomer runs
    sim_cluster.set_node_ready("gpu-1", True)
    sim_cluster.wait_for("pods", NS, "quick", gone, timeout=10)
    sim_cluster.wait_for("pods", NS, "patient", lambda p: _condition(p, "Ready").get("status") == "True")
    sim_cluster.wait_for("pods", NS, "newcomer", phase_in("Running"))
    assert not sim_cluster.get("nodes", None, "gpu-1")["spec"].get("taints")


def test_oom_killed_container(sim_cluster, v1):
    v1.create_namespaced_pod(NS, pod_body("hungry"))
    sim_cluster.wait_for("pods", NS, "hungry", phase_in("Running"))
    assert sim_cluster.oom_kill(NS, "hungry")
    pod = sim_cluster.wait_for("pods", NS, "hungry", phase_in("Failed"))
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    sim_cluster.faults.oom_kill_pods("hog-*", after=0.2)
    v1.create_namespaced_pod(NS, pod_body("hog-1"))
    pod = sim_cluster.wait_for("pods", NS, "hog-1", phase_in("Failed"), timeout=5)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert sim_cluster.running_processes() == []


def test_owner_deletion_collects_dependents_in_the_background(sim_cluster, v1):
    """A server pod owns a kernel pod, which owns its Secret: deleting the server takes both, owner first."""
    server = v1.create_namespaced_pod(NS, pod_body("server"))
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "server", "uid": server.metadata.uid}
    kernel = v1.create_namespaced_pod(NS, {**pod_body("kernel"), "metadata": {"name": "kernel",
                                                                            "ownerReferences": [owner]}})
    kernel_owner = {"apiVersion": "v1", "kind": "Pod", "name": "kernel", "uid": kernel.metadata.uid}
    v1.create_namespaced_secret(NS, {"metadata": {"name": "kernel", "ownerReferences": [kernel_owner]}})
    for name in ("server", "kernel"):
        sim_cluster.wait_for("pods", NS, name, phase_in("Running"))
    v1.delete_namespaced_pod("server", NS, body=client.V1DeleteOptions(grace_period_seconds=0,
                                                                      propagation_policy="Background"))
    assert sim_cluster.get("pods", NS, "server") is None  # the owner goes first
    sim_cluster.wait_for("pods", NS, "kernel", gone, timeout=10)
    sim_cluster.wait_for("secrets", NS, "kernel", gone, timeout=5)
    eventually(lambda: sim_cluster.running_processes() == [], timeout=5)


def test_readiness_probe_honours_its_period(sim_cluster, v1):
    """The first probe at container start, then one per periodSeconds: a port that opens 0.3 s in is seen at 1 s."""
    script = ("import socket, time\ntime.sleep(0.3)\ns = socket.socket()\ns.bind(('0.0.0.0', 47311))\ns.listen()\n"
              "time.sleep(60)\n")
    body = pod_body("probed", ["python", "-c", script])
    body["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 47311}, "periodSeconds": 1}
    v1.create_namespaced_pod(NS, body)
    running = sim_cluster.wait_for("pods", NS, "probed", phase_in("Running"))
    started = time.monotonic()
    assert _condition(running, "Ready").get("status") != "True"
    sim_cluster.wait_for("pods", NS, "probed", lambda p: _condition(p, "Ready").get("status") == "True", timeout=5)
    assert 0.7 < time.monotonic() - started < 1.6


def test_a_mount_point_stays_while_another_process_pods_use_it(tmp_path):
    """Host directories made for pods are counted across test processes: one process's last pod ending must
    not remove a mount point another process's pod still uses (removing it detaches that pod's mount)."""
    import subprocess

    from kubesim.kubelet import Kubelets

    target = str(tmp_path / "home" / "jovyan")
    chain = Kubelets.acquire_dir(target)
    assert chain == [target, str(tmp_path / "home")]
    other = ("import sys; from kubesim.kubelet import Kubelets as K; "
             "K.release_dirs(K.acquire_dir(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", other, target], check=True, cwd=os.getcwd())
    assert os.path.isdir(target)  # still this process's pod's
    Kubelets.release_dirs(chain)
    assert not os.path.exists(tmp_path / "home")  # nobody uses it: gone
