"""What the server extension knows, read from caches only: kernels, pods, pool, specs.

Every view here is built from the kernel manager, the shared watches (Kubernetes) or the slot
table (local); none makes a Kubernetes API request, so an HTTP request or a metrics scrape costs
no cluster traffic.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable

from prometheus_client.core import GaugeMetricFamily
from traitlets.config import Config

from ..backends import get_backend
from ..k8s.manifests import (
    ANNOTATION_BACKEND,
    ANNOTATION_REQUEST,
    ANNOTATION_USER,
    LABEL_KERNEL_ID,
    LABEL_USER,
    slug,
)
from ..kernelspecs import spec_request, vgpu_specs
from ..local import VGPU_RESOURCE, LocalPool
from ..pool import PoolSnapshot
from ..provisioner import VGPUProvisioner
from ..vgpu import VGPURequest

ANNOTATION_LAST_ACTIVITY = "orion-jupyter.io/last-activity"


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((datetime.now(timezone.utc) - then).total_seconds(), 0.0)


def pod_request(pod: dict) -> dict[str, Any]:
    try:
        return json.loads((pod["metadata"].get("annotations") or {}).get(ANNOTATION_REQUEST, "{}"))
    except ValueError:
        return {}


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
    return {
        "pod": meta["name"],
        "namespace": meta.get("namespace"),
        "user": annotations.get(ANNOTATION_USER, ""),
        "kernel_id": (meta.get("labels") or {}).get(LABEL_KERNEL_ID, ""),
        "node": (pod.get("spec") or {}).get("nodeName"),
        "phase": status.get("phase", "Pending"),
        "reason": reason,
        "backend": annotations.get(ANNOTATION_BACKEND, ""),
        **pod_request(pod),
        "started": started,
        "last_activity": last_activity,
        "idle_seconds": _seconds_since(last_activity),
    }


class ClusterView:
    """The pool and the kernel pods of this server's cluster, as the provisioner is configured."""

    def __init__(self, config: Config, class_namespaces: Iterable[str] = ()):
        self.settings = VGPUProvisioner(config=config)
        self.kind = self.settings.cluster_kind()
        self.backend = self.settings.backend_model()
        self.clusters: list[Any] = []
        self.local: LocalPool | None = None
        if self.kind == "kubernetes":
            from ..k8s.client import api_client, default_namespace
            from ..k8s.cluster import KubeCluster

            api = api_client(self.settings.kubeconfig, self.settings.kube_context)
            primary = self.settings.namespace or default_namespace(self.settings.kubeconfig, self.settings.kube_context)
            self.namespace = primary
            namespaces = [primary] + [n for n in class_namespaces if n != primary]
            self.clusters = [
                KubeCluster.shared(api, ns, watch_nodes=self.settings.watch_nodes and ns == primary) for ns in namespaces
            ]
        else:
            self.namespace = ""
            self.local = LocalPool(config=config)

    async def start(self) -> None:
        for cluster in self.clusters:
            await cluster.ensure_started()

    def pool(self) -> PoolSnapshot:
        if self.local is not None:
            return self.local.snapshot()
        return self.clusters[0].pool()

    @property
    def count_resource(self) -> str:
        return VGPU_RESOURCE if self.local is not None else self.backend.count_resource

    def _backend(self, name: str | None) -> Any:
        """A spec's backend (with this server's resource and env overrides), or the default one."""
        return get_backend(name, self.settings.resource_names, self.settings.env_names) if name else self.backend

    def can_serve(self, request: VGPURequest, backend_name: str | None = None) -> bool | None:
        if request.count == 0:
            return True
        if self.local is not None:
            return self.local.can_serve(request)
        backend = self._backend(backend_name)
        return self.pool().can_serve(backend.resources(request))

    def shortage(self, request: VGPURequest, backend_name: str | None = None) -> str:
        """Why the pool cannot serve ``request`` now, in the words a launch failure would use."""
        if self.local is not None:
            return self.local.shortage(request)
        backend = self._backend(backend_name)
        resources = backend.resources(request)
        pool = self.pool()
        resource = pool.short_resource(resources) or backend.count_resource
        return pool.shortage_message(resource, resources[resource], backend.count_resource)

    def kernel_pods(self) -> list[dict]:
        pods: list[dict] = []
        for cluster in self.clusters:
            pods.extend(cluster.kernel_pods())
        return pods

    def class_kernels(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every orion-jupyter kernel in the class namespace(s) (or, locally, in the slot table);
        only ``user``'s when given (filtered before summarising: a student's view stays cheap)."""
        if self.local is not None:
            kernels = [
                {"pod": None, "namespace": None, "user": entry.get("user", ""), "kernel_id": kernel_id,
                 "node": "local", "phase": "Running" if entry.get("pid") else "Pending", "reason": "",
                 "backend": self.settings.backend, **(entry.get("request") or {}),
                 "started": None, "last_activity": None, "idle_seconds": None, "pid": entry.get("pid")}
                for kernel_id, entry in self.local.holders().items()
            ]
            return [k for k in kernels if user is None or user_label(k["user"]) == user_label(user)]
        pods = self.kernel_pods()
        if user is not None:
            pods = [p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_USER) == user_label(user)]
        return [pod_summary(pod) for pod in pods]

    def find_pod(self, name: str) -> tuple[Any, dict] | None:
        for cluster in self.clusters:
            pod = cluster.pod(name)
            if pod is not None:
                return cluster, pod
        return None


def user_label(username: str) -> str:
    return slug(username, 63)


def spec_views(view: ClusterView) -> list[dict[str, Any]]:
    out = []
    for name, spec in sorted(vgpu_specs().items()):
        config = spec.metadata["kernel_provisioner"].get("config", {})
        try:
            request = spec_request(spec)
        except ValueError as err:
            out.append({"name": name, "display_name": spec.display_name, "error": str(err), "can_start": False})
            continue
        backend = config.get("backend")
        out.append({
            "name": name,
            "display_name": spec.display_name,
            "description": (spec.metadata.get("orion_jupyter") or {}).get("description", ""),
            "backend": backend or view.settings.backend,
            **request.as_dict(),
            "can_start": view.can_serve(request, backend),
        })
    return out


class OrionCollector:
    """orion_jupyter_* gauges, computed from caches when Prometheus scrapes."""

    def __init__(self) -> None:
        self.state: Any = None
        self.registered = False

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        if self.state is None:
            return
        allocated = GaugeMetricFamily("orion_jupyter_vgpu_allocated", "vGPUs held by this server's kernels.", labels=["backend"])
        memory = GaugeMetricFamily("orion_jupyter_vgpu_memory_allocated_bytes",
                                   "vGPU memory held by this server's kernels, in bytes.", labels=["backend"])
        free = GaugeMetricFamily("orion_jupyter_pool_vgpu_free", "vGPUs free in the pool.", labels=["resource"])
        by_backend: dict[str, list[int]] = {}
        for kernel in self.state.kernel_allocations():
            if kernel.get("vgpus"):
                totals = by_backend.setdefault(kernel.get("backend") or "", [0, 0])
                totals[0] += kernel["vgpus"]
                totals[1] += kernel["vgpus"] * (kernel.get("memory_mib") or 0) * 1024 * 1024
        for backend, (count, nbytes) in sorted(by_backend.items()):
            allocated.add_metric([backend], count)
            memory.add_metric([backend], nbytes)
        pool = self.state.view.pool()
        resource = self.state.view.count_resource
        total = pool.totals().get(resource)
        if pool.visible and total is not None:
            free.add_metric([resource], total.free)
        yield allocated
        yield memory
        yield free
