"""launch: start_kernel to the first kernel_info reply, a vGPU kernel against a local one.

The vGPU kernel runs on the simulated cluster (process kubelet: its pod is an ipykernel process
on this machine, started as soon as the pod is bound); the local one is jupyter_client's own
LocalProvisioner starting the venv's ``python3`` spec, the same ipykernel. Launches alternate
(vGPU, local, local, vGPU, ...) after one warm-up of each, in one event loop, one at a time.

The simulated cluster runs in this process, so its store changes are timestamped with the same
clock as the launches (a store subscriber, no hook in the product): the provisioner's overhead
over pod readiness is (start_kernel returned - the pod turned Ready) + (the Pod create reached
the API - start_kernel was called); what lies between is the cluster's and the kernel's time.
The "after Ready" part includes a fixed 10 ms that jupyter_client itself spends in every
start_kernel (``await asyncio.sleep(0.01)`` in ``in_pending_state``), local kernels included.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time
import uuid
from typing import Any

from .common import (
    NAMESPACE,
    Section,
    fmt_ms,
    install_vgpu_spec,
    jupyter_dirs,
    kernel_pods,
    sim_cluster,
    summary,
)

SPEC = "orion-bench-1x4gi"
LOCAL_SPEC = "python3"
OVERHEAD_TARGET_MS = 50.0
RATIO_TARGET = 1.3
LABEL_KERNEL_ID = "orion-jupyter.io/kernel-id"


def _ready(pod: dict | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class PodClock:
    """Times of each kernel pod's creation and first readiness, taken inside the simulated store."""

    def __init__(self, cluster: Any):
        self.store = cluster.store
        self.created: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self._lock = threading.Lock()
        self.store.subscribers.append(self._on_change)

    def _on_change(self, plural: str, etype: str, obj: dict, old: dict | None) -> None:
        if plural != "pods":
            return
        now = time.perf_counter()
        kernel_id = (obj["metadata"].get("labels") or {}).get(LABEL_KERNEL_ID)
        if not kernel_id:
            return
        with self._lock:
            if etype == "ADDED":
                self.created.setdefault(kernel_id, now)
            elif etype == "MODIFIED" and _ready(obj) and not _ready(old):
                self.ready.setdefault(kernel_id, now)

    def close(self) -> None:
        if self._on_change in self.store.subscribers:
            self.store.subscribers.remove(self._on_change)


async def first_kernel_info_reply(km: Any, timeout: float = 120.0) -> float:
    """perf_counter() when the kernel first answers kernel_info (asked again every second)."""
    client = km.client()
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        asked = {client.kernel_info()}
        deadline = time.monotonic() + timeout
        next_ask = time.monotonic() + 1.0
        while True:
            try:
                msg = await client.get_shell_msg(timeout=0.25)
            except queue.Empty:
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"no kernel_info reply within {timeout:g} s") from None
                if now > next_ask:
                    asked.add(client.kernel_info())
                    next_ask = now + 1.0
                continue
            if msg["parent_header"].get("msg_id") in asked:
                return time.perf_counter()
    finally:
        client.stop_channels()


async def _settle(cluster: Any) -> None:
    """Waits until the last kernel is gone (no pod, no process), so it takes no CPU from the next."""
    deadline = time.monotonic() + 30
    while kernel_pods(cluster) or cluster.running_processes():
        if time.monotonic() > deadline:
            raise TimeoutError("the previous kernel pod did not go away within 30 s")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


async def _launch(kind: str, config: Any, cluster: Any, clock: PodClock) -> dict[str, float]:
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=SPEC if kind == "vgpu" else LOCAL_SPEC, config=config)
    kernel_id = str(uuid.uuid4())
    requests_before = len(cluster.requests)
    connections_before = cluster.bench_connections.accepted
    # the local kernel's output (a warning about TCP without encryption) would clutter the table
    quiet = {} if kind == "vgpu" else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    called = time.perf_counter()
    try:
        await km.start_kernel(kernel_id=kernel_id, **quiet)
        returned = time.perf_counter()
        requests = [r for r in cluster.requests[requests_before:] if not r.watch]
        connections = cluster.bench_connections.accepted - connections_before
        replied = await first_kernel_info_reply(km)
    finally:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    out = {"total": replied - called, "start_kernel": returned - called, "reply_after_return": replied - returned}
    if kind == "vgpu":
        created, ready = clock.created[kernel_id], clock.ready[kernel_id]
        out.update(
            before_create=created - called,  # provisioner: pre_launch, Secret create, Pod create request
            pod=ready - created,  # the cluster: scheduling, the kernel process starting, readiness probe
            after_ready=returned - ready,  # watch delivery, return; jupyter_client's start_kernel sleeps 10 ms here
            api_requests=len(requests),
            tcp_connections=connections,
        )
        out["overhead"] = out["before_create"] + out["after_ready"]
    await _settle(cluster)
    return out


