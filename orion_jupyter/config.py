"""Server-wide limits on what kernels may ask for (``c.KernelPolicy.max_vgpus = 2``), and the one
pre-check every launch passes (the provisioner's, and the REST path's before anything starts)."""

from __future__ import annotations

from typing import Any

from traitlets import Int, List, Unicode
from traitlets.config import Configurable

from .errors import KernelLaunchError
from .vgpu import VGPUPolicy, VGPURequest, parse_memory


class KernelPolicy(Configurable):
    max_vgpus = Int(0, config=True, help="Most vGPUs one kernel may hold; 0 means no limit.")
    max_memory = Unicode(
        "", config=True,
        help="Most vGPU memory one kernel may hold in all (count × memory per vGPU), e.g. '16Gi'; empty: no limit.",
    )
    max_vgpus_per_user = Int(
        0, config=True,
        help="Most vGPUs one user may hold at once across all their kernels (a classroom quota); 0 means no limit.",
    )
    allowed_images = List(
        Unicode(), config=True,
        help="Kernel images users may choose (shell patterns such as 'quay.io/jupyter/*'); empty: any.",
    )

    def policy(self) -> VGPUPolicy:
        return VGPUPolicy(
            max_vgpus=self.max_vgpus,
            max_memory_mib=(parse_memory(self.max_memory, "KernelPolicy.max_memory", "max_memory")
                            if self.max_memory else 0),
            allowed_images=tuple(self.allowed_images),
            max_vgpus_per_user=self.max_vgpus_per_user,
        )

    async def check(self, request: VGPURequest, *, image: str, view: Any, backend: Any = None,
                    capacity: bool = False) -> None:
        """Per-kernel limits, the image allow-list and (``capacity``) whether the pool can serve it now."""
        self.policy().check(request, image if view.uses_images else None)
        oversize = (await view.pool()).oversize_message(request.memory_mib) if request.count else None
        if oversize:  # no device anywhere is this large: waiting or retrying cannot help
            raise KernelLaunchError("unschedulable", oversize)
        if capacity and request.count and await view.can_serve(request, backend or view.backend) is False:
            raise KernelLaunchError("unschedulable", await view.shortage(request, backend or view.backend))
