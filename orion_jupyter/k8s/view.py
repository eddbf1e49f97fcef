"""The read side of the Kubernetes backend: pool, kernel pods and class view from the watch caches.

Extended-resource backends (orion, hami, nvidia) count what pods hold on each node. The dra
backend's pool is its devices (ResourceSlices) less what this namespace's claims hold, and a
kernel's row names the device and slice its claim got; the kai backend leaves placement to KAI
Scheduler (the pool cannot say whether a share fits: only a share larger than any GPU is refused
before a pod exists). Orion's remote mode (scenario 3) holds nothing Kubernetes counts: its pool
is what the Orion controller says over HTTP (orion_controller.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..allocation import REMOTE_BACKEND, allocation_label
from ..backends import Backend
from ..names import (
    ANNOTATION_BACKEND,
    ANNOTATION_COURSE,
    ANNOTATION_LAST_ACTIVITY,
    ANNOTATION_REQUEST,
    ANNOTATION_USAGE,
    ANNOTATION_USER,
    LABEL_KERNEL_ID,
    LABEL_USER,
    TERMINAL_PHASES,
    slug,
)
from ..orion_controller import ControllerPool, remote_shortage
from ..pool import PoolSnapshot, extended_limits
from ..protocols import DirectMode
from ..vgpu import VGPURequest, format_mib, usage_fields
from . import claims, dra, dra_pool
from .cluster import KubeCluster


def seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((datetime.now(UTC) - then).total_seconds(), 0.0)


def pod_user(pod: dict) -> str:
    """The exact user a kernel pod belongs to (the annotation; the label is only a slug for selecting)."""
    return (pod["metadata"].get("annotations") or {}).get(ANNOTATION_USER, "")


def pod_course(pod: dict) -> str:
    """The exact course (hub group) of a kernel pod: the annotation (the label is only its slug)."""
    return (pod["metadata"].get("annotations") or {}).get(ANNOTATION_COURSE, "")


def pod_request(pod: dict) -> dict[str, Any]:
    try:
        return json.loads((pod["metadata"].get("annotations") or {}).get(ANNOTATION_REQUEST, "{}"))
    except ValueError:
        return {}


def pod_usage(pod: dict) -> dict[str, Any]:
    try:
        usage = json.loads((pod["metadata"].get("annotations") or {}).get(ANNOTATION_USAGE, "{}"))
    except ValueError:
        usage = {}
    return usage if isinstance(usage, dict) else {}


def pod_summary(pod: dict) -> dict[str, Any]:
    """An orion-jupyter kernel pod as the class view shows it."""
    meta, status = pod["metadata"], pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    reason = status.get("reason") or ""
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason"):
            reason = reason or condition["reason"]
    started = meta.get("creationTimestamp")
    last_activity = annotations.get(ANNOTATION_LAST_ACTIVITY) or started
    request = pod_request(pod)
    return {
        "pod": meta["name"],
        "namespace": meta.get("namespace"),
        "user": pod_user(pod),
        "course": pod_course(pod),
        "kernel_id": (meta.get("labels") or {}).get(LABEL_KERNEL_ID, ""),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "phase": status.get("phase", "Pending"),
        "reason": reason,
        "backend": annotations.get(ANNOTATION_BACKEND, ""),
        **request,
        "started": started,
        "last_activity": last_activity,
        "idle_seconds": seconds_since(last_activity),
        **usage_fields(request, pod_usage(pod)),
        **({"label": allocation_label(request.get("vgpus"), request.get("memory_mib"), request.get("compute_percent"),
                                      REMOTE_BACKEND)}
           if annotations.get(ANNOTATION_BACKEND) == REMOTE_BACKEND else {}),
    }


def pod_vgpus(pod: dict, count_resource: str) -> int:
    """vGPUs a kernel pod holds: its count resource, or (dra, kai: no extended resources) its request."""
    limits = extended_limits(pod)
    if limits:
        return limits.get(count_resource, 0)
    return int(pod_request(pod).get("vgpus") or 0)


class KubernetesView(DirectMode):
    """The pool and the kernel pods of one or more namespaces (the first is the kernels' own)."""

    kind = "kubernetes"
    uses_images = True
    decides_instructors = False

    def __init__(self, clusters: list[KubeCluster], backend: Backend):
        self.clusters = clusters
        self.backend = backend
        self.count_resource = backend.count_resource
        self._controllers: dict[str, ControllerPool] = {}

    def _controller(self, backend: Backend) -> ControllerPool:
        address = backend.orion.controller if backend.orion is not None else ""
        if address not in self._controllers:
            self._controllers[address] = ControllerPool(address)
        return self._controllers[address]

    @property
    def namespace(self) -> str:
        return self.clusters[0].namespace

    async def start(self) -> None:
        for cluster in self.clusters:
            await cluster.ensure_started()
        if self.backend.uses_claims:
            await claims.dra_synced(self.clusters[0])

    async def pool(self) -> PoolSnapshot:
        if self.backend.remote:
            return await self._controller(self.backend).read()
        return self.last_pool()

    def last_pool(self) -> PoolSnapshot:
        return self._pool_for(self.backend)

    def _pool_for(self, backend: Backend) -> PoolSnapshot:
        """dra: devices from the ResourceSlices; remote Orion: the controller's last answer; else extended
        resources per node."""
        if backend.remote:
            return self._controller(backend).last()
        return claims.dra_pool_of(self.clusters[0]) if backend.uses_claims else self.clusters[0].pool()

    async def can_serve(self, request: VGPURequest, backend: Backend) -> bool | None:
        if request.count == 0:
            return True
        if backend.remote:  # asked afresh: the count decides whether this launch starts
            pool = await self._controller(backend).read(fresh=True)
            return pool.visible and pool.can_serve({backend.count_resource: request.count})
        pool = self._pool_for(backend)
        if pool.oversize_message(request.memory_mib):
            return False
        if backend.uses_claims:
            return dra_pool.can_fit(pool, request, backend)
        if backend.kai is not None:  # KAI places shares itself; the pool cannot tell
            return None
        return pool.can_serve(backend.resources(request))

    async def has_room(self, request: VGPURequest, backend: Backend, held_back: int = 0) -> bool:
        """Some node fits ``request`` now, with ``held_back`` vGPUs promised to launches whose pods are not
        placed yet (the pool does not count them); for dra / kai the scheduler decides."""
        if not request.count:
            return True
        if await self.can_serve(request, backend) is False:
            return False
        total = (await self.pool()).totals().get(backend.count_resource)
        return total is None or total.free - held_back >= request.count

    async def shortage(self, request: VGPURequest, backend: Backend) -> str:
        if backend.remote:
            return remote_shortage(self._controller(backend).last(), backend.orion.controller, request.count)
        pool = self._pool_for(backend)
        oversize = pool.oversize_message(request.memory_mib)
        if oversize:
            return oversize
        if backend.uses_claims:
            return dra.request_shortage(pool, request, backend)
        resources = backend.resources(request)
        if not resources:  # kai: no extended resources to count
            return (f"KAI Scheduler has no room for this kernel ({request.count} × "
                    f"{format_mib(request.memory_mib)}) right now. Stop a kernel you no longer use, ask for less, "
                    "or try again later.")
        resource = pool.short_resource(resources) or backend.count_resource
        return pool.shortage_message(resource, resources[resource], backend.count_resource)

    def kernel_pods(self) -> list[dict]:
        return [pod for cluster in self.clusters for pod in cluster.kernel_pods()]

    async def vgpus_by_kernel(self, user: str) -> dict[str, int]:
        """vGPUs of the user's live kernel pods in the kernels' namespace, by kernel id."""
        label, held = slug(user, 63), {}
        for pod in self.clusters[0].kernel_pods():
            labels = pod["metadata"].get("labels") or {}
            if labels.get(LABEL_USER) != label or pod_user(pod) != user:
                continue
            if (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                kernel_id = labels.get(LABEL_KERNEL_ID, "")
                held[kernel_id] = held.get(kernel_id, 0) + pod_vgpus(pod, self.count_resource)
        return held

    def kernel_state(self, handle_info: dict[str, Any]) -> dict[str, Any]:
        pod = self.clusters[0].pod(handle_info["pod_name"]) if handle_info.get("pod_name") else None
        if pod is None:
            return {}
        status = pod.get("status") or {}
        return {"node": (pod.get("spec") or {}).get("nodeName"), "phase": status.get("phase"),
                "reason": status.get("reason", ""), "started": pod["metadata"].get("creationTimestamp"),
                **claims.pod_devices(self.clusters[0], pod)}

    async def class_kernels(self, user: str | None = None) -> list[dict[str, Any]]:
        pods = self.kernel_pods()
        if user is not None:  # select by label (cheap), decide by the exact name
            label = slug(user, 63)
            pods = [p for p in pods
                    if (p["metadata"].get("labels") or {}).get(LABEL_USER) == label and pod_user(p) == user]
        return [self._summary(pod) for pod in pods]

    def _summary(self, pod: dict, cluster: KubeCluster | None = None) -> dict[str, Any]:
        """The class row, with the device and slice a dra kernel's claim got."""
        cluster = cluster or next((c for c in self.clusters if c.namespace == pod["metadata"].get("namespace")),
                                  self.clusters[0])
        return {**pod_summary(pod), **claims.pod_devices(cluster, pod)}

    def _find(self, name: str) -> tuple[KubeCluster, dict] | None:
        for cluster in self.clusters:
            pod = cluster.pod(name)
            if pod is not None:
                return cluster, pod
        return None

    def find_kernel(self, name: str) -> dict[str, Any] | None:
        found = self._find(name)
        return self._summary(found[1], found[0]) if found else None

    async def stop_kernel(self, name: str, stopped_by: str) -> None:
        found = self._find(name)
        if found is not None:
            await found[0].stop_kernel(name, stopped_by)

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        return await self.clusters[0].annotate_pod(name, annotations)
