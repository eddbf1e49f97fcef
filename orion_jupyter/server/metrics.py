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
        allocated = GaugeMetricFamily("orion_jupyter_vgpu_allocated", "vGPUs held by this server's kernels.", labels=["backend"])
        memory = GaugeMetricFamily("orion_jupyter_vgpu_memory_allocated_bytes",
                                   "vGPU memory held by this server's kernels, in bytes.", labels=["backend"])
        free = GaugeMetricFamily("orion_jupyter_pool_vgpu_free", "vGPUs free in the pool.", labels=["resource"])
        by_backend: dict[str, list[int]] = {}
        for kernel in self.state.kernels.allocations():
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
        yield allocated
        yield memory
        yield free


COLLECTOR = OrionCollector()
