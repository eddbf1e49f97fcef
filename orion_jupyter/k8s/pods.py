"""What a kernel pod's status says: launch state, why it ended, and the trimmed forms the watch
caches keep. Pure functions over plain dicts."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ..names import TERMINAL_PHASES

_IMAGE_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_FAILURES = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff"}


def _terminated(pod: dict) -> dict | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return None


def container_exit_code(pod: dict) -> int | None:
    terminated = _terminated(pod)
    return int(terminated.get("exitCode", 1)) if terminated else None


def container_end_reason(pod: dict) -> str:
    """The runtime's own words for why the container ended, e.g. 'StartError: exec: "python": executable
    file not found in $PATH'; '' for a plain exit."""
    terminated = _terminated(pod) or {}
    reason, message = terminated.get("reason") or "", (terminated.get("message") or "").strip()
    if reason in ("", "Error", "Completed") and not message:
        return ""
    return f"{reason}: {message}" if reason and message else reason or message


def _memory_limit(pod: dict) -> str:
    """The kernel container's memory limit as people read it ('8 GiB'); '' when it has none."""
    from kubernetes.utils.quantity import parse_quantity

    from ..vgpu import format_mib

    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    try:
        mib = int(parse_quantity(limit) / (1024 * 1024)) if limit else 0
    except (ValueError, TypeError, ArithmeticError):
        return str(limit)
    return format_mib(mib) if mib else ""


def oom_text(pod: dict) -> str:
    """'the kernel exceeded its 8 GiB memory limit' for a container ended OOMKilled ('' for another end)."""
    if (_terminated(pod) or {}).get("reason") != "OOMKilled":
        return ""
    limit = _memory_limit(pod)
    return (f"the kernel exceeded its {limit} memory limit" if limit
            else "the kernel was killed for using more memory than its node had free")


def disruption_condition(pod: dict) -> dict | None:
    """The DisruptionTarget condition of a pod Kubernetes is taking away (PodGC, taint manager, eviction)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return condition
    return None


def node_trouble(node: dict | None) -> str:
    """'its node gpu-1 is not ready (NodeStatusUnknown: Kubelet stopped posting node status.)'; '' when Ready."""
    if node is None:
        return ""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return ""
            why = ": ".join(x for x in (condition.get("reason"), condition.get("message")) if x)
            name = (node.get("metadata") or {}).get("name", "")
            return f"its node {name} is not ready" + (f" ({why})" if why else "")
    return ""


def end_reason(pod: dict | None, node: dict | None = None) -> str:
    """Why a kernel pod ended (or is ending) in one sentence: out of memory, node deleted or not ready,
    evicted, exit code; ``pod`` None: it was deleted and its last state is not known."""
    if pod is None:
        return "the kernel pod was deleted"
    status = pod.get("status") or {}
    oom = oom_text(pod)
    if oom:
        return f"{oom} (OOMKilled, exit code {container_exit_code(pod)})"
    disruption = disruption_condition(pod)
    if disruption is not None and disruption.get("reason") == "DeletionByPodGC":
        node_name = (pod.get("spec") or {}).get("nodeName") or "?"
        return f"its node {node_name} was removed from the cluster ({disruption.get('message', '')})".replace(" ()", "")
    if status.get("reason") == "Evicted":
        return f"the kernel pod was evicted: {status.get('message', '')}".strip()
    trouble = node_trouble(node)
    if trouble:
        return trouble
    if disruption is not None:
        return f"the kernel pod is being deleted ({disruption.get('reason')}: {disruption.get('message', '')})"
    code = container_exit_code(pod)
    if code is not None:
        why = container_end_reason(pod)
        return f"the kernel exited with code {code}" + (f" ({why})" if why else "")
    if status.get("phase") in TERMINAL_PHASES:
        return f"the kernel pod {status['phase'].lower()}"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "the kernel pod was deleted"
    return ""


def trim_foreign_pod(pod: dict) -> dict | None:
    """Of any pod in the cluster, only what the pool counts: bound, holding extended resources."""
    spec = pod.get("spec") or {}
    containers = [{"resources": {"limits": {r: v for r, v in ((c.get("resources") or {}).get("limits") or {}).items()
                                            if "/" in r}}} for c in spec.get("containers") or []]
    if not spec.get("nodeName") or not any(c["resources"]["limits"] for c in containers):
        return None
    meta = pod.get("metadata") or {}
    return {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
            "spec": {"nodeName": spec["nodeName"], "containers": containers},
            "status": {"phase": (pod.get("status") or {}).get("phase")}}


def trim_pod(pod: dict) -> dict:
    """What this project reads of a pod (about a fifth of it): the watch cache keeps only this, its names
    and short texts shared with every other pod's (``compact``)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return compact({
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "labels", "annotations",
                                          "creationTimestamp", "deletionTimestamp") if k in meta},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "containers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                           for c in spec.get("containers") or []],
        },
        "status": {
            **{k: status[k] for k in ("phase", "reason", "message", "podIP") if k in status},
            "conditions": [{k: c[k] for k in _CONDITION_KEYS if k in c} for c in status.get("conditions") or []
                           if c.get("type") in _CONDITION_TYPES],
            "containerStatuses": [{k: c[k] for k in _CONTAINER_KEYS if k in c}
                                  for c in status.get("containerStatuses") or []],
        },
    })


