"""Server-wide limits on what one kernel may ask for (``c.KernelPolicy.max_vgpus = 2``)."""

from __future__ import annotations

from traitlets import Int, List, Unicode
from traitlets.config import Configurable

from .vgpu import VGPUPolicy, parse_memory


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
            max_memory_mib=parse_memory(self.max_memory, "KernelPolicy.max_memory", "max_memory") if self.max_memory else 0,
            allowed_images=tuple(self.allowed_images),
            max_vgpus_per_user=self.max_vgpus_per_user,
        )
