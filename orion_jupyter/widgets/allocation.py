"""What this kernel was granted and what it uses, for people; and how big the demo sliders go.

Pure helpers (no widgets): the allocation as text (:func:`summarize_allocation`,
:func:`describe_allocation`, written with :func:`orion_jupyter.vgpu.format_allocation`), the
devices PyTorch sees, this process's memory against the vGPU's (:func:`read_memory`), and the
slider rule (:func:`slider_limits`), from M = vGPU memory per vGPU in MiB (the allocation's
``memory_mib``; without an allocation, the first CUDA device's total memory; on CPU, none):

* batch size: powers of two from 16 up to the largest power of two <= M - 512 (512 MiB are
  kept for the CUDA context and the framework, and about 1 MiB per image covers the demos'
  activations, gradients and the triplet tensor with room to spare), at most 2048:
  1 GiB -> 512, 2 GiB -> 1024, 3 GiB or more -> 2048; on CPU 256 (time, not memory, bounds it).
* epochs: 5 per GiB of M, between 5 and 50 (1 GiB -> 5, 4 GiB -> 20, 10 GiB or more -> 50);
  on CPU 5. A bigger slice is a bigger share of the GPU on Orion and HAMi, so longer runs fit.
* defaults: batch size min(128, max); epochs min(2, max).

torch is read from ``sys.modules`` (or imported where a function says so), never at import time.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..allocation import REMOTE_BACKEND, REMOTE_NOTE, KernelAllocation, allocation_label
from ..vgpu import format_mib

MIB = 1024 * 1024
CONTEXT_RESERVE_MIB = 512
MIB_PER_IMAGE = 1
BATCH_MIN, BATCH_CAP, CPU_BATCH_MAX = 16, 2048, 256
EPOCHS_PER_GIB, EPOCHS_MIN, EPOCHS_CAP, CPU_EPOCHS_MAX = 5, 5, 50, 5

MEMORY_CAP_MEANING = {
    "enforced": "enforced: the vGPU layer refuses allocations beyond the slice",
    "cooperative": "cooperative: the framework was asked to stay within the slice; code can exceed it",
    "none": "none: nothing limits GPU memory in this kernel",
}

NOT_ORION = "not started by orion-jupyter: no vGPU allocation (a plain kernel)"

ALLOCATION_TITLES = {
    "cluster": "cluster",
    "backend": "backend",
    "vgpus": "vGPUs",
    "memory": "vGPU memory",
    "compute": "compute share",
    "node": "node",
    "pod": "pod",
    "memory_cap": "memory cap",
    "kernel": "kernel",
}


# ------------------------------------------------------------------------------------------
# The allocation as text


def summarize_allocation(allocation: KernelAllocation | None) -> str:
    """One line: what this kernel holds, or that orion-jupyter did not start it."""
    if allocation is None:
        return NOT_ORION
    a = allocation
    parts = [f"{a.cluster or '?'} · {a.backend or '?'}",
             allocation_label(a.vgpus, a.memory_mib, a.compute_percent, a.backend)]
    if a.pod_name:
        parts.append(f"pod {a.pod_name}" + (f" on {a.node_name}" if a.node_name else ""))
    elif a.node_name:
        parts.append(f"on {a.node_name}")
    parts.append(f"memory cap {a.memory_cap}")
    return " · ".join(parts)


def describe_allocation(allocation: KernelAllocation | None) -> dict[str, str]:
    """Field title -> text, for people: what this kernel was granted."""
    if allocation is None:
        return {}
    a = allocation
    pod = "/".join(part for part in (a.namespace, a.pod_name) if part)
    return {
        "cluster": a.cluster or "?",
        "backend": a.backend or "?",
        "vgpus": f"{a.vgpus} ({REMOTE_NOTE})" if a.backend == REMOTE_BACKEND and a.vgpus else str(a.vgpus),
        "memory": (
            f"{a.memory_mib} MiB per vGPU ({format_mib(a.memory_mib)}"
            + (f", {format_mib(a.memory_mib * a.vgpus)} in all)" if a.vgpus > 1 else ")")
            if a.memory_mib
            else "not set"
        ),
        "compute": f"{a.compute_percent}% of a GPU" if a.compute_percent is not None else "not limited",
        "node": a.node_name or "-",
        "pod": pod or ("local process" if a.cluster == "local" else "-"),
        "memory_cap": MEMORY_CAP_MEANING.get(a.memory_cap, a.memory_cap),
        "kernel": " · ".join(part for part in (a.kernel_id, a.user and f"user {a.user}") if part) or "-",
    }


# ------------------------------------------------------------------------------------------
# Devices and memory


def _torch_module(import_it: bool = False) -> Any:
    """torch if it is (or, with ``import_it``, can be) imported; else None."""
    if "torch" in sys.modules:
        return sys.modules["torch"]
    if not import_it:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


_TOTALS: list[int] = []


def _device_totals(torch: Any) -> list[int]:
    """Total bytes of each CUDA device, read once (reading them creates a CUDA context)."""
    if not _TOTALS:
        _TOTALS.extend(
            int(torch.cuda.get_device_properties(i).total_memory) for i in range(torch.cuda.device_count())
        )
    return _TOTALS


def _cpu_only_pool(allocation: KernelAllocation) -> bool:
    """A local kernel whose slots hide every GPU (the local pool's CPU-only slots set it empty)."""
    return allocation.cluster == "local" and os.environ.get("CUDA_VISIBLE_DEVICES") == ""


def describe_devices(allocation: KernelAllocation | None = None) -> list[str]:
    """One line per device the framework sees, or why there is none."""
    torch = _torch_module(import_it=True)
    if torch is None:
        return ["PyTorch is not installed in this kernel: no framework devices to show"]
    if not torch.cuda.is_available():
        lines = [f"no GPU: running on CPU (PyTorch {torch.__version__}, {torch.get_num_threads()} threads)"]
        if allocation is not None and allocation.vgpus > 0 and _cpu_only_pool(allocation):
            lines.append(f"this kernel was granted {allocation.vgpus} vGPU(s) of a CPU-only pool (no GPU on this "
                         "machine): it runs on the CPU, as intended; its memory is RAM")
        elif allocation is not None and allocation.vgpus > 0:
            lines.append(
                f"this kernel was granted {allocation.vgpus} vGPU(s) but PyTorch sees no CUDA device:"
                " check that the image has a CUDA build of PyTorch and that the vGPU runtime is reachable"
            )
        return lines
    from ..demos.common import cuda_devices

    return [str(d) for d in cuda_devices()]


def _fmt_mib(value_mib: float) -> str:
    """A measured amount (not an allocation): one decimal in GiB, whole MiB below."""
    return f"{value_mib / 1024:.1f} GiB" if value_mib >= 1024 else f"{value_mib:.0f} MiB"


class MemoryReading(NamedTuple):
    """This process's memory: on GPU, PyTorch's allocated/reserved bytes against the limit."""

    on_gpu: bool
    used: int  # bytes: torch allocated (GPU) or resident set size (CPU)
    reserved: int  # bytes held by PyTorch's caching allocator (GPU), 0 on CPU
    limit: int | None  # bytes of vGPU memory, None on CPU
    text: str

    @property
    def fraction(self) -> float | None:
        if not self.limit:
            return None
        return min(max(self.reserved, self.used) / self.limit, 1.0)


def _process_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def read_memory(allocation: KernelAllocation | None) -> MemoryReading:
    """PyTorch's GPU memory of this process against the vGPU memory; on CPU, the process RSS.

    Reading does not create a CUDA context (``memory_allocated`` is 0 before one exists).
    """
    torch = _torch_module()
    if torch is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        allocated = sum(int(torch.cuda.memory_allocated(i)) for i in range(count))
        reserved = sum(int(torch.cuda.memory_reserved(i)) for i in range(count))
        if allocation is not None and allocation.memory_mib > 0:
            limit = allocation.memory_mib * max(allocation.vgpus, 1) * MIB
            of = "vGPU memory"
        else:
            limit = sum(_device_totals(torch))
            of = "GPU memory"
        share = max(allocated, reserved) / limit if limit else 0.0
        text = (
            f"PyTorch: {_fmt_mib(allocated / MIB)} allocated, {_fmt_mib(reserved / MIB)} reserved"
            f" of {_fmt_mib(limit / MIB)} {of} ({share:.0%})"
        )
        return MemoryReading(True, allocated, reserved, limit, text)
    rss = _process_rss()
    text = (
        f"no GPU: this process uses {_fmt_mib(rss / MIB)} of CPU memory (RSS);"
        " there is no vGPU memory to compare it with"
    )
    return MemoryReading(False, rss, 0, None, text)


def vgpu_memory_mib(allocation: KernelAllocation | None) -> int | None:
    """Memory per vGPU: the allocation's, else the first CUDA device's total, else None (CPU)."""
    if allocation is not None and allocation.memory_mib > 0:
        return allocation.memory_mib
    torch = _torch_module(import_it=True)
    if torch is not None and torch.cuda.is_available():
        return int(_device_totals(torch)[0] // MIB)
    return None


# ------------------------------------------------------------------------------------------
# The sliders


@dataclass(frozen=True)
class SliderLimits:
    """Limits and defaults of the runner's sliders, and the sentence that explains them."""

    batch_max: int
    batch_default: int
    epochs_max: int
    epochs_default: int
    basis: str

    @property
    def batch_options(self) -> list[int]:
        sizes, size = [], BATCH_MIN
        while size <= self.batch_max:
            sizes.append(size)
            size *= 2
        return sizes


def _pow2_floor(value: float) -> int:
    return 1 << int(math.floor(math.log2(value))) if value >= 1 else 1


def slider_limits(memory_mib: int | None) -> SliderLimits:
    """The rule in this module's docstring: ``memory_mib`` per vGPU, or None on CPU."""
    if not memory_mib or memory_mib <= 0:
        batch_max, epochs_max = CPU_BATCH_MAX, CPU_EPOCHS_MAX
        basis = "no GPU memory to size for: CPU limits"
    else:
        usable = max(memory_mib - CONTEXT_RESERVE_MIB, 0) / MIB_PER_IMAGE
        batch_max = min(max(_pow2_floor(usable), BATCH_MIN), BATCH_CAP)
        epochs_max = min(max(int(EPOCHS_PER_GIB * memory_mib / 1024), EPOCHS_MIN), EPOCHS_CAP)
        basis = (
            f"sized for {memory_mib} MiB per vGPU: batch <= {batch_max}"
            f" ({CONTEXT_RESERVE_MIB} MiB kept for CUDA, ~{MIB_PER_IMAGE} MiB per image), epochs <= {epochs_max}"
        )
    return SliderLimits(batch_max, min(128, batch_max), epochs_max, min(2, epochs_max), basis)
