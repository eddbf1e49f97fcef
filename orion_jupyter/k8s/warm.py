"""A direct-mode server's own warm kernels: ``c.OrionJupyter.warm_kernels`` pods of one kernel spec
kept started and handed over on a launch of that shape.

The broker's mechanism (``broker/warm.py``: start, tell the claimed kernel who it is, relabel,
refill) for one trusted server: no hub, no queue, no NetworkPolicies; the pods are owned by the
server's pod (when it runs in one) and deleted when the server stops.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.ioloop import PeriodicCallback

from ..broker.warm import WarmKernels
from ..vgpu import VGPURequest
from .cluster import KubeCluster
from .driver import server_pod_owner
from .manifests import slug

log = logging.getLogger("orion_jupyter.k8s")
POOLS: dict[int, WarmKernels] = {}  # id(KubeCluster) -> this process's warm kernels on it


class _NoQueue:
    """A single server's launches never wait in line."""

    def waiting(self, user: str | None = None) -> list:
        return []

    def wake(self) -> None:
        return None


class DirectHost:
    """What WarmKernels asks of its host (the broker, there), for one server in direct mode."""

    network_policies = False
    networking = None
    pod_labels: dict[str, str] = {}
    rosters: dict[str, Any] = {}
    lab_timezone = ""
    home_mount_path = ""
    volumes: list[dict] = []
    volume_mounts: list[dict] = []
    hub = None

    def __init__(self, settings: Any, view: Any, size: int, request: VGPURequest, image: str):
        self.settings = settings
        self.view = view
        self.cluster: KubeCluster = view.clusters[0]
        self.backend = view.backend
        self.namespace = self.cluster.namespace
        self.lease_owner = server_pod_owner()
        self.queue = _NoQueue()
        self.warm: WarmKernels | None = None
        self.warm_pools = [{"name": f"server-{slug(settings.user or 'jupyter', 30)}", "vgpus": request.count,
                            "memory": f"{request.memory_mib}Mi", "size": size, "image": image,
                            **({"compute": request.compute_percent} if request.compute_percent else {})}]

    def is_instructor(self, name: str, groups: list[str]) -> bool:
        return False

    async def has_room(self, request: VGPURequest, kernel_id: str) -> bool:
        """Some node fits ``request`` besides the warm kernels still starting (not counted by the pool yet)."""
        if await self.view.can_serve(request, self.backend) is False:
            return False
        total = (await self.view.pool()).totals().get(self.backend.count_resource)
        return total is None or total.free - self.warm.starting_vgpus() >= request.count

    async def delete_kernel(self, pod_name: str, grace_seconds: int = 0) -> None:
        await self.cluster.delete_kernel_objects(pod_name, grace_seconds)


class DirectWarmPool:
    """Started and stopped with the server extension; the Kubernetes driver claims from it."""

    def __init__(self, settings: Any, view: Any, size: int, request: VGPURequest, image: str,
                 interval_seconds: float = 5.0):
        self.host = DirectHost(settings, view, size, request, image)
        self.kernels = self.host.warm = WarmKernels(self.host)
        self.interval_seconds = interval_seconds
        self._timer: PeriodicCallback | None = None

    async def start(self) -> None:
        await self.host.cluster.ensure_started()
        await self.kernels.adopt_or_clean()
        POOLS[id(self.host.cluster)] = self.kernels
        self._timer = PeriodicCallback(self.kernels.tick, self.interval_seconds * 1000)
        self._timer.start()
        self.kernels.wake()
        log.info("keeping %d warm kernel(s) of %s", self.host.warm_pools[0]["size"], self.host.warm_pools[0]["memory"])

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        POOLS.pop(id(self.host.cluster), None)
        await self.kernels.close()  # unclaimed ones would hold vGPUs for nobody


def pool_for(cluster: KubeCluster) -> WarmKernels | None:
    return POOLS.get(id(cluster))
