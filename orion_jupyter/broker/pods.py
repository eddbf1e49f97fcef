"""The class's kernel pods as the broker knows them: what they hold, whether one more fits, and how the
broker starts, hands over and deletes them. It is the host of admission and of warm kernels in hub mode
(``core.admission.AdmissionHost``, ``core.warm.WarmHost``), over the broker's shared watch caches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.booking_fit import NodeRoom, Nodes
from ..core.ledger import Held, Ledger
from ..core.warm import WarmKernels
from ..k8s.launcher import PodSite, SiteHost
from ..k8s.view import KubernetesView
from ..names import slug
from ..pool import extended_limits
from ..vgpu import VGPURequest
from .pod_index import KernelPodIndex


class ClassPods(SiteHost):
    """Kernel pods of the class namespace; ``warm`` is set once the broker's warm kernels exist."""

    def __init__(self, site: PodSite, view: KubernetesView, ledger: Ledger, *,
                 members: Callable[[str], Awaitable[list[str]]], is_instructor: Callable[[str, list[str]], bool],
                 volumes: Sequence[Mapping[str, Any]] = (), volume_mounts: Sequence[Mapping[str, Any]] = (),
                 home_mount_path: str = ""):
        super().__init__(site)
        self.view = view
        self.ledger = ledger
        self.members = members  # a hub group's members
        self.is_instructor = is_instructor
        self.user_volumes = tuple(volumes)
        self.user_volume_mounts = tuple(volume_mounts)
        self.home_mount_path = home_mount_path
        self.warm: WarmKernels | None = None
        self.index = KernelPodIndex(self.cluster)

    # -- reading the class's state ----------------------------------------------------------------
    def is_warm(self, pod_name: str) -> bool:
        return self.warm is not None and pod_name in self.warm.kernels

    def holdings(self) -> Held:
        """What every live, claimed kernel pod of the namespace holds (a warm kernel is nobody's until claimed);
        the pod index's own, kept up to date: read it between awaits."""
        return self.index.holdings()

    def kernel_exists(self, kernel_id: str) -> bool:
        return bool(self.index.pod_names(kernel_id))

    def kernel_pods_of(self, kernel_id: str) -> list[dict]:
        """The pods of one kernel id (the watch cache's)."""
        return [pod for name in self.index.pod_names(kernel_id) if (pod := self.cluster.pod(name)) is not None]

    def stopped_by(self, kernel_id: str) -> str | None:
        return self.cluster.stopped_by.get(slug(kernel_id, 63))

    async def largest_node(self) -> int | None:
        pool = await self.view.pool()
        resource = self.site.backend.count_resource
        largest = max((n.resources[resource].allocatable for n in pool.nodes if resource in n.resources),
                      default=None)
        return largest if pool.visible else None

    async def shortage(self, request: VGPURequest) -> str:
        return await self.view.shortage(request, self.site.backend)

    async def has_room(self, request: VGPURequest, kernel_id: str = "", held_back: int = 0) -> bool:
        """Some node fits ``request``, counting the accepted launches whose pods are not placed yet, the
        warm kernels being started and ``held_back`` (what open bookings keep from this launch)."""
        unplaced = sum(h.vgpus for k, h in self.ledger.pending.items() if k != kernel_id and not self.index.placed(k))
        starting = self.warm.starting_vgpus() if self.warm is not None else 0
        return await self.view.has_room(request, self.site.backend, unplaced + starting + held_back)

    def nodes(self, give_back: Iterable[str] = ()) -> Nodes | None:
        """Per node what it offers and has free now (plus what the warm kernels ``give_back`` hold: a booking
        takes them), and the kernels no node holds yet (they will take room somewhere); from the watch caches.
        None where the nodes are not visible or count no kernel (dra, kai, Orion's remote mode)."""
        backend = self.site.backend
        pool = self.view.last_pool()
        if not backend.counted_on_nodes or not pool.visible:
            return None
        back: dict[str, dict[str, int]] = {}
        for name in give_back:
            pod = self.cluster.pod(name)
            node = ((pod or {}).get("spec") or {}).get("nodeName")
            if pod is not None and node:
                for resource, amount in extended_limits(pod).items():
                    back.setdefault(node, {})[resource] = back.get(node, {}).get(resource, 0) + amount
        rooms = [NodeRoom(node.name, {r: c.allocatable for r, c in node.resources.items()},
                          {r: c.free + back.get(node.name, {}).get(r, 0) for r, c in node.resources.items()},
                          node.device_memory_mib) for node in pool.nodes]
        kernels = {h.kernel_id for h in self.holdings()} | set(self.ledger.pending.keys())
        unplaced = frozenset(k for k in kernels if not self.index.placed(k))
        return Nodes(rooms, backend.resources, backend.count_resource, backend.memory_resource, unplaced)

    async def roster_members(self, course: str) -> list[str]:
        return [user for user in await self.members(course) if not self.is_instructor(user, [])]
