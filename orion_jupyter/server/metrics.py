"""orion_jupyter_* gauges, computed from caches when Prometheus scrapes (no cluster requests)."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import GaugeMetricFamily

MIB = 1024 * 1024


class OrionCollector:
    def __init__(self) -> None:
        self.state: Any = None
        self.registered = False

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        if self.state is None:
            return
        allocated = GaugeMetricFamily("orion_jupyter_vgpu_allocated", "vGPUs held by this server's kernels.",
                                      labels=["backend"])
        memory = GaugeMetricFamily("orion_jupyter_vgpu_memory_allocated_bytes",
                                   "vGPU memory held by this server's kernels, in bytes.", labels=["backend"])
        free = GaugeMetricFamily("orion_jupyter_pool_vgpu_free", "vGPUs free in the pool.", labels=["resource"])
        used = GaugeMetricFamily("orion_jupyter_vgpu_memory_used_bytes",
                                 "Memory in use by this server's vGPU kernels at their last sample, in bytes "
                                 "(source: torch or nvml on a GPU; rss is the kernel's CPU memory).",
                                 labels=["backend", "source"])
        used_totals: dict[tuple[str, str], int] = {}
        by_backend: dict[str, list[int]] = {}
        for kernel in self.state.kernels.allocations():
            if kernel.get("vgpus") and kernel.get("memory_used") is not None:
                key = (kernel.get("backend") or "", kernel.get("memory_source") or "unknown")
                used_totals[key] = used_totals.get(key, 0) + kernel["memory_used"]
            if kernel.get("vgpus"):
                totals = by_backend.setdefault(kernel.get("backend") or "", [0, 0])
                totals[0] += kernel["vgpus"]
                totals[1] += kernel["vgpus"] * (kernel.get("memory_mib") or 0) * MIB
        for backend, (count, nbytes) in sorted(by_backend.items()):
            allocated.add_metric([backend], count)
            memory.add_metric([backend], nbytes)
        view = self.state.view
        pool = view.last_pool()
        total = pool.totals().get(view.count_resource)
        if pool.visible and total is not None:
            free.add_metric([view.count_resource], total.free)
        for labels, nbytes in sorted(used_totals.items()):
            used.add_metric(list(labels), nbytes)
        yield allocated
        yield memory
        yield used
        yield free


COLLECTOR = OrionCollector()
