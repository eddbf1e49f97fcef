"""The local backend: vGPU slots on this machine, kernels as local processes.

A pool of GPUs (found with nvidia-smi, or declared), each cut into slices; a vGPU takes one
slice and its memory from one GPU. With no GPU the pool is CPU-only, so vGPU kernel specs, the
panel and the widget still work. The slot table is a small JSON file under a file lock, so
concurrent launches (and several servers) never hand out one slot twice; entries whose process
is gone are reclaimed whenever the table is read.
"""

from .driver import LocalDriver, LocalKernel
from .pool import MEMORY_RESOURCE, VGPU_RESOURCE, LocalDevice, LocalPool, _process_start, detect_gpus
from .view import LocalView

__all__ = ["MEMORY_RESOURCE", "VGPU_RESOURCE", "LocalDevice", "LocalDriver", "LocalKernel", "LocalPool",
           "LocalView", "_process_start", "detect_gpus"]
