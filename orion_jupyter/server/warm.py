"""A direct-mode server's own warm kernels: ``c.OrionJupyter.warm_kernels`` pods of one kernel spec
kept started and handed over on a launch of that shape.

``core.warm``'s mechanism (start, tell the claimed kernel who it is, relabel, refill) hosted by one
trusted server on Kubernetes: no hub, no queue, no rosters, no NetworkPolicies; the pods are owned by
the server's pod (when it runs in one) and deleted when the server stops. The Kubernetes driver gets
the pool from ``clusters.make_driver`` (the cluster's ``warm`` while the pool runs).
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.ioloop import PeriodicCallback

from ..core.warm import WarmKernels
from ..core.warm_config import Pool, WarmConfig, WarmShape, Window
from ..k8s.driver import server_pod_owner
from ..k8s.launcher import PodSite, SiteHost
from ..k8s.view import KubernetesView
from ..names import slug
from ..settings import KernelSettings
from ..vgpu import VGPURequest

log = logging.getLogger("orion_jupyter.warm")


class DirectWarmHost(SiteHost):
    """``core.warm.WarmHost`` for one server: its pods on the view's cluster, owned by the server's pod."""

    user_volumes: tuple = ()  # a pool's kernels start before anyone claims them: no user's storage
    user_volume_mounts: tuple = ()
    home_mount_path = ""

    def __init__(self, settings: KernelSettings, view: KubernetesView):
        super().__init__(PodSite(view.clusters[0], view.backend, settings.pod_settings, settings.launch_timeout,
                                 settings.wait_for_capacity, settings.orion_controller or None,
                                 owner=server_pod_owner()))
        self.view = view
        self.warm: WarmKernels | None = None

    async def has_room(self, request: VGPURequest) -> bool:
        """Some node fits ``request`` besides the warm kernels still starting (not counted by the pool yet)."""
        starting = self.warm.starting_vgpus() if self.warm is not None else 0
        return await self.view.has_room(request, self.view.backend, starting)

    async def roster_members(self, course: str) -> list[str]:
        return []  # rosters are the broker's (hub groups); a server has none


class DirectWarmPool:
    """Started and stopped with the server extension; the Kubernetes driver claims from it."""

    def __init__(self, settings: KernelSettings, view: KubernetesView, size: int, request: VGPURequest, image: str,
                 interval_seconds: float = 5.0):
        self.host = DirectWarmHost(settings, view)
        pool = Pool(f"server-{slug(settings.user or 'jupyter', 30)}", WarmShape(request, image), size, Window())
        self.kernels = self.host.warm = WarmKernels(self.host, WarmConfig(pools=(pool,)))
        self.interval_seconds = interval_seconds
        self._timer: PeriodicCallback | None = None

    async def start(self) -> None:
        await self.host.cluster.ensure_started()
        await self.kernels.adopt_or_clean()
        self.host.cluster.warm = self.kernels
        self._timer = PeriodicCallback(self.kernels.tick, self.interval_seconds * 1000)
        self._timer.start()
        self.kernels.wake()
        pool = self.kernels.pools[0]
        log.info("keeping %d warm kernel(s) of %s", pool.size, pool.shape.request.describe())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.host.cluster.warm is self.kernels:
            self.host.cluster.warm = None
        await self.kernels.close()  # unclaimed ones would hold vGPUs for nobody


def make_warm_pool(settings: KernelSettings, view: Any, size: int, request: VGPURequest,
                   image: str) -> DirectWarmPool | None:
    """A direct-mode server's own warm kernels (on Kubernetes; ``start()`` / ``stop()``), or None."""
    if size <= 0 or view.kind != "kubernetes" or not request.count:
        return None
    return DirectWarmPool(settings, view, size, request, image)