_CONDITION_TYPES = ("Ready", "PodScheduled", "DisruptionTarget")  # what launch states and end reasons read
_CONDITION_KEYS = ("type", "status", "reason", "message")
_CONTAINER_KEYS = ("name", "image", "state")
_SHARED_TEXT = 64  # characters: names, label values, phases; longer texts are rarely alike


def compact(value: Any) -> Any:
    """``value`` with its keys and short texts interned: each watch event is parsed into new strings, so
    20,000 cached pods would otherwise each hold their own "metadata", "Running", course names..."""
    if isinstance(value, dict):
        return {sys.intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= _SHARED_TEXT:
        return sys.intern(value)
    return value


@dataclass
class LaunchState:
    """What a pod's status says about a launch: ready, failed (with reason) or still pending."""

    phase: str  # ready | failed | pending
    reason: str = ""
    message: str = ""
    ip: str = ""


def launch_state(pod: dict) -> LaunchState:
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return LaunchState("failed", "evicted", f"the pod was evicted: {status.get('message', '')}".strip())
    code = container_exit_code(pod)
    oom = oom_text(pod)
    if oom:
        return LaunchState("failed", "exited", f"{oom} before it was ready (OOMKilled, exit code {code})")
    if code is not None or status.get("phase") in TERMINAL_PHASES:
        why = container_end_reason(pod)
        return LaunchState("failed", "exited", f"the kernel exited with code {code if code is not None else '?'} "
                                               f"before it was ready{f' ({why})' if why else ''}")
    disruption = disruption_condition(pod)
    if disruption is not None:
        return LaunchState("failed", "deleted", f"{end_reason(pod)} before it was ready")
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _IMAGE_FAILURES:
            image = cs.get("image") or ""
            return LaunchState("failed", "image", f"the kernel image {image} cannot be pulled ({waiting['reason']}): "
                                                  f"{waiting.get('message', '')}".strip())
        if waiting.get("reason") in _CONFIG_FAILURES:
            return LaunchState("failed", "exited", f"the kernel container cannot start ({waiting['reason']}): "
                                                   f"{waiting.get('message', '')}".strip())
    for condition in status.get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                "PodScheduled", "False", "Unschedulable"):
            return LaunchState("failed", "unschedulable", condition.get("message", ""))
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if ready and status.get("podIP"):
        return LaunchState("ready", ip=status["podIP"])
    return LaunchState("pending")
