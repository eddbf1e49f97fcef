"""The kai backend: KAI Scheduler annotations and queue label (strict 1.37 schemas), and the
simulated KAI stand-in placing fractions on a node's GPUs per queue, with KAI's own shortage
messages turned into one sentence by orion_jupyter.k8s.kai."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes import client

from kubesim import SimCluster, SimNode
from kubesim.kai import KaiQueue, KaiScheduler
from orion_jupyter.backends import KaiSettings, get_backend
from orion_jupyter.k8s import kai
from orion_jupyter.k8s.manifests import KernelPodOptions, build_kernel_manifests
from orion_jupyter.vgpu import VGPURequest, VGPURequestError

NS = "class-ai101"
GIB = 1024
GPU_NODE_LABELS = {"nvidia.com/gpu.count": "2", "nvidia.com/gpu.memory": str(24 * GIB)}  # as GPU feature discovery


def validate(obj: dict) -> None:
    assert kubernetes_validate.validate(obj, "1.37.0", strict=True) == "1.37"


def kai_pod(backend, request: VGPURequest, course: str = "ai101", suffix: str = "a1b2c3", user: str = "alice") -> dict:
    """A kernel pod for KAI: the pod builder's pod with the backend's fields merged (what the launch path does)."""
    fields = kai.pod_fields(request, course, backend.kai)
    opts = KernelPodOptions(
        kernel_id=f"{suffix}-7b8e-4c1a-9d2e-5f6a7b8c9d0e", user=user, request=request, backend=backend,
        image="quay.io/jupyter/pytorch-notebook:cuda12-python-3.11", namespace=NS,
        connection_info={"shell_port": 52011, "key": "k"}, name_suffix=suffix, course=course,
        labels=fields["labels"], annotations=fields["annotations"], scheduler_name=fields["spec"]["schedulerName"],
    )
    pod = build_kernel_manifests(opts).pod
    pod["spec"].update({k: v for k, v in fields["spec"].items() if k != "schedulerName"})
    return pod


# ---------------------------------------------------------------- pure


def test_kai_backend_is_data_and_says_its_memory_is_not_capped():
    backend = get_backend("kai")
    assert backend.resources(VGPURequest(1, 4096)) == {} and backend.env(VGPURequest(1, 4096)) == {}
    assert backend.scheduler_name == "kai-scheduler" and backend.memory_enforced is False
    assert "memory cap: not enforced" in backend.description
    assert get_backend("kai", kai={"hami_core": True}).memory_enforced is True  # KAI >= 0.17 HAMi-core binder
    assert kai.kai_annotations(VGPURequest(1, 4096), backend.kai) == {"gpu-memory": "4096"}
    assert kai.queue_labels("AI 101", backend.kai) == {"kai.scheduler/queue": "ai-101"}
    assert kai.queue_labels("", backend.kai) == {}
    students = get_backend("kai", kai={"default_queue": "students"}).kai
    assert kai.queue_labels("", students) == {"kai.scheduler/queue": "students"}
    with pytest.raises(VGPURequestError, match='KAI request "gpu-percent" is not known'):
        get_backend("kai", kai={"request": "gpu-percent"})
    with pytest.raises(VGPURequestError, match='KAI setting "queue" is not known'):
        get_backend("kai", kai={"queue": "x"})


def test_kai_annotations_memory_fraction_and_devices():
    memory = KaiSettings()
    assert kai.kai_annotations(VGPURequest(1, 4096), memory) == {"gpu-memory": "4096"}
    assert kai.kai_annotations(VGPURequest(2, 8192), memory) == {"gpu-memory": "8192", "gpu-fraction-num-devices": "2"}
    assert kai.kai_annotations(VGPURequest(0, 0), memory) == {}
    fraction = KaiSettings(request="gpu-fraction", device_memory_mib=24 * GIB)
    assert kai.kai_annotations(VGPURequest(1, 12 * GIB), fraction) == {"gpu-fraction": "0.5"}
    assert kai.kai_annotations(VGPURequest(1, 8 * GIB), fraction) == {"gpu-fraction": "0.34"}  # rounded up
    assert kai.kai_annotations(VGPURequest(1, 4096, 25), fraction) == {"gpu-fraction": "0.25"}  # the compute share
    with pytest.raises(ValueError, match="device_memory_mib"):
        kai.kai_annotations(VGPURequest(1, 4096), KaiSettings(request="gpu-fraction"))
    fields = kai.pod_fields(VGPURequest(1, 4096), "ai101", KaiSettings(priority_class="build"), container="kernel")
    assert fields == {"labels": {"kai.scheduler/queue": "ai101"},
                      "annotations": {"gpu-memory": "4096", "gpu-fraction-container-name": "kernel"},
                      "spec": {"schedulerName": "kai-scheduler", "priorityClassName": "build"}}


@pytest.mark.parametrize("request_", [VGPURequest(1, 4096), VGPURequest(2, 8192), VGPURequest(0, 0)])
def test_kai_kernel_pods_validate_strictly(request_):
    pod = kai_pod(get_backend("kai"), request_)
    validate(pod)
    assert pod["spec"]["schedulerName"] == "kai-scheduler"
    assert pod["metadata"]["labels"]["kai.scheduler/queue"] == "ai101"
    assert not any("/" in r for r in pod["spec"]["containers"][0]["resources"].get("limits", {}))


KAI_MESSAGES = [
    # (KAI's words, the reason code, what the sentence must say)
    ("no nodes with enough resources were found: 1 node(s) didn't have enough resources: GPUs.",
     "InsufficientGPU", "No GPU has room for this kernel's share right now"),
    ("no nodes with enough resources were found: 2 node(s) didn't have enough resources: GPU memory.",
     "InsufficientGPUMemory", "Not enough GPU memory free: no GPU has 12 GiB free"),
    ("\nno nodes with enough resources were found.\n<gpu-1>: Node didn't have enough resources: Each gpu on the node "
     "has a gpu memory capacity of 24576 Mib. 40960 Mib of gpu memory has been requested.",
     "InsufficientGPUMemory", "this kernel asks 40 GiB of GPU memory and each GPU has 24 GiB"),
    ("Node-Pool 'default': OverLimit: ai101 quota has reached the allowable limit of GPUs. Limit is 1 GPUs, "
     "currently 1 GPUs allocated and workload requested 0.5 GPUs.",
     "OverLimit", 'The queue "ai101" has reached its GPU limit: 1 GPU allowed, 1 in use, and this kernel asks for 0.5'),
    ("NonPreemptibleOverQuota: Non-preemptible workload is over quota. Workload requested 0.5 GPUs, but ai101 quota "
     "is 2 GPUs, while 2 GPUs are already allocated for non-preemptible pods. Use a preemptible workload to go over "
     "quota.", "NonPreemptibleOverQuota", "a quota of 2 GPUs, 2 in use, and this kernel asks for 0.5"),
    ("QueueDoesNotExist: Queue 'cs999' does not exist.", "QueueDoesNotExist", 'The KAI queue "cs999"'),
    ("Unable to schedule pod", "Unschedulable", "KAI Scheduler cannot place this kernel"),
]


@pytest.mark.parametrize("message, reason, sentence", KAI_MESSAGES)
def test_kai_words_become_one_sentence(message, reason, sentence):
    assert kai.shortage_reason(message) == reason
    text = kai.shortage_sentence(message, memory_mib=12 * GIB)
    assert sentence in text and text.endswith(f'(KAI Scheduler: "{" ".join(message.split())}")')


def test_kai_launch_state_reads_the_condition_or_the_event():
    pending = {"metadata": {"uid": "u1"}, "spec": {}, "status": {}}
    assert kai.kai_launch_state(pending)[0] == "pending"
    event = {"type": "Warning", "reason": "Unschedulable", "involvedObject": {"uid": "u1"},
             "message": "QueueDoesNotExist: Queue 'x' does not exist.", "lastTimestamp": "2026-01-01T00:00:00Z"}
    other = {**event, "involvedObject": {"uid": "u2"}, "message": "Unable to schedule pod"}
    assert kai.kai_launch_state(pending, [event, other])[:2] == ("unschedulable", "QueueDoesNotExist")
    bound = {"metadata": {"uid": "u1", "labels": {"runai-gpu-group": "g"}}, "spec": {"nodeName": "gpu-1"}}
    assert kai.kai_launch_state(bound) == ("scheduled", "Scheduled",
                                           "scheduled by KAI on gpu-1 (GPU group g); memory cap: not enforced by KAI")


# ---------------------------------------------------------------- the stand-in


@pytest.fixture
def kai_cluster():
    node = SimNode("gpu-1", kubelet="fake", labels=GPU_NODE_LABELS, allocatable={"nvidia.com/gpu": 2})
    cluster = SimCluster(nodes=[node], scheduler_names=["default-scheduler"]).start()
    stand_in = KaiScheduler(cluster, queues={"ai101": KaiQueue(quota=1, limit=1.5)}, detailed_fit_errors=True).start()
    try:
        yield cluster, stand_in
    finally:
        stand_in.stop()
        cluster.stop()


def create(cluster: SimCluster, pod: dict) -> str:
    validate(pod)
    client.CoreV1Api(cluster.api_client()).create_namespaced_pod(NS, pod)
    return pod["metadata"]["name"]


def state(cluster: SimCluster, name: str, want: str | None = None) -> tuple[str, str, str]:
    def check():
        found = kai.kai_launch_state(cluster.get("pods", NS, name), cluster.events(NS, name))
        return found if found[0] != "pending" and found[0] == (want or found[0]) else None

    return cluster.wait_until(check, timeout=10)


def test_kai_stand_in_places_fractions_on_a_nodes_gpus(kai_cluster):
    cluster, _ = kai_cluster
    backend = get_backend("kai")
    first = create(cluster, kai_pod(backend, VGPURequest(1, 12 * GIB), suffix="aaaa1111"))
    assert state(cluster, first)[0] == "scheduled"
    second = create(cluster, kai_pod(backend, VGPURequest(1, 12 * GIB), suffix="bbbb2222"))
    third = create(cluster, kai_pod(backend, VGPURequest(1, 6 * GIB), suffix="cccc3333"))
    assert state(cluster, second)[0] == state(cluster, third)[0] == "scheduled"
    groups = [cluster.get("pods", NS, n)["metadata"]["labels"]["runai-gpu-group"] for n in (first, second, third)]
    assert groups == ["gpu-1-gpu0", "gpu-1-gpu0", "gpu-1-gpu1"]  # bin-packed: 0.5 + 0.5 on one GPU, 0.25 on the next
    scheduled = cluster.events(NS, first, "Scheduled")[0]
    assert scheduled["source"]["component"] == "kai-scheduler"
    assert scheduled["message"].endswith("to node gpu-1 at node-pool default")
    assert cluster.get("pods", NS, first)["status"]["phase"] == "Running"

    # the queue's limit is 1.5 GPUs: 1.25 in use, 0.5 more is over it, in KAI's words
    over = create(cluster, kai_pod(backend, VGPURequest(1, 12 * GIB), suffix="dddd4444"))
    phase, reason, message = state(cluster, over)
    assert (phase, reason) == ("unschedulable", "OverLimit")
    pod = cluster.get("pods", NS, over)
    condition = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
    assert (condition["status"], condition["reason"]) == ("False", "Unschedulable")
    assert condition["message"] == ("OverLimit: ai101 quota has reached the allowable limit of GPUs. "
                                    "Limit is 1.5 GPUs, currently 1.25 GPUs allocated and workload requested 0.5 GPUs.")
    assert cluster.events(NS, over, "Unschedulable")[0]["message"] == condition["message"]
    assert message.startswith('The queue "ai101" has reached its GPU limit: 1.5 GPUs allowed, 1.25 in use')

    # freeing a share lets it in
    client.CoreV1Api(cluster.api_client()).delete_namespaced_pod(first, NS)
    assert state(cluster, over, "scheduled")[0] == "scheduled"


def test_kai_stand_in_shortages_in_kai_words(kai_cluster):
    cluster, stand_in = kai_cluster
    backend = get_backend("kai")
    # a share larger than any GPU: KAI's detailed GPU memory message, turned into "each GPU has 24 GiB"
    stand_in.set_queue("big", KaiQueue())
    big = create(cluster, kai_pod(backend, VGPURequest(1, 40 * GIB), suffix="eeee5555", course="big"))
    phase, reason, message = state(cluster, big)
    assert (phase, reason) == ("unschedulable", "InsufficientGPUMemory")
    assert "this kernel asks 40 GiB of GPU memory and each GPU has 24 GiB" in message
    # a course without a queue
    lost = create(cluster, kai_pod(backend, VGPURequest(1, 4 * GIB), suffix="ffff6666", course="cs999"))
    assert state(cluster, lost)[1] == "QueueDoesNotExist"
    # both GPUs full (an unlimited queue): no GPU has room
    stand_in.set_queue("lab", KaiQueue())
    for i in range(2):
        assert state(cluster, create(cluster, kai_pod(backend, VGPURequest(1, 24 * GIB), suffix=f"full000{i}",
                                                      course="lab")))[0] == "scheduled"
    full = create(cluster, kai_pod(backend, VGPURequest(1, 2 * GIB), suffix="gggg7777", course="lab"))
    phase, reason, message = state(cluster, full)
    assert reason == "InsufficientGPU" and "No GPU has room" in message


def test_kai_stand_in_keeps_quota_for_non_preemptible_kernels():
    node = SimNode("gpu-1", kubelet="fake", labels=GPU_NODE_LABELS, allocatable={"nvidia.com/gpu": 2})
    with SimCluster(nodes=[node], scheduler_names=["default-scheduler"]) as cluster, \
            KaiScheduler(cluster, queues={"ai101": KaiQueue(quota=0.5, limit=-1)}):
        build = get_backend("kai", kai={"priority_class": "build"})
        first = create(cluster, kai_pod(build, VGPURequest(1, 12 * GIB), suffix="np000001"))
        assert state(cluster, first)[0] == "scheduled"
        second = create(cluster, kai_pod(build, VGPURequest(1, 6 * GIB), suffix="np000002"))
        phase, reason, message = state(cluster, second)
        assert (phase, reason) == ("unschedulable", "NonPreemptibleOverQuota")
        assert "a quota of 0.5 GPUs, 0.5 in use, and this kernel asks for 0.25" in message
        # a preemptible kernel may go over quota (no limit)
        over = create(cluster, kai_pod(get_backend("kai"), VGPURequest(1, 6 * GIB), suffix="np000003"))
        assert state(cluster, over)[0] == "scheduled"


def test_kai_stand_in_needs_the_default_scheduler_to_leave_its_pods_alone():
    with SimCluster(nodes=[SimNode("n", kubelet="fake")]) as cluster:
        with pytest.raises(ValueError, match="scheduler_names"):
            KaiScheduler(cluster).start()
