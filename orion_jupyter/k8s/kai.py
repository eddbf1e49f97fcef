"""KAI Scheduler (NVIDIA): what a kernel pod carries, and KAI's own words when it cannot place one.

Pure functions over plain dicts (no client, no I/O). A kernel pod for KAI has
``schedulerName: kai-scheduler``, the queue label ``kai.scheduler/queue: <queue>`` (a course is a
queue) and one of the annotations ``gpu-memory: "<MiB>"`` or ``gpu-fraction: "0.5"`` (plus
``gpu-fraction-num-devices`` for more than one GPU). It requests no ``nvidia.com/gpu``. KAI itself
enforces no memory limit: the cap is cooperative unless KAI's HAMi-core isolation is configured.

When KAI cannot place a pod it writes ``PodScheduled=False, reason Unschedulable`` with its
message on the pod and a Warning event with reason ``Unschedulable``; :func:`kai_launch_state`
reads either and :func:`shortage_sentence` turns KAI's message into one sentence for a user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..vgpu import VGPURequest, format_mib

# ``settings`` below is a backends.KaiSettings (not imported: backends imports this module).

SCHEDULER_NAME = "kai-scheduler"
GPU_FRACTION = "gpu-fraction"
GPU_MEMORY = "gpu-memory"
GPU_FRACTION_NUM_DEVICES = "gpu-fraction-num-devices"
GPU_FRACTION_CONTAINER = "gpu-fraction-container-name"
GPU_GROUP_LABEL = "runai-gpu-group"  # KAI labels a shared pod with the GPU group it was placed on
MEMORY_CAP_NOTE = "memory cap: not enforced"

_NOT_DNS_RE = re.compile(r"[^a-z0-9-]+")


def queue_name(course: str, settings: Any) -> str:
    """The KAI queue of a kernel: its course as a Queue name (a lower-case DNS label: 'AI 101' ->
    'ai-101'), else the configured default ("": no label, KAI's own default applies)."""
    name = _NOT_DNS_RE.sub("-", (course or "").lower()).strip("-")[:63].strip("-")
    return name or settings.default_queue


def queue_labels(course: str, settings: Any) -> dict[str, str]:
    queue = queue_name(course, settings)
    return {settings.queue_label: queue} if queue else {}


def gpu_fraction(request: VGPURequest, settings: Any) -> str:
    """The share of one GPU, rounded up to 2 decimals as KAI does: the compute share when one is asked
    for, else the memory over the device's (``device_memory_mib``)."""
    if request.compute_percent is not None:
        share = request.compute_percent / 100
    elif settings.device_memory_mib:
        share = request.memory_mib / settings.device_memory_mib
    else:
        raise ValueError("KAI gpu-fraction needs device_memory_mib (or a compute share) to turn memory into a fraction")
    hundredths = min(max(-(-round(share * 10000) // 100), 1), 100)  # ceil to 0.01, within (0, 1]
    return f"{hundredths / 100:g}"


def kai_annotations(request: VGPURequest, settings: Any, container: str | None = None) -> dict[str, str]:
    """``gpu-memory`` (MiB) or ``gpu-fraction``; ``gpu-fraction-num-devices`` for more than one GPU."""
    if request.count == 0:
        return {}
    if settings.request == "gpu-fraction":
        annotations = {GPU_FRACTION: gpu_fraction(request, settings)}
    else:
        annotations = {GPU_MEMORY: str(request.memory_mib)}
    if request.count > 1:
        annotations[GPU_FRACTION_NUM_DEVICES] = str(request.count)
    if container:
        annotations[GPU_FRACTION_CONTAINER] = container
    return annotations


def pod_fields(request: VGPURequest, course: str, settings: Any, container: str | None = None) -> dict:
    """What to merge into a kernel pod for KAI::

        {"labels": {...}, "annotations": {...}, "spec": {"schedulerName": "kai-scheduler", ...}}

    A CPU-only kernel (``count == 0``) still goes through KAI (its queue), without annotations.
    """
    spec: dict[str, Any] = {"schedulerName": SCHEDULER_NAME}
    if settings.priority_class:
        spec["priorityClassName"] = settings.priority_class
    return {
        "labels": queue_labels(course, settings),
        "annotations": kai_annotations(request, settings, container),
        "spec": spec,
    }


def requested_share(pod: Mapping) -> dict[str, Any]:
    """What a KAI pod asks for, from its annotations: {'devices', 'fraction', 'memory_mib'}."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    share: dict[str, Any] = {"devices": 1, "fraction": None, "memory_mib": None}
    try:
        share["devices"] = int(annotations.get(GPU_FRACTION_NUM_DEVICES) or 1)
        if annotations.get(GPU_FRACTION):
            share["fraction"] = float(annotations[GPU_FRACTION])
        if annotations.get(GPU_MEMORY):
            share["memory_mib"] = int(annotations[GPU_MEMORY])
    except ValueError:
        pass
    return share


# ---------------------------------------------------------------- KAI's words

_NUM = r"([0-9][0-9.]*)"
_PREFIX = r"(?:Node-Pool '[^']*': )?"
_OVER_LIMIT = re.compile(
    _PREFIX + r"OverLimit: (?P<queue>\S+) quota has reached the allowable limit of "
    r"(?P<resource>GPUs|CPU cores|memory)\. "
    rf"Limit is {_NUM} \S+, currently {_NUM} \S+ allocated and workload requested {_NUM}"
)
_OVER_QUOTA = re.compile(
    _PREFIX + rf"NonPreemptibleOverQuota: Non-preemptible workload is over quota\. Workload requested {_NUM} "
    rf"(?P<unit>GPUs|CPU cores|GB memory), but (?P<queue>\S+) quota is {_NUM} \S+, "
    rf"while {_NUM} \S+ are already allocated"
)
_NO_QUEUE = re.compile(r"Queue '(?P<queue>[^']*)' does not exist")
_GPU_MEMORY_CAPACITY = re.compile(
    r"Each gpu on the node has a gpu memory capacity of (?P<capacity>\d+) Mib\. "
    r"(?P<asked>\d+) Mib of gpu memory has been requested"
)


def _gpus(value: str) -> str:
    number = float(value)
    return f"{number:g} GPU" + ("" if number == 1 else "s")


def shortage_reason(message: str) -> str:
    """A short code for KAI's message: OverLimit, NonPreemptibleOverQuota, QueueDoesNotExist,
    InsufficientGPUMemory, InsufficientGPU, or Unschedulable."""
    if _OVER_LIMIT.search(message) or "OverLimit:" in message:
        return "OverLimit"
    if "NonPreemptibleOverQuota" in message:
        return "NonPreemptibleOverQuota"
    if _NO_QUEUE.search(message) or "QueueDoesNotExist" in message:
        return "QueueDoesNotExist"
    if "GPU memory" in message or _GPU_MEMORY_CAPACITY.search(message):
        return "InsufficientGPUMemory"
    if "enough resources: GPUs" in message or "enough of mig profile" in message:
        return "InsufficientGPU"
    return "Unschedulable"


def shortage_sentence(message: str, memory_mib: int | None = None) -> str:
    """KAI's unschedulable message as one sentence that names what is short, KAI's words kept at the end."""
    raw = " ".join(message.split())
    quoted = f' (KAI Scheduler: "{raw}")'
    m = _OVER_LIMIT.search(raw)
    if m:
        queue, resource, limit, used, asked = m.group("queue"), m.group("resource"), m.group(3), m.group(4), m.group(5)
        if resource == "GPUs":
            return (f'The queue "{queue}" has reached its GPU limit: {_gpus(limit)} allowed, {float(used):g} in use, '
                    f"and this kernel asks for {float(asked):g} more. Stop a kernel you no longer use, "
                    f"ask for a smaller share, or try again later.{quoted}")
        return (f'The queue "{queue}" has reached its {resource} limit: {limit} allowed, {used} in use, '
                f"this kernel asks for {asked} more.{quoted}")
    m = _OVER_QUOTA.search(raw)
    if m:
        asked, unit, queue, quota, used = m.group(1), m.group("unit"), m.group("queue"), m.group(4), m.group(5)
        what = "GPU" if unit == "GPUs" else unit
        amount = _gpus(quota) if unit == "GPUs" else f"{quota} {unit}"
        return (f'The queue "{queue}" has used its {what} quota for kernels that cannot be preempted: a quota of '
                f"{amount}, {float(used):g} in use, and this kernel asks for {float(asked):g}. Stop a kernel you no "
                f"longer use, or try again later.{quoted}")
    m = _NO_QUEUE.search(raw)
    if m:
        return (f'The KAI queue "{m.group("queue")}" for this kernel does not exist; ask the cluster operator '
                f"to create it (a scheduling.run.ai/v2 Queue), or use a course that has one.{quoted}")
    reason = shortage_reason(raw)
    if reason == "InsufficientGPUMemory":
        m = _GPU_MEMORY_CAPACITY.search(raw)
        if m:
            asked, capacity = format_mib(int(m.group("asked"))), format_mib(int(m.group("capacity")))
            return (f"No GPU is large enough: this kernel asks {asked} of GPU memory and each GPU has {capacity}. "
                    f"Ask for less vGPU memory.{quoted}")
        asked = f" {format_mib(memory_mib)}" if memory_mib else ""
        return (f"Not enough GPU memory free: no GPU has{asked} free for this kernel right now. Stop a kernel you no "
                f"longer use, ask for less, or try again later.{quoted}")
    if reason == "InsufficientGPU":
        return (f"No GPU has room for this kernel's share right now. Stop a kernel you no longer use, ask for less, "
                f"or try again later.{quoted}")
    return f"KAI Scheduler cannot place this kernel.{quoted}"


def _unschedulable_message(pod: Mapping, events: Iterable[Mapping]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable" and condition.get("message")):
            return condition["message"]
    uid = (pod.get("metadata") or {}).get("uid")
    latest = None
    for event in events:
        involved = event.get("involvedObject") or {}
        if event.get("type") != "Warning" or event.get("reason") != "Unschedulable":
            continue
        if uid and involved.get("uid") not in (None, uid):
            continue
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        if latest is None or stamp >= latest[0]:
            latest = (stamp, event.get("message") or "")
    return latest[1] if latest else None


def kai_launch_state(pod: Mapping, events: Iterable[Mapping] = ()) -> tuple[str, str, str]:
    """(phase, reason, message) of a KAI kernel pod before it runs.

    phase is ``scheduled`` (bound to a node), ``unschedulable`` (KAI said why, in its pod
    condition or its Unschedulable event: end the launch with ``message``) or ``pending``.
    """
    spec = pod.get("spec") or {}
    share = requested_share(pod)
    if spec.get("nodeName"):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        where = f" (GPU group {labels[GPU_GROUP_LABEL]})" if labels.get(GPU_GROUP_LABEL) else ""
        return "scheduled", "Scheduled", f"scheduled by KAI on {spec['nodeName']}{where}; {MEMORY_CAP_NOTE} by KAI"
    message = _unschedulable_message(pod, events)
    if message:
        return "unschedulable", shortage_reason(message), shortage_sentence(message, share["memory_mib"])
    return "pending", "Pending", "waiting for KAI Scheduler to place the kernel"