async def _run(n: int, cluster: Any, section: Section) -> None:
    from traitlets.config import Config

    config = Config()
    config.VGPUProvisioner.cluster = "kubernetes"
    config.VGPUProvisioner.namespace = NAMESPACE
    config.VGPUProvisioner.kubeconfig = cluster.kubeconfig_path
    config.VGPUProvisioner.launch_timeout = 120.0
    config.VGPUProvisioner.user = "bench"
    clock = PodClock(cluster)
    try:
        # warm-up: the first vGPU launch also starts the shared watches (lists + watches)
        cold = await _launch("vgpu", config, cluster, clock)
        await _launch("local", config, cluster, clock)
        runs: dict[str, list[dict[str, float]]] = {"vgpu": [], "local": []}
        for i in range(n):
            order = ("vgpu", "local") if i % 2 == 0 else ("local", "vgpu")
            for kind in order:
                runs[kind].append(await _launch(kind, config, cluster, clock))
    finally:
        clock.close()

    def ms(kind: str, key: str) -> dict[str, float]:
        return summary([r[key] for r in runs[kind]], 1000.0)

    vgpu, local = ms("vgpu", "total"), ms("local", "total")
    overhead = ms("vgpu", "overhead")
    ratio = vgpu["median"] / local["median"]
    pairwise = sorted(a["total"] / b["total"] for a, b in zip(runs["vgpu"], runs["local"], strict=True))
    requests = sorted({r["api_requests"] for r in runs["vgpu"]})
    section.data.update({
        "launches_each": n,
        "vgpu_ms": vgpu,
        "local_ms": local,
        "ratio_vgpu_over_local": round(ratio, 3),
        "ratio_p95": round(vgpu["p95"] / local["p95"], 3),
        "ratio_pairwise_median": round(pairwise[len(pairwise) // 2], 3),
        "overhead_ms": overhead,
        "overhead_before_create_ms": ms("vgpu", "before_create"),
        "overhead_after_ready_ms": ms("vgpu", "after_ready"),
        "pod_create_to_ready_ms": ms("vgpu", "pod"),
        "vgpu_start_kernel_ms": ms("vgpu", "start_kernel"),
        "vgpu_reply_after_return_ms": ms("vgpu", "reply_after_return"),
        "local_start_kernel_ms": ms("local", "start_kernel"),
        "local_reply_after_return_ms": ms("local", "reply_after_return"),
        "api_requests_per_launch": max(requests),
        "tcp_connections_per_launch": summary([r["tcp_connections"] for r in runs["vgpu"]]),
        "cold_first_vgpu_launch_ms": round(cold["total"] * 1000, 1),
        "cold_first_vgpu_overhead_ms": round(cold["overhead"] * 1000, 1),
    })
    section.row("vGPU kernel: start_kernel to kernel_info reply",
                f"median {fmt_ms(vgpu['median'])}, p95 {fmt_ms(vgpu['p95'])} (n={n})")
    section.row("local provisioner, same ipykernel",
                f"median {fmt_ms(local['median'])}, p95 {fmt_ms(local['p95'])} (n={n})")
    section.row("ratio vGPU / local (medians)", f"{ratio:.2f} (p95: {vgpu['p95'] / local['p95']:.2f})",
                f"<= {RATIO_TARGET}", ratio <= RATIO_TARGET)
    section.row("provisioner overhead over pod readiness",
                f"median {fmt_ms(overhead['median'])}, p95 {fmt_ms(overhead['p95'])}",
                f"< {OVERHEAD_TARGET_MS:g} ms median", overhead["median"] < OVERHEAD_TARGET_MS)
    section.row("  of which: call to Pod create / Ready to return",
                f"{fmt_ms(section.data['overhead_before_create_ms']['median'])} / "
                f"{fmt_ms(section.data['overhead_after_ready_ms']['median'])} (medians)")
    section.row("  pod create to Ready (sim: process start, probe)",
                f"median {fmt_ms(section.data['pod_create_to_ready_ms']['median'])}")
    connections = section.data["tcp_connections_per_launch"]
    section.row("API requests per launch (new TCP connections)", f"{max(requests)} ({connections['mean']:.1f})")
    section.row("first vGPU launch (starts the shared watches)", fmt_ms(cold["total"] * 1000))


def run(quick: bool = False) -> Section:
    from kubesim import SimNode

    section = Section("launch")
    n = 2 if quick else 15
    node = SimNode("gpu-1", allocatable={"virtaitech.com/gpu": 8, "cpu": "16", "memory": "64Gi"}, kubelet="process")
    with jupyter_dirs("launch"), sim_cluster([node]) as cluster:
        install_vgpu_spec(SPEC, 1, "4Gi")
        asyncio.run(_run(n, cluster, section))
    return section
